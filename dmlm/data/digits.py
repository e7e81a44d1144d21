"""digits: scikit-learn's 1,797 handwritten digits as a small captioned image corpus.

A second image source beside the mini-world scenes, with real (if tiny) handwriting and no
audio: for image-codebook fits, image LM and captioning runs that need no synthesis.

Design decisions:
- **Images**: the 8 x 8 scans (ink 0..16) are drawn dark-on-white, upscaled bicubically to
  64 x 64 RGB (the image codebook's default input), so strokes are smooth, not 8-pixel blocks.
- **Captions are templated English** from the label ("a handwritten seven", "the digit
  seven", ...), lowercase without punctuation like mini-world; the template is a seeded
  choice per image, so a caption is not a fixed function of the label alone.
- **Splits** come from one seeded permutation: test first, then dev, then train from the
  rest, so held-out sets do not move when n_train changes. n_train is capped at what is
  left (1,797 images in all), with a warning; dev + test larger than the corpus is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from dmlm.util.errors import UserError

log = logging.getLogger(__name__)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {}", "the digit {}", "the number {} written by hand", "a picture of the digit {}")
IMAGE_SIZE = 64


@dataclass
class DigitExample:
    id: str
    caption: str
    image: np.ndarray  # (64, 64, 3) uint8
    custom: dict[str, Any] = field(default_factory=dict)


def digit_image(pixels: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One 8 x 8 scan (ink 0..16) as dark ink on white, (size, size, 3) uint8."""
    grey = np.clip(255.0 * (1.0 - np.asarray(pixels, dtype=np.float64).reshape(8, 8) / 16.0), 0, 255)
    img = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def caption(label: int, template: int) -> str:
    return TEMPLATES[template].format(NUMBER_WORDS[label])


def generate_splits(n_train: int, n_dev: int, n_test: int, seed: int = 0) -> dict[str, list[DigitExample]]:
    """Seeded, disjoint train/dev/test splits of `sklearn.datasets.load_digits`."""
    from sklearn.datasets import load_digits

    data = load_digits()
    n = len(data.target)
    if n_dev + n_test >= n:
        raise UserError(f"digits has {n} images: n_dev + n_test = {n_dev + n_test} leaves none for training")
    if n_train > n - n_dev - n_test:
        log.warning("digits has %d images: train gets %d, not n_train=%d", n, n - n_dev - n_test, n_train)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    templates = rng.integers(len(TEMPLATES), size=n)  # per source image, so it does not move with the splits
    parts = {"test": perm[:n_test], "dev": perm[n_test : n_test + n_dev],
             "train": perm[n_test + n_dev :][:n_train]}
    out: dict[str, list[DigitExample]] = {}
    for split in ("train", "dev", "test"):
        out[split] = [
            DigitExample(id=f"digits-{split}-{i:06d}", caption=caption(int(data.target[j]), int(templates[j])),
                         image=digit_image(data.images[j]),
                         custom={"label": int(data.target[j]), "source_index": int(j)})
            for i, j in enumerate(parts[split])
        ]
    return out
