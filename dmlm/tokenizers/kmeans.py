"""What every k-means codebook shares: identity (fingerprint), persistence, checks, nearest-centroid assignment.

A codebook's fingerprint is the hash of its centroids and of the settings that reproduce them,
so a token store or checkpoint made with one codebook is refused with another. Files are
safetensors with the modality, the settings and the fingerprint in their metadata; a file of
another modality, or whose stored fingerprint does not match what it holds, is refused by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from dmlm.util.errors import MissingFileError, UserError


def check_fit_settings(settings: Any) -> None:
    """Counts a fit cannot use (k=0 would reach scikit-learn's own error), named by key."""
    for key in ("k", "pooling", "patch", "image_size", "max_frames", "max_patches", "n_init"):
        v = getattr(settings, key, None)
        if v is not None and not v >= 1:
            raise UserError(f"codebook setting {key}: must be >= 1, got {v!r}")
    q = getattr(settings, "pad_quantum", None)
    if q is not None and not q > 0:
        raise UserError(f"codebook setting pad_quantum: must be > 0 seconds, got {q!r}")


class CodebookMismatch(UserError):
    """Tokens, a checkpoint or a file made with another codebook than the one given."""


class KMeansCodebook:
    """Base of `Codebook` (speech) and `ImageCodebook`: subclasses set `modality` and `settings`."""

    modality = ""
    settings: Any
    centroids: np.ndarray | None

    def _set_centroids(self, centroids: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # (k, D)
        self._c = torch.from_numpy(self.centroids)
        self._c_sq = (self._c**2).sum(1)

    @property
    def k(self) -> int:
        return self.settings.k

    @property
    def vocab_size(self) -> int:
        return self.k

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(b"" if self.centroids is None else self.centroids.tobytes())
        h.update(json.dumps(self.settings.reproducing(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def check(self, fingerprint: str | None, what: str) -> None:
        """Raise if `what` (a token store, a checkpoint) was made with another codebook."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise CodebookMismatch(f"{what} was made with {self.modality} codebook {fingerprint}, but the codebook "
                                   f"given is {self.fingerprint}")

    def nearest(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Index of the nearest centroid of each row of (N, D) `x`; (N,) int64."""
        x = torch.as_tensor(x, dtype=torch.float32)
        c, c_sq = self._c.to(x.device), self._c_sq.to(x.device)
        out = [torch.argmin(c_sq[None] - 2.0 * chunk @ c.T, dim=1) for chunk in x.split(8192)]  # ||x||² const per row
        return torch.cat(out).cpu().numpy()

    def save(self, path: str | Path) -> Path:
        from dmlm.util.io import atomic_file

        path = Path(path)
        meta = {"modality": self.modality, "settings": json.dumps(asdict(self.settings)), "fingerprint": self.fingerprint,
                **self._more_metadata()}
        # an external codebook stores an empty (0, 0) tensor: safetensors files hold at least one
        centroids = self.centroids if self.centroids is not None else np.zeros((0, 0), np.float32)
        with atomic_file(path) as tmp:
            save_file({"centroids": centroids}, str(tmp), metadata=meta)
        return path

    def _more_metadata(self) -> dict[str, str]:
        """Metadata a subclass stores beside the settings (the speech codebook's unit merges)."""
        return {}

    @classmethod
    def _read(cls, path: str | Path) -> tuple[np.ndarray, dict]:
        """(centroids, settings dict) of a codebook file of this class's modality."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: {cls.modality} codebook not found")
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error type for a non-safetensors file
            raise UserError(f"{path}: not a codebook file ({e})") from None
        modality = meta.get("modality", "speech")  # files from before the key was written are speech
        if modality != cls.modality:
            plural = {"image": "images"}
            raise CodebookMismatch(f"{path}: this is a codebook for {modality}, not for "
                                   f"{plural.get(cls.modality, cls.modality)} "
                                   f"(metadata modality {modality!r}, expected {cls.modality!r})")
        tensors = load_file(str(path))
        if "settings" not in meta or "centroids" not in tensors:  # e.g. a model's weights named as the codebook
            raise UserError(f"{path}: not a dmlm codebook (a safetensors file without codebook settings and "
                            "centroids); name the file `dmlm codebook fit` wrote")
        return tensors["centroids"], {**json.loads(meta["settings"]), "_fingerprint": meta.get("fingerprint"),
                                      **({"_bpe": meta["bpe"]} if "bpe" in meta else {})}

    def _check_stored(self, path: str | Path, stored: str | None) -> None:
        if stored and stored != self.fingerprint:
            raise CodebookMismatch(f"{path}: stored fingerprint {stored} != computed {self.fingerprint}")
