"""`dmlm prepare NAME`: turn a text corpus into a speech corpus (manifests + 16 kHz wavs).

Layout written under `out_dir`:
    wav/<id>.wav
    train.jsonl  dev.jsonl  test.jsonl   (paths relative to the manifest)
    prepare.json                          (the settings, so a re-run with others is refused)

The test split holds every test sentence twice: once in a training voice, once in the
held-out voice (`custom.heldout_voice = true`, id suffix `-hv`); metrics are reported for
each group separately. Re-running continues where synthesis stopped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dmlm.data.corpus import Sentence
from dmlm.data.manifest import Record, atomic_write_text, write_manifest
from dmlm.data.synth import Voice, draw_voice, synthesize_many


@dataclass
class PrepareConfig:
    corpus: str = "mini-world"
    """Corpus name: mini-world (closed vocabulary, with es/de/fr translations) or bible (open vocabulary, es)."""
    n_train: int = 8000
    """Number of training sentences."""
    n_dev: int = 300
    """Number of dev sentences."""
    n_test: int = 500
    """Number of test sentences (each also spoken by the held-out voice)."""
    seed: int = 0
    """Seed for sentences, splits and voices."""
    workers: int = 2
    """Parallel espeak-ng processes."""


def _corpus_fn(name: str) -> Callable[..., dict[str, list[Sentence]]]:
    if name == "mini-world":
        from dmlm.data import miniworld

        return miniworld.generate_splits
    if name == "bible":
        from dmlm.data import bible

        return bible.generate_splits
    raise ValueError(f"unknown corpus {name!r}; expected one of: mini-world, bible")


CORPORA = ("mini-world", "bible")


def prepare(cfg: PrepareConfig, out_dir: str | Path) -> dict[str, Path]:
    """Synthesize the corpus into `out_dir`; returns {split: manifest path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "prepare.json"
    settings = asdict(cfg)
    if settings_path.is_file():
        old = json.loads(settings_path.read_text())
        if {k: v for k, v in old.items() if k != "workers"} != {k: v for k, v in settings.items() if k != "workers"}:
            raise ValueError(
                f"{settings_path}: this folder was prepared with other settings ({old}); "
                f"use another output folder or delete it"
            )
    atomic_write_text(settings_path, json.dumps(settings, indent=2))

    manifests = {s: out / f"{s}.jsonl" for s in ("train", "dev", "test")}
    if all(p.is_file() for p in manifests.values()):
        return manifests

    splits = _corpus_fn(cfg.corpus)(cfg.n_train, cfg.n_dev, cfg.n_test, seed=cfg.seed)
    rng = random.Random(cfg.seed + 1)
    plan: dict[str, list[tuple[Sentence, Voice, str, bool]]] = {}
    for split, sentences in splits.items():
        rows = [(s, draw_voice(rng), s.id, False) for s in sentences]
        if split == "test":
            rows += [(s, draw_voice(rng, heldout=True), f"{s.id}-hv", True) for s in sentences]
        plan[split] = rows

    jobs = [(s.text, v, out / "wav" / f"{uid}.wav") for rows in plan.values() for s, v, uid, _ in rows]
    durations = iter(synthesize_many(jobs, workers=cfg.workers, desc=f"synthesize {cfg.corpus}"))
    for split, rows in plan.items():
        records = []
        for s, v, uid, heldout in rows:
            custom = dict(s.custom)
            custom.update(voice=asdict(v), heldout_voice=heldout)
            records.append(
                Record(
                    id=uid, split=split, lang="en", audio=f"wav/{uid}.wav", duration=round(next(durations), 3),
                    text=s.text, translations=dict(s.translations) or None, speaker=v.speaker, custom=custom,
                )
            )
        write_manifest(manifests[split], records)
    return manifests
