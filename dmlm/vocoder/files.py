"""The files of a saved vocoder folder, and the one writer of its `config.json`.

Design decisions:
- A vocoder folder holds `config.json` (the settings, `VocoderConfig` flat, plus `format_version`
  and the `training` record: steps, loss history, the manifests it learned from), `model.safetensors`
  (the network) and optionally `matching.safetensors` (the matching set). `VocoderFiles` names them;
  no other module spells them.
- The config is read without the weights (`VocoderFiles.config`, `.record`), so a recipe can decide
  whether a saved vocoder is reusable before loading a network.
- After training only the synthesis and matching settings change, always through
  `VocoderFiles.update`: an atomic rewrite of `config.json` that keeps every other key as it was
  (a vocoder saved before a field existed keeps loading it at its default). A new `matching_clips`
  drops the matching set on disk, which was built from the old count: the set never disagrees with
  its config.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.io import atomic_write_json, fault_point, finish_swap, swap_paths
from dmlm.vocoder.config import ADDED_FIELDS, VocoderConfig, kind_of

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MATCHING = "matching.safetensors"
FORMAT_VERSION = 1

UPDATABLE_KINDS = ("synthesis", "matching")
"""The kinds of settings a trained vocoder takes without retraining its network."""


class NoVocoder(MissingFileError):
    """A checkpoint or folder without a trained vocoder."""


class VocoderFiles:
    """The files of the vocoder in `folder` (e.g. `<model>/vocoder`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.config_path = self.folder / CONFIG
        self.weights_path = self.folder / WEIGHTS
        self.matching_path = self.folder / MATCHING

    @property
    def exists(self) -> bool:
        """Whether a vocoder was saved here (its config is written with its weights, atomically)."""
        return self.config_path.is_file()

    def require(self) -> None:
        """Raise `NoVocoder` unless both the config and the weights are here."""
        old = swap_paths(self.folder)[1]
        if not self.folder.exists() and old.is_dir():  # a reader never moves folders: it says what happened
            raise NoVocoder(f"{self.folder}: a vocoder save was interrupted while swapping folders (the previous "
                            f"vocoder is in {old}); `dmlm vocoder match MODEL` or the next vocoder training "
                            "finishes it")
        if not self.config_path.is_file() or not self.weights_path.is_file():
            raise NoVocoder(
                f"{self.folder}: no vocoder here ({CONFIG} and {WEIGHTS} missing); train one into a model with "
                "`dmlm vocoder train MODEL` (it lands in MODEL/vocoder)")

    def finish_interrupted_save(self) -> str | None:
        """Finish a save (`Vocoder.save`) killed between the two renames of its folder swap: the new
        folder goes into place if complete (its `config.json` is written last), else the previous one
        goes back (`dmlm.util.io.finish_swap`). Writers call it before they touch the folder."""
        return finish_swap(self.folder, lambda tmp: (tmp / CONFIG).is_file() and (tmp / WEIGHTS).is_file())

    def saved(self) -> dict:
        """`config.json` as written: the settings, `format_version` and the `training` record."""
        return json.loads(self.config_path.read_text())

    def config(self) -> VocoderConfig:
        """The saved settings."""
        return VocoderConfig.from_dict(self.saved())

    def record(self) -> dict:
        """What training wrote about the run: steps, seconds, loss, history, manifests, records, final."""
        return self.saved().get("training") or {}

    def trained_on(self) -> list[str] | None:
        """The resolved manifests the network learned from (None: not recorded)."""
        info = self.record()
        return info.get("manifests") or ([info["manifest"]] if "manifest" in info else None)  # older: one

    def write_config(self, cfg: VocoderConfig, record: dict | None = None, folder: Path | None = None) -> None:
        """Write `cfg` (and the training `record`) as `config.json` into `folder` (default: this one)."""
        out = (folder or self.folder) / CONFIG
        settings = {k: v for k, v in asdict(cfg).items() if not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])}
        out.write_text(json.dumps({"format_version": FORMAT_VERSION, **settings,
                                   **({"training": record} if record else {})}, indent=1))

    def update(self, **settings) -> dict:
        """Rewrite `config.json` atomically with new synthesis or matching settings (see the module
        note); returns those that changed. Any other setting is refused: it needs a new network."""
        fixed = sorted(k for k in settings if _kind(k) not in UPDATABLE_KINDS)
        if fixed:
            raise UserError(f"{self.folder}: {', '.join(fixed)} cannot change after training (only synthesis and "
                             "matching settings can); train the vocoder again")
        saved = self.saved()
        new = {k: v for k, v in settings.items() if saved.get(k, getattr(VocoderConfig, k)) != v}
        if new:
            VocoderConfig.from_dict({**saved, **new})  # still a valid config
            if "matching_clips" in new:  # the set goes first: a crash between the two leaves no set, never
                self.matching_path.unlink(missing_ok=True)  # an old set under a config that says another size
            fault_point("vocoder-update")
            atomic_write_json(self.config_path, {**saved, **new})
        return new


def _kind(name: str) -> str:
    """`kind_of(name)`; a UserError for a name that is no setting."""
    try:
        return kind_of(name)
    except KeyError:
        raise UserError(f"unknown vocoder setting {name!r}") from None
