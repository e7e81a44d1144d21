"""Shared toy fixtures, built once per session (CPU, seconds):

- `corpus`: 24 short sentences over a 9-word vocabulary, spoken by espeak-ng into 16 kHz
  wavs; manifests `train.jsonl` (20), `dev.jsonl` (4) and `tiny.jsonl` (4 training
  utterances, for overfitting); a 16-unit `mel` codebook; token stores for every manifest.
- `run_config(tmp, **overrides)`: a `RunConfig` for a 2-layer d=64 Llama on that corpus.
- `trained`: a checkpoint overfit on `tiny.jsonl` (shared by the model and CLI tests).
"""

from __future__ import annotations

import os

# one thread: the tests are tiny, and spin-waiting threads on a shared 2-core machine are slow
os.environ.setdefault("OMP_NUM_THREADS", "1")

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dmlm.util.audio import load_audio
from dmlm.data.manifest import Record, read_manifest, write_manifest
from dmlm.data.synth import Voice, synthesize_many
from dmlm.tokenizers.tokenize import tokenize_manifest
from dmlm.tokenizers.speech import Codebook, CodebookSettings, fit_codebook

torch.set_num_threads(1)

SENTENCES = [" ".join(w) for w in itertools.product(("the", "a"), ("red", "big"), ("cat", "dog"),
                                                    ("runs", "sees", "likes"))]
VOICE = Voice("en-us+m3", rate=170, pitch=50)
TINY = (0, 7, 13, 18)  # training records the overfit test memorizes: four different sentences


def _mel_settings(**kw) -> CodebookSettings:
    return CodebookSettings(**{"backend": "mel", "model": None, "layer": None, "k": 16, "seed": 0, "dedup": True,
                               "pooling": 1, **kw})


@pytest.fixture(scope="session")
def mel_settings():
    """`mel_settings(**changes)`: settings of a 16-unit log-mel codebook (no model needed)."""
    return _mel_settings


@dataclass
class Corpus:
    root: Path
    train: Path
    dev: Path
    tiny: Path
    codebook: Path
    units: Path

    def wavs(self, manifest: Path | None = None) -> list:
        m = manifest or self.train
        return [load_audio(r.audio_path(m)) for r in read_manifest(m)]

    def texts(self, manifest: Path) -> list[str]:
        return [r.text for r in read_manifest(manifest)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    jobs = [(text, VOICE, root / "wav" / f"utt{i:02d}.wav") for i, text in enumerate(SENTENCES)]
    durations = synthesize_many(jobs, workers=2, desc="test corpus")
    records = [Record(id=f"utt{i:02d}", lang="en", audio=f"wav/utt{i:02d}.wav", duration=round(d, 3), text=text,
                      speaker=VOICE.name) for i, ((text, _, _), d) in enumerate(zip(jobs, durations))]
    dev_idx = {3, 10, 16, 21}
    train = [r for i, r in enumerate(records) if i not in dev_idx]
    dev = [r for i, r in enumerate(records) if i in dev_idx]
    paths = {name: root / f"{name}.jsonl" for name in ("train", "dev", "tiny")}
    write_manifest(paths["train"], [Record(**{**r.__dict__, "split": "train"}) for r in train])
    write_manifest(paths["dev"], [Record(**{**r.__dict__, "split": "dev"}) for r in dev])
    write_manifest(paths["tiny"], [Record(**{**train[i].__dict__, "split": "train"}) for i in TINY])

    cb = fit_codebook((load_audio(r.audio_path(paths["train"])) for r in read_manifest(paths["train"])),
                      _mel_settings())
    cb_path = cb.save(root / "cb.safetensors")
    units = root / "units"
    for p in paths.values():
        assert tokenize_manifest(cb, p, units) is not None
    return Corpus(root, paths["train"], paths["dev"], paths["tiny"], cb_path, units)


@pytest.fixture(scope="session")
def codebook(corpus) -> Codebook:
    return Codebook.load(corpus.codebook)


def make_config(corpus: Corpus, out: Path, *overrides: str, train: Path | None = None, dev: Path | None = None):
    """A tiny RunConfig on the test corpus: 2-layer d=64 Llama, 300-token BPE, fp32."""
    from dmlm.training.config import RunConfig
    from dmlm.util.config import load_config

    base = [
        f"data.train={train or corpus.train}", f"data.dev={dev or corpus.dev}", f"data.units={corpus.units}",
        f"data.codebook={corpus.codebook}", f"train.out={out}", "train.steps=30", "train.eval_every=10",
        "train.save_every=15", "train.batch_tokens=4000", "train.warmup_steps=5", "train.log_every=1",
        "model.hidden_size=64", "model.layers=2", "model.heads=2", "model.intermediate_size=128",
        "data.bpe_vocab_size=300",
    ]
    return load_config(None, base + list(overrides), RunConfig)


@pytest.fixture(scope="session")
def run_config(corpus):
    """`run_config(out_dir, "train.steps=5", ...)`: see `make_config`."""
    return lambda out, *overrides, **kw: make_config(corpus, Path(out), *overrides, **kw)


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory) -> Path:
    """A checkpoint that has memorized the four utterances of `tiny.jsonl`."""
    from dmlm.training.train import train

    out = tmp_path_factory.mktemp("trained") / "model"
    cfg = make_config(corpus, out, "train.steps=150", "train.lr=3e-3", "train.eval_every=1000",
                      "train.save_every=1000", "train.log_every=10", train=corpus.tiny, dev=corpus.tiny)
    return train(cfg)


