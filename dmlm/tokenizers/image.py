"""Image codebook and image tokenizer: square RGB images -> a grid of patch codes.

Design decisions:
- **Built-in backend `patch-kmeans`**: an image (S, S, 3) is cut into non-overlapping P x P
  patches, row-major, each flattened to P*P*3 pixels in [0, 1]; a code is the nearest of k
  centroids fitted by scikit-learn `MiniBatchKMeans` on patches sampled across the corpus.
  No learned encoder, no GPU, fits in seconds, and `decode` is exact to inspect: the
  centroid patches tiled back. It suits drawn images with flat colours (mini-world scenes,
  digits); photographs want a learned tokenizer, hence the second backend.
- **Backend `external`**: codes made elsewhere (a VQGAN, a dVAE) are plugged in as JSONL
  `{"id": ..., "codes": [...]}` read by `read_external_codes` (validated, errors name
  file:line). The codebook then holds no centroids: it records k and the tokenizer's name,
  its fingerprint is a hash of those, and `encode`/`decode` raise, saying why.
- **Same contract as the speech codebook** (`dmlm.tokenizers.speech`): one `.safetensors`
  file with the centroids and, in its metadata, `"modality": "image"`, the settings and a
  fingerprint (hash of centroids + settings that change codes); stores and checkpoints
  record the fingerprint and `check` raises `CodebookMismatch` on another one. A speech
  codebook file given as an image codebook (or the reverse) is refused, naming both.
- Defaults: 64 x 64 images, 8 x 8 patches -> 64 codes per image, k=1024. Measured on
  mini-world scenes (`dmlm.data.scenes`; fit on the 3,287 scenes of an 8,000-sentence train
  split, scored on 356 held-out dev+test scenes; "colour"/"kind": how often the code at a
  card's centre, read through the majority label of that code on train, names the card's
  colour (12 named colours) / kind (42)):

      patch  k     codes/img  PSNR (dB)  colour  kind   fit (1 CPU thread, shared machine)
      8      256   64         24.6       49 %    10 %   5 s
      8      512   64         26.1       61 %    12 %   4 s
      8      1024  64         27.7       78 %    20 %   14 s
      8      2048  64         28.8       84 %    33 %   21 s
      4      512   256        28.0       -       -      2 s
      16     1024  16         23.0       50 %    12 %   14 s

  8 x 8 patches match the scene's cells; 4 x 4 reconstructs as well as k=1024 at 8 x 8 but
  costs 256 codes per image; 16 x 16 leaves 16 codes and loses colours. k=1024 is where
  colours are kept; 2048 keeps kinds better at twice the fit and vocabulary.
- `MiniBatchKMeans(reassignment_ratio=0)`: the default reassignment moves rarely hit
  centroids to random patches, mostly background; the rare clusters it discards are the
  coloured card parts the captions are about (k=512: PSNR 22.8 -> 24.8 dB on an earlier
  drawing style, within 0.2 dB of full Lloyd k-means at a sixth of its time).
- Pixel normalisation is /255 only: no per-patch mean or contrast removal, so a code
  carries the colour itself, which the captions name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dmlm.tokenizers.kmeans import KMeansCodebook
from dmlm.util.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

BACKENDS = ("patch-kmeans", "external")


@dataclass
class ImageCodebookSettings:
    backend: str = "patch-kmeans"
    """patch-kmeans (built in: k-means over pixel patches) or external (codes made elsewhere, read from JSONL)."""
    image_size: int = 64
    """Images are (image_size, image_size, 3); `dmlm.util.images.load_image` resizes others with a warning."""
    patch: int = 8
    """Patch side in pixels: (image_size / patch)^2 codes per image (8 -> 64 codes for 64x64)."""
    k: int = 1024
    """Number of codes (1024 keeps mini-world colours; see the module docstring)."""
    seed: int = 0
    """k-means seed."""
    name: str | None = None
    """Name of the external tokenizer (backend external; it and k make the fingerprint)."""
    max_patches: int = 200_000
    """Patches sampled for fitting."""
    n_init: int = 1
    """k-means restarts (the best inertia wins)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown image codebook backend {self.backend!r}; expected one of: {', '.join(BACKENDS)}")
        if self.k < 1:
            raise UserError(f"k must be positive, got {self.k}")
        if self.backend == "external" and not self.name:
            raise UserError("an external image codebook needs the name of the tokenizer that made its codes")
        if self.backend == "patch-kmeans" and (self.patch < 1 or self.image_size % self.patch):
            raise UserError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch

    @property
    def codes_per_image(self) -> int:
        return self.grid**2

    def reproducing(self) -> dict:
        """The settings that determine codes (not fit-time knobs like max_patches)."""
        d = asdict(self)
        d.pop("max_patches")
        d.pop("n_init")
        return d


