"""Image I/O: everything dmlm reads becomes a square RGB uint8 array (H, W, 3).

Design decisions:
- Pillow reads and writes; arrays are numpy `uint8` (H, W, 3), the one layout every image
  consumer (scene renderer, image codebook) speaks.
- Like `dmlm.util.audio`, input that is usable but not what was expected is converted with a
  warning that names the file and says what was done (grayscale/palette/CMYK -> RGB, alpha
  composited on white, 16-bit and float [0, 1] grayscale scaled to 8 bits, other sizes
  centre-cropped to a square and resized); input that is
  unusable (missing, not an image, truncated, over `MAX_PIXELS`, a float image outside [0, 1],
  LAB/HSV) raises `ImageError` naming the file. The pixels are those a viewer shows: the EXIF
  orientation of a camera's JPEG is applied, alpha is composited on a white page.
- Non-square images are centre-cropped, not squashed: the aspect ratio of what is drawn
  survives (the CLIP preprocessing convention); the cropped margins are lost.
- Writes are atomic (temp file in the same folder + rename): an image appears complete or
  not at all, so a killed `prepare` never leaves a truncated PNG that a rerun would trust.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dmlm.util.errors import UserError

log = logging.getLogger(__name__)


MAX_PIXELS = 64_000_000  # 8000x8000: every dmlm image is downscaled to tens of pixels; larger is a mistake
# (or a decompression bomb: a few kB of PNG that decode to gigabytes)


class ImageError(UserError):
    """An image that cannot be used, with the file named."""


def to_8bit(img: Image.Image, where: str = "image") -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit "L", scaled the way a viewer shows
    it (Pillow's own conversion clips: a 16-bit mid-gray became white, a float image black); other
    modes unchanged. 16-bit: value / 257. Mode "I" (how a 16-bit PNG or TIFF may open) must hold
    16-bit values; "F" must hold values in [0, 1]. Anything else is an `ImageError` naming the range."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    a = np.asarray(img).astype(np.float64)  # (H, W)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(a).all() and 0.0 <= lo and hi <= 1.0):
            raise ImageError(f"{where}: a floating-point image (mode F) with values in [{lo:g}, {hi:g}]; dmlm reads "
                             "float images in [0, 1] (save it as an 8- or 16-bit PNG)")
        a = a * 255.0
    else:
        if not (0.0 <= lo and hi <= 65535.0):
            raise ImageError(f"{where}: a {img.mode} image with values in [{lo:g}, {hi:g}]; dmlm reads 16-bit values "
                             "(0..65535) at most (save it as an 8- or 16-bit PNG)")
        a = a / 257.0
    log.warning("%s: mode %s, scaling to 8 bits", where, img.mode)
    return Image.fromarray(np.rint(a).astype(np.uint8), mode="L")


UNREADABLE_MODES = ("LAB", "HSV")
"""Modes whose channels Pillow's RGB conversion reinterprets instead of converting: refused."""


def to_rgb(img: Image.Image, where: str = "image") -> Image.Image:
    """`img` as mode RGB; alpha is composited on white, 16-bit and float scaled to 8 bits (`to_8bit`).
    Warns (naming `where`) when converting."""
    if img.mode == "RGB":
        return img
    if img.mode in UNREADABLE_MODES:
        raise ImageError(f"{where}: mode {img.mode} images are not read; convert it to RGB first")
    img = to_8bit(img, where)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency survives only through RGBA
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        log.warning("%s: mode %s has an alpha channel, compositing on white", where, img.mode)
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    log.warning("%s: mode %s, converting to RGB", where, img.mode)
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int, where: str = "image") -> Image.Image:
    """Centre-crop `img` to a square and resize it to (size, size); warns when it changes anything."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    crop = "" if w == h else f", centre-cropped to {side}x{side}"
    log.warning("%s: size %dx%d, expected %dx%d%s and resized", where, w, h, size, size, crop)
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def to_image(image, size: int | None = 64, where: str = "image") -> np.ndarray:
    """A PIL image or a uint8 array (H, W), (H, W, 3) or (H, W, 4) -> RGB uint8 (size, size, 3),
    converted like a file (`load_image`)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ImageError(f"{where}: expected a uint8 array (H, W), (H, W, 3) or (H, W, 4), "
                             f"got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ImageError(f"{where}: expected an image path, a PIL image or a uint8 array, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{where}: image is empty ({image.width}x{image.height})")
    img = to_rgb(image, where)
    if size is not None:
        img = fit_square(img, size, where)
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path, size: int | None = 64) -> np.ndarray:
    """Read `path` as RGB uint8, (size, size, 3); `size=None` keeps the file's own size."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as f:
            if f.width * f.height > MAX_PIXELS:  # before decoding: a small file can hold a huge image
                raise ImageError(f"{path}: image is {f.width}x{f.height} pixels, more than dmlm reads "
                                 f"({MAX_PIXELS:,} pixels); resize it first")
            f.load()  # decode now: a truncated file fails here, inside the try
            img = ImageOps.exif_transpose(f)  # a camera's rotation flag, applied as every viewer does
    except Image.DecompressionBombError as e:  # Pillow's own guard, hit while opening
        raise ImageError(f"{path}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # Pillow raises all four
        raise ImageError(f"{path}: not a readable image ({e})") from None
    return to_image(img, size, str(path))


def save_image(path: str | Path, image: np.ndarray | Image.Image) -> Path:
    """Atomically write an image; the format follows the suffix (`.png` recommended: lossless)."""
    path = Path(path)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise UserError(f"{path}: expected a uint8 (H, W), (H, W, 3) or (H, W, 4) array, "
                             f"got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown image suffix {path.suffix!r}; use .png")
    from dmlm.util.io import atomic_file

    with atomic_file(path) as tmp:
        image.save(tmp, format=fmt)
    return path