# -- a tiny model of every task (tests/test_multitask.py, tests/test_api.py) --------------------

ES = {"the": "el", "a": "un", "red": "rojo", "big": "grande", "cat": "gato", "dog": "perro", "runs": "corre",
      "sees": "ve", "likes": "quiere"}
TASKS = ["asr", "s2tt:es", "t2s", "i2t", "text_lm:es", "speech_lm", "image_lm"]


def _image(i: int):
    """16x16 RGB: a distinct colour block per record, so the caption is recoverable from the image."""
    import numpy as np

    img = np.zeros((16, 16, 3), np.uint8)
    img[(i % 2) * 8 : (i % 2) * 8 + 8, (i // 2) * 8 : (i // 2) * 8 + 8] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)][i]
    return img


@pytest.fixture(scope="session")
def mixed(corpus, tmp_path_factory):

    from dmlm.data.manifest import Record, read_manifest, write_manifest
    from dmlm.tokenizers.image import ImageCodebookSettings, fit_image_codebook
    from dmlm.tokenizers.tokenize import tokenize_images, tokenize_manifest
    from dmlm.util.images import save_image

    root = tmp_path_factory.mktemp("mixed")
    recs = []
    for i, r in enumerate(read_manifest(corpus.tiny)):
        save_image(root / "img" / f"{r.id}.png", _image(i))
        recs.append(Record(**{**r.__dict__, "audio": str(r.audio_path(corpus.tiny)), "image": f"img/{r.id}.png",
                              "caption": r.text, "translations": {"es": " ".join(ES[w] for w in r.text.split())}}))
    manifest = root / "mixed.jsonl"
    write_manifest(manifest, recs)
    from dmlm.tokenizers.speech import Codebook

    tokenize_manifest(Codebook.load(corpus.codebook), manifest, root / "units")
    icb = fit_image_codebook([_image(i) for i in range(4)], ImageCodebookSettings(image_size=16, patch=4, k=8))
    icb.save(root / "icb.safetensors")
    tokenize_images(icb, manifest, root / "units")
    return root, manifest


@pytest.fixture(scope="session")
def multitask_model(mixed, run_config):
    import json

    from dmlm.training.train import train

    root, manifest = mixed
    cfg = run_config(root / "model", "train.steps=200", "train.lr=3e-3", "train.eval_every=100", "train.save_every=1000",
                     "train.log_every=10", f"data.units={root / 'units'}", f"data.image_codebook={root / 'icb.safetensors'}",
                     f"data.tasks={json.dumps(TASKS)}", "data.weights=[1,1,1,1,0.5,0.5,0.5]", "model.hidden_size=96",
                     train=manifest, dev=manifest)
    return train(cfg)


@pytest.fixture(scope="session")
def speaking_model(multitask_model, mixed, tmp_path_factory):
    """A copy of `multitask_model` with a (barely trained, 3-step) vocoder: speech out runs end to end."""
    import shutil

    from dmlm.vocoder import VocoderConfig, train_vocoder

    root, manifest = mixed
    model = tmp_path_factory.mktemp("speaking") / "model"
    shutil.copytree(multitask_model, model)
    train_vocoder([manifest], [root / "units" / "mixed"], model / "codebooks" / "speech.safetensors",
                  VocoderConfig(dim=32, frame_dim=32, batch_size=2), model / "vocoder", steps=3, progress=False)
    return model


@pytest.fixture(scope="session")
def first_record(mixed):
    """(wav path, text, Spanish translation, image path) of the mixed corpus's first record."""
    from dmlm.data.manifest import read_manifest

    root, manifest = mixed
    r = read_manifest(manifest)[0]
    return r.audio_path(manifest), r.text, r.translations["es"], root / r.image
