"""A dmlm checkpoint: its folder layout, its `dmlm.json` meta, saving and loading.

Design decisions:
- A checkpoint is a plain Hugging Face model directory (it loads with
  `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`; a model trained
  with adapters is saved with them merged, `dmlm.modeling.adapters.merged`) plus:
  ```
  dmlm.json                  format_version, vocab layout, tasks, config, model_summary, step
  codebooks/speech.safetensors, codebooks/image.safetensors
  vocoder/                   units -> speech (trained separately, `dmlm vocoder train`)
  ```
  `CheckpointFiles` is the one owner of that layout and of the meta schema: everything else
  asks it for paths and fields, and it reads them without loading the LM (resynthesis needs only
  the codebook and vocoder).
- `Checkpoint` adds the LM and tokenizer (loaded at once, or on first use with `lazy`) and its text
  tokenizer (`Checkpoint.text`, the one object training's and inference's text goes through);
  codebooks and the vocoder load on first use and are checked against the fingerprints the
  vocabulary was built with. A load hashes each file once (`verify`; `check_file` then skips).
- Crash consistency: a save writes everything (model, tokenizer, codebooks, `dmlm.json` and,
  from `dmlm train`, the optimizer/RNG/data position in `training_state/`) into one temp folder,
  then `checksums.json` (sha256 of every file, and the step) last, then renames the folder into
  place (`dmlm.util.io.atomic_dir`, the one folder swap). Model and training state therefore
  become visible together or not at all: a kill -9 at any point leaves the previous complete checkpoint (or, killed between the two renames of the
  swap, both folders complete; `recover_interrupted_save` finishes the swap). The vocoder, trained
  separately into the folder (`dmlm vocoder train`), is copied across re-saves and not summed.
- Every load verifies the checksums of the files it reads (a flipped byte or a truncated file is
  an error naming it) and that the parts agree on the step (`check_steps`; the training state's
  own step is read by `dmlm.training.state`, which owns its files); a folder without `checksums.json`
  (written before dmlm had them, or by another tool) loads unverified.
- Write errors become `OutputError`s saying what failed (a full disk says "no space"), whichever
  library raised them (safetensors reports ENOSPC as a `SafetensorError`, not an `OSError`).
- `DMLM_FAULT=STAGE[@STEP]` makes the process SIGKILL itself at that stage of a save (`model`,
  `between`, `state`, `commit`, `swap`): the crash tests kill real training runs at each stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, PreTrainedModel

from dmlm.modeling.adapters import merged
from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.io import atomic_dir, fault_point, finish_swap, swap_paths
from dmlm.util.progress import quiet_transformers
from dmlm.vocab import Vocab

log = logging.getLogger(__name__)

DMLM_JSON = "dmlm.json"
FORMAT_VERSION = 1
VOCODER_DIR = "vocoder"
CODEBOOKS_DIR = "codebooks"
STATE_DIR = "training_state"  # optimizer, RNG and data position of `dmlm train` (exact resume)
CHECKSUMS_JSON = "checksums.json"  # written last: a folder that has it is complete


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _summed_files(folder: Path) -> list[str]:
    """Files of a checkpoint folder that `checksums.json` covers: all but itself and the vocoder."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS_JSON and p.relative_to(folder).parts[0] != VOCODER_DIR)


def recover_interrupted_save(path: str | Path) -> bool:
    """Finish a save killed between its two renames (the old folder moved aside, the new one not yet
    in place): the complete new folder goes into place, else the old one goes back. True if it did.

    Only the writer (`dmlm train`, holding the run's lock) calls this: a reader never moves folders."""
    out = Path(path)
    done = finish_swap(out, lambda tmp: (tmp / CHECKSUMS_JSON).is_file())  # written last: complete
    if done == "new":
        log.warning("%s: a save was interrupted after it was complete; finished it", out)
    elif done == "old":
        log.warning("%s: a save was interrupted; the previous checkpoint is back in place", out)
    return done is not None


