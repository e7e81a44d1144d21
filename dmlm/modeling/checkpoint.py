"""A dmlm checkpoint: its folder layout, its `dmlm.json` meta, saving and loading.

Design decisions:
- A checkpoint is a plain Hugging Face model directory (it loads with
  `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`) plus:
  ```
  dmlm.json                  format_version, vocab layout, tasks, config, model_summary, step
  codebooks/speech.safetensors, codebooks/image.safetensors
  vocoder/                   units -> speech (trained separately, `dmlm vocoder train`)
  ```
  `CheckpointFiles` is the one owner of that layout and of the meta schema: everything else
  asks it for paths and fields, and it reads them without loading the LM (resynthesis needs only
  the codebook and vocoder).
- `Checkpoint` adds the loaded LM and tokenizer; codebooks and the vocoder load on first use and
  are checked against the fingerprints the vocabulary was built with.
- Saving writes a temp folder and renames it into place (`dmlm.util.io.atomic_dir`), so a
  killed save never leaves half a checkpoint; a vocoder already in the folder survives re-saves.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel

from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.io import atomic_dir
from dmlm.vocab import Vocab

DMLM_JSON = "dmlm.json"
FORMAT_VERSION = 1
VOCODER_DIR = "vocoder"
CODEBOOKS_DIR = "codebooks"


def vocoder_dir(path: str | Path) -> Path:
    """Where a checkpoint folder keeps its vocoder (whether or not the folder is complete yet)."""
    return Path(path) / VOCODER_DIR


class CheckpointFiles:
    """The files of a checkpoint folder and the fields of its `dmlm.json`; loads no weights."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / DMLM_JSON).is_file():
            raise MissingFileError(f"{self.path}: not a dmlm checkpoint (no {DMLM_JSON})")

    @staticmethod
    def is_checkpoint(path: str | Path) -> bool:
        return (Path(path) / DMLM_JSON).is_file()

    @cached_property
    def _json(self) -> dict[str, Any]:
        return json.loads((self.path / DMLM_JSON).read_text())

    @property
    def meta(self) -> dict[str, Any]:
        """`dmlm.json` without its vocabulary layout (that is `vocab`)."""
        return {k: v for k, v in self._json.items() if k != "vocab"}

    @cached_property
    def vocab(self) -> Vocab:
        return Vocab.from_dict(self._json["vocab"])

    @property
    def tasks(self) -> list[str]:
        """The task specs the model was trained on (e.g. ["asr", "s2tt:es", "t2s"])."""
        return list(self.meta.get("tasks") or [])

    @property
    def config(self) -> dict:
        """The resolved run config the model was trained with (`RunConfig` as a dict)."""
        return self.meta.get("config") or {}

    @property
    def train_manifest(self) -> str | None:
        return self.config.get("data", {}).get("train") or None

    @property
    def units_dir(self) -> str | None:
        return self.config.get("data", {}).get("units") or None

    @property
    def fingerprints(self) -> dict[str, str]:
        """Codebook fingerprint per modality, as the vocabulary was built (read without building the layout)."""
        return dict((self._json.get("vocab") or {}).get("fingerprints") or {})

    def codebook_path(self, modality: str = "speech") -> Path:
        return self.path / CODEBOOKS_DIR / f"{modality}.safetensors"

    @property
    def vocoder_dir(self) -> Path:
        return vocoder_dir(self.path)

    @property
    def has_vocoder(self) -> bool:
        return (self.vocoder_dir / "config.json").is_file()

    def load_codebook(self, modality: str = "speech"):
        """The checkpoint's codebook of `modality`, checked against the vocabulary's fingerprint."""
        path = self.codebook_path(modality)
        if not path.is_file():
            raise MissingFileError(f"{self.path}: checkpoint has no {modality} codebook ({path})")
        if modality == "image":
            from dmlm.tokenizers.image import ImageCodebook

            cb = ImageCodebook.load(path)
        else:
            from dmlm.tokenizers.speech import Codebook

            cb = Codebook.load(path)
        cb.check(self.fingerprints.get(modality), f"checkpoint {self.path}")
        return cb

    def load_vocoder(self, codebook=None):
        """The checkpoint's vocoder (checked against `codebook`), or a `NoVocoder` error saying how to train one."""
        from dmlm.vocoder.model import Vocoder

        return Vocoder.load(self.vocoder_dir, codebook=codebook)


def save_checkpoint(
    out_dir: str | Path, model: PreTrainedModel, hf_tokenizer, vocab: Vocab, meta: dict,
    codebooks: dict[str, Path] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically (temp folder + rename)."""
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer.save_pretrained(tmp)
        cb_dir = tmp / CODEBOOKS_DIR
        cb_dir.mkdir()
        for modality, path in (codebooks or {}).items():
            shutil.copy2(path, cb_dir / f"{modality}.safetensors")
        if vocoder_dir(out).is_dir():  # trained separately (`dmlm vocoder train`): survives re-saves
            shutil.copytree(vocoder_dir(out), vocoder_dir(tmp))
        info = {"format_version": FORMAT_VERSION, "vocab": vocab.to_dict(), **meta}
        (tmp / DMLM_JSON).write_text(json.dumps(info, indent=1, default=str))
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint: the LM, its unified tokenizer and vocabulary, and its files."""

    path: Path
    model: PreTrainedModel
    tokenizer: Any  # unified PreTrainedTokenizer
    vocab: Vocab
    meta: dict
    files: CheckpointFiles | None = None
    _codebooks: dict = field(default_factory=dict, repr=False)
    _vocoder: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.files is None and CheckpointFiles.is_checkpoint(self.path):
            self.files = CheckpointFiles(self.path)

    @property
    def tasks(self) -> list[str]:
        return list(self.meta.get("tasks") or [])

    def codebook(self, modality: str = "speech"):
        """The checkpoint's codebook, loaded once (its feature extractor is expensive to build)."""
        if modality not in self._codebooks:
            if self.files is None:
                raise MissingFileError(f"{self.path}: not a saved checkpoint, so it has no {modality} codebook")
            self._codebooks[modality] = self.files.load_codebook(modality)
        return self._codebooks[modality]

    def vocoder(self):
        """The checkpoint's vocoder, loaded once and checked against its speech codebook."""
        if self._vocoder is None:
            if self.files is None:
                raise MissingFileError(f"{self.path}: not a saved checkpoint, so it has no vocoder")
            self._vocoder = self.files.load_vocoder(self.codebook("speech"))
        return self._vocoder


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    from transformers import AutoTokenizer

    files = CheckpointFiles(path)
    vocab = files.vocab
    model = AutoModelForCausalLM.from_pretrained(files.path).to(device).eval()
    tok = AutoTokenizer.from_pretrained(files.path)
    if len(tok) != vocab.size:
        raise UserError(f"{files.path}: tokenizer has {len(tok)} ids, {DMLM_JSON} layout says {vocab.size}")
    return Checkpoint(files.path, model, tok, vocab, dict(files.meta), files)
