"""dmlm: Discrete Multimodal Language Models.

One causal transformer whose vocabulary holds text tokens, speech units and image codes,
trained on paired and unpaired data (Trinh et al., arXiv 2406.06582).

    import dmlm
    m = dmlm.load("runs/demo/model")
    m.transcribe("clip.wav")

The names below load lazily, so `import dmlm` stays cheap (no torch) for tools that only need
the version. Importing it changes nothing in the importer's environment: the OpenMP spin default
that keeps training fast beside other processes is set by the entry points (`dmlm ...`, the recipes'
mains: `dmlm.util.cores.quiet_spin_waits`).
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = {"load", "DMLM", "Audio", "Units", "Codes"}
_DECODING = {"DecodingOptions", "Result"}
_ERRORS = {"UserError", "MissingFileError", "OutputError"}
__all__ = sorted(_API | _DECODING | _ERRORS | {"__version__"})


def __getattr__(name: str):
    if name in _API:
        from dmlm import api

        return getattr(api, name)
    if name in _DECODING:
        from dmlm import decoding

        return getattr(decoding, name)
    if name in _ERRORS:
        from dmlm.util import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'dmlm' has no attribute {name!r}")