def vocoder_dir(path: str | Path) -> Path:
    """Where a checkpoint folder keeps its vocoder (whether or not the folder is complete yet)."""
    return Path(path) / VOCODER_DIR


class CheckpointFiles:
    """The files of a checkpoint folder and the fields of its `dmlm.json`; loads no weights."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists() and swap_paths(self.path)[1].is_dir():
            raise MissingFileError(f"{self.path}: a save was interrupted while swapping folders (the previous "
                                   f"checkpoint is in {swap_paths(self.path)[1]}); `dmlm train --resume` "
                                   "finishes it")
        if not (self.path / DMLM_JSON).is_file():
            why = f"no {DMLM_JSON}" if self.path.is_dir() else "no such folder" if not self.path.exists() else "a file"
            raise MissingFileError(f"{self.path}: not a dmlm checkpoint ({why})")
        self._verified: set[bool] = set()  # verify(state) already passed for these values of `state`

    @staticmethod
    def is_checkpoint(path: str | Path) -> bool:
        return (Path(path) / DMLM_JSON).is_file()

    @cached_property
    def _json(self) -> dict[str, Any]:
        try:
            info = json.loads((self.path / DMLM_JSON).read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{self.path / DMLM_JSON}: not valid JSON ({e}); the checkpoint is damaged") from None
        if not isinstance(info, dict):
            raise UserError(f"{self.path / DMLM_JSON}: expected a JSON object, got {type(info).__name__}")
        return info

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

    @property
    def state_dir(self) -> Path:
        """The training state saved with the model (`training_state/`); older runs kept it in `OUT.state/`."""
        inside = self.path / STATE_DIR
        legacy = self.path.with_name(self.path.name + ".state")
        return legacy if not inside.is_dir() and legacy.is_dir() else inside

    @cached_property
    def checksums(self) -> dict[str, Any] | None:
        """`checksums.json` ({"step", "sha256": {file: digest}}), or None for a folder written without one."""
        path = self.path / CHECKSUMS_JSON
        if not path.is_file():
            return None
        try:
            sums = json.loads(path.read_text())
            assert isinstance(sums.get("sha256"), dict)
        except (ValueError, AssertionError, AttributeError) as e:
            raise UserError(f"{path}: not a valid checksum list ({e or 'no sha256 table'})") from None
        return sums

    def verify(self, state: bool = False) -> None:
        """Check every file `checksums.json` lists (the training state's only with `state`) and that
        `dmlm.json` and the training state name the same step; a folder without checksums passes."""
        if state in self._verified or True in self._verified:
            return
        sums = self.checksums or {"sha256": {}}
        for rel, digest in sums["sha256"].items():
            if Path(rel).parts[0] == STATE_DIR and not state:
                continue
            path = self.path / rel
            if not path.is_file():
                raise UserError(f"{path}: missing from checkpoint {self.path} (listed in {CHECKSUMS_JSON}); "
                                "the checkpoint is incomplete")
            if sha256_file(path) != digest:
                raise UserError(f"{path}: checksum mismatch (the file changed or is damaged since it was saved "
                                f"at step {sums.get('step')}); refusing checkpoint {self.path}")
        self.check_steps()
        self._verified.add(state)

    def check_steps(self, parts: dict[str, Any] | None = None) -> None:
        """`dmlm.json`, `checksums.json` and `parts` (e.g. the training state's progress file, which
        `dmlm.training.state` reads: {its path: its step}) must name one step: a folder mixed from two
        saves is refused."""
        steps = {DMLM_JSON: self._json.get("step")}
        if self.checksums is not None:
            steps[CHECKSUMS_JSON] = self.checksums.get("step")
        steps.update(parts or {})
        if len(set(steps.values())) > 1:
            raise UserError(f"{self.path}: its parts disagree on the step ({', '.join(f'{k}: {v}' for k, v in steps.items())}); "
                            "a checkpoint mixed from two saves is refused, not resumed")

    def check_file(self, rel: str) -> None:
        """Verify one listed file (e.g. a codebook read without loading the LM); a file `verify` already
        checked is not hashed again (one checksum per file per load)."""
        if self._verified:
            return
        digest = (self.checksums or {}).get("sha256", {}).get(rel)
        if digest is not None and sha256_file(self.path / rel) != digest:
            raise UserError(f"{self.path / rel}: checksum mismatch (the file changed or is damaged since it was saved)")

    def load_codebook(self, modality: str = "speech"):
        """The checkpoint's codebook of `modality`, checked against the vocabulary's fingerprint."""
        path = self.codebook_path(modality)
        if not path.is_file():
            raise MissingFileError(f"{self.path}: checkpoint has no {modality} codebook ({path})")
        self.check_file(f"{CODEBOOKS_DIR}/{modality}.safetensors")
        if modality == "image":
            from dmlm.tokenizers.image import ImageCodebook

            cb = ImageCodebook.load(path)
        else:
            from dmlm.tokenizers.speech import Codebook

            cb = Codebook.load(path)
        cb.check(self.fingerprints.get(modality), f"checkpoint {self.path}")
        if modality == "speech":  # and the unit merges its vocabulary renders speech with
            cb.check_bpe(self.fingerprints.get("speech_bpe"), f"checkpoint {self.path}")
        return cb

    def load_vocoder(self, codebook=None):
        """The checkpoint's vocoder (checked against `codebook`), or a `NoVocoder` error saying how to train one."""
        from dmlm.vocoder import Vocoder

        return Vocoder.load(self.vocoder_dir, codebook=codebook)


def model_positions(model: PreTrainedModel) -> int | None:
    """How many positions the model was built for (`model.max_positions`; a pretrained LLM's own), or None.

    Past them a learned position table has no rows and rotary positions were never trained:
    inputs that do not fit are refused and outputs are cut there, never run into garbage."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def save_checkpoint(
    out_dir: str | Path, model: PreTrainedModel, hf_tokenizer, vocab: Vocab, meta: dict,
    codebooks: dict[str, Path] | None = None, write_state: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically: a temp folder with every file and, last,
    `checksums.json`, renamed into place. `write_state(folder)` writes the training state into
    `training_state/` of the same temp folder, so model and state are published together."""
    out = Path(out_dir)
    step = meta.get("step")
    with atomic_dir(out, stage=lambda name: fault_point(name, step), what="checkpoint") as tmp:
        # fault points "commit" (complete, not in place) and "swap" (between the renames:
        # `recover_interrupted_save` finishes it) are the swap's stages
        with quiet_transformers():  # adapters merged into a copy: the folder is a plain model of its family
            merged(model).save_pretrained(tmp, safe_serialization=True)
        fault_point("model", step)  # inside the model write: weights written, tokenizer and meta not
        hf_tokenizer.save_pretrained(tmp)
        cb_dir = tmp / CODEBOOKS_DIR
        cb_dir.mkdir()
        for modality, path in (codebooks or {}).items():
            shutil.copy2(path, cb_dir / f"{modality}.safetensors")
        from dmlm.vocoder.files import VocoderFiles

        VocoderFiles(vocoder_dir(out)).finish_interrupted_save()  # else a vocoder mid-swap would be lost here
        if vocoder_dir(out).is_dir():  # trained separately (`dmlm vocoder train`): survives re-saves
            shutil.copytree(vocoder_dir(out), vocoder_dir(tmp))
        info = {"format_version": FORMAT_VERSION, "vocab": vocab.to_dict(), **meta}
        (tmp / DMLM_JSON).write_text(json.dumps(info, indent=1, default=str))
        fault_point("between", step)  # the model complete, the training state not begun
        if write_state is not None:
            write_state(tmp / STATE_DIR)
        sums = {"step": step, "sha256": {rel: sha256_file(tmp / rel) for rel in _summed_files(tmp)}}
        with open(tmp / CHECKSUMS_JSON, "w") as f:
            f.write(json.dumps(sums, indent=1))
            f.flush()
            os.fsync(f.fileno())
    return out


class Checkpoint:
    """A loaded checkpoint: the LM, its unified tokenizer and vocabulary, and its files.

    The LM and tokenizer of a saved checkpoint may load on first use (`load_checkpoint(lazy=True)`):
    resynthesis and the speech judges need only the codebook and vocoder."""

    def __init__(self, path: str | Path, model: PreTrainedModel | None = None, tokenizer: Any = None,
                 vocab: Vocab | None = None, meta: dict | None = None, files: CheckpointFiles | None = None,
                 device: str = "cpu"):
        self.path = Path(path)
        self._model, self._tokenizer, self.vocab, self.meta = model, tokenizer, vocab, dict(meta or {})
        self.files = files if files is not None or not CheckpointFiles.is_checkpoint(self.path) else CheckpointFiles(self.path)
        self.device = device
        self._codebooks: dict = {}
        self._vocoder: Any = None
        self._text: Any = None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tasks={self.tasks})"

    @property
    def model(self) -> PreTrainedModel:
        """The LM, loaded on first use for a checkpoint opened lazily."""
        if self._model is None and self.files is not None:
            self._model, self._tokenizer = _load_lm(self.files, self.vocab, self.device)
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The unified Hugging Face tokenizer (text ids, then every dmlm token as an added token)."""
        if self._tokenizer is None and self.files is not None:
            self._model, self._tokenizer = _load_lm(self.files, self.vocab, self.device)
        return self._tokenizer

    @property
    def text(self):
        """The text tokenizer (`dmlm.tokenizers.text.TextTokenizer`) over the unified one: what training
        encodes text with, so inference and evaluation encode exactly the same ids."""
        if self._text is None:
            from dmlm.tokenizers.text import TextTokenizer

            self._text = TextTokenizer(self.tokenizer)
        return self._text

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


def _load_lm(files: CheckpointFiles, vocab: Vocab, device: str) -> tuple[PreTrainedModel, Any]:
    """The LM and unified tokenizer of a verified checkpoint folder; a damaged file is an error naming it."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(files.path).to(device).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a truncated or damaged file
        if not isinstance(e, UserError) and any(files.path.glob("*.safetensors")):
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{files.path}: cannot read the model weights ({type(e).__name__}: {why}); "
                            "the file is truncated or damaged") from None
        raise
    try:
        tok = AutoTokenizer.from_pretrained(files.path)
    except (OSError, ValueError, TypeError, KeyError) as e:  # a missing or damaged tokenizer file
        missing = [n for n in ("tokenizer.json", "tokenizer_config.json") if not (files.path / n).is_file()]
        why = f"{', '.join(missing)} missing" if missing else f"{type(e).__name__}: {str(e).strip()[:120]}"
        raise UserError(f"{files.path}: cannot read the checkpoint's tokenizer ({why}); the checkpoint is "
                        "incomplete or damaged") from None
    if len(tok) != vocab.size:
        raise UserError(f"{files.path}: tokenizer has {len(tok)} ids, {DMLM_JSON} layout says {vocab.size}")
    return model, tok


def load_checkpoint(path: str | Path | CheckpointFiles, device: str = "cpu", lazy: bool = False) -> Checkpoint:
    """The checkpoint at `path`, its files verified against `checksums.json` first; with `lazy`, the LM
    and tokenizer load on first use (`Checkpoint.model`), so reading only its codebook or vocoder is cheap."""
    files = path if isinstance(path, CheckpointFiles) else CheckpointFiles(path)
    files.verify()
    ck = Checkpoint(files.path, vocab=files.vocab, meta=dict(files.meta), files=files, device=device)
    if not lazy:
        ck.model  # noqa: B018  (loads it now: a damaged file is an error at load)
    return ck