class ImageCodebook(KMeansCodebook):
    modality = "image"

    def __init__(self, centroids: np.ndarray | None, settings: ImageCodebookSettings):
        s = settings
        self.settings = settings
        if s.backend == "external":
            if centroids is not None and centroids.size:
                raise UserError("an external image codebook holds no centroids")
            self.centroids = None
            return
        dim = s.patch * s.patch * 3
        if centroids is None or centroids.shape != (s.k, dim):
            raise UserError(f"centroids must be (k={s.k}, patch*patch*3={dim}), "
                             f"got {None if centroids is None else centroids.shape}")
        self._set_centroids(centroids)  # (k, P*P*3), pixels in [0, 1]

    @classmethod
    def external(cls, k: int, name: str, image_size: int = 64) -> ImageCodebook:
        """A codebook for codes made by another tokenizer (`name`, k codes); see `read_external_codes`."""
        return cls(None, ImageCodebookSettings(backend="external", k=k, name=name, image_size=image_size))

    @property
    def is_external(self) -> bool:
        return self.settings.backend == "external"

    @classmethod
    def load(cls, path: str | Path) -> ImageCodebook:
        centroids, settings = cls._read(path)
        stored = settings.pop("_fingerprint")
        settings = ImageCodebookSettings(**settings)
        cb = cls(None if settings.backend == "external" else centroids, settings)
        cb._check_stored(path, stored)
        return cb

    # -- encoding ------------------------------------------------------------------------
    def _require_centroids(self, what: str) -> np.ndarray:
        if self.centroids is None:
            raise UserError(f"image codebook {self.settings.name!r} is external: it has no centroids to {what} with; "
                             f"its codes come from read_external_codes, and images from the tokenizer that made them")
        return self.centroids

    def patches(self, image: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 -> (G*G, P*P*3) float32 in [0, 1], patches in row-major order."""
        s = self.settings
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise UserError(f"images must be uint8 arrays (use dmlm.util.images.load_image), got "
                             f"{getattr(image, 'dtype', type(image).__name__)}")
        if image.shape != (s.image_size, s.image_size, 3):
            raise UserError(f"image shape {image.shape}, codebook expects ({s.image_size}, {s.image_size}, 3)")
        g, p = s.grid, s.patch
        x = image.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)
        return x.astype(np.float32) / 255.0

    def assign(self, patches: np.ndarray | torch.Tensor) -> np.ndarray:
        """Nearest centroid of each (N, P*P*3) patch; (N,) int64."""
        self._require_centroids("encode")
        return self.nearest(patches)

    def encode(self, image: np.ndarray) -> list[int]:
        return self.encode_batch([image])[0]

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        self._require_centroids("encode")
        if not len(images):
            return []
        codes = self.assign(np.concatenate([self.patches(im) for im in images]))  # (B*G*G,)
        return codes.reshape(len(images), self.settings.codes_per_image).tolist()

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        """Codes back to an image (S, S, 3) uint8: each code's centroid patch, tiled row-major."""
        centroids = self._require_centroids("decode")
        s = self.settings
        c = np.asarray(codes, dtype=np.int64)
        if c.shape != (s.codes_per_image,):
            raise UserError(f"expected {s.codes_per_image} codes (a {s.grid}x{s.grid} grid), got {len(c)}")
        if c.min() < 0 or c.max() >= self.k:
            raise UserError(f"image codes must be in [0, {self.k}), got range [{c.min()}, {c.max()}]")
        g, p = s.grid, s.patch
        x = centroids[c].reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(s.image_size, s.image_size, 3)
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def fit_image_codebook(images: Iterable[np.ndarray], settings: ImageCodebookSettings,
                       total: int | None = None) -> ImageCodebook:
    """Fit k-means on patches of `images` ((S, S, 3) uint8 arrays), at most `settings.max_patches`."""
    from dmlm.tokenizers.kmeans import check_fit_settings

    check_fit_settings(settings)
    from sklearn.cluster import MiniBatchKMeans
    from dmlm.util.progress import tqdm

    if settings.backend != "patch-kmeans":
        raise UserError(f"only patch-kmeans codebooks are fitted; {settings.backend!r} codes are made elsewhere")
    shaper = ImageCodebook(np.zeros((settings.k, settings.patch**2 * 3), np.float32), settings)  # for `patches`
    pool: list[np.ndarray] = []
    n = 0
    # Read twice the budget at most, then subsample uniformly: patches of the first images
    # alone would over-represent whatever the corpus happens to start with.
    for image in tqdm(images, total=total, desc="image codebook patches", unit="img"):
        pool.append(shaper.patches(image))
        n += len(pool[-1])
        if n >= 2 * settings.max_patches:
            break
    if not pool:
        raise UserError("no images to fit an image codebook on")
    X = np.concatenate(pool)
    rng = np.random.default_rng(settings.seed)
    if len(X) > settings.max_patches:
        X = X[rng.choice(len(X), settings.max_patches, replace=False)]
    if len(X) < settings.k:
        raise UserError(f"only {len(X)} patches to fit k={settings.k} codes; give more images or a smaller k")
    log.info("image k-means: %d patches x %d dims -> k=%d", *X.shape, settings.k)
    # reassignment_ratio=0: no random reassignment of rare clusters (see the module docstring)
    km = MiniBatchKMeans(n_clusters=settings.k, batch_size=4096, n_init=settings.n_init, max_iter=100,
                         reassignment_ratio=0.0, random_state=settings.seed, compute_labels=False)
    km.fit(X)
    return ImageCodebook(km.cluster_centers_.astype(np.float32), settings)


def read_external_codes(path: str | Path, k: int, length: int | None = None) -> dict[str, list[int]]:
    """Codes made by an external image tokenizer: JSONL lines `{"id": str, "codes": [int, ...]}`.

    Every code must be in [0, k); with `length`, every image must have exactly that many
    codes. Errors name file:line. Ids must be unique.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: external image codes not found")
    out: dict[str, list[int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
                raise UserError(f"{where}: expected an object with a non-empty string 'id'")
            codes = obj.get("codes")
            if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
                raise UserError(f"{where}: 'codes' must be a list of integers")
            if not codes:
                raise UserError(f"{where}: 'codes' is empty")
            bad = [c for c in codes if not 0 <= c < k]
            if bad:
                raise UserError(f"{where}: code {bad[0]} out of range [0, {k})")
            if length is not None and len(codes) != length:
                raise UserError(f"{where}: {len(codes)} codes, expected {length}")
            if obj["id"] in out:
                raise UserError(f"{where}: duplicate id {obj['id']!r}")
            out[obj["id"]] = codes
    return out
