"""dmlm: Discrete Multimodal Language Models.

One causal transformer whose vocabulary holds text tokens, speech units and image codes,
trained on paired and unpaired data (Trinh et al., arXiv 2406.06582).

    import dmlm
    m = dmlm.load("runs/demo/model")
    m.transcribe("clip.wav")

The names below load lazily, so `import dmlm` stays cheap (no torch) for tools that only need
the version.
"""

from __future__ import annotations

import os as _os

# OpenMP threads that wait for work spin only briefly (3,000 iterations, not libgomp's 300,000)
# before they sleep. Set before torch loads libgomp, which reads it once; a wait policy the user
# set wins. Beside another busy process, long-spinning torch threads wait on each other and lose
# most of their throughput; 3,000 keeps the quiet speed (sleeping at once, OMP_WAIT_POLICY=PASSIVE,
# does not): docs/performance.md, "Under load".
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "3000")

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
