"""`dmlm ablate`: compare speech codebooks by the WER they lead to, at a fixed training budget.

Each variant is a set of `CodebookSettings` overrides (e.g. `k=250`, `pooling=2`,
`backend=mel`). Encoder features are computed once per backend for every record of the
prepared corpus and kept in memory (float16), so a variant costs only its k-means fit, its
unit assignment, a training run of `minutes`, and a test decode. Results go to
`OUT/ablate.json` and `OUT/ablate.md`; finished variants are skipped on a re-run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dmlm.data.manifest import read_manifest
from dmlm.data.shards import build_store
from dmlm.data.split import store_prefix
from dmlm.tokenizers.features import build_features
from dmlm.tokenizers.speech import CodebookSettings, fit_codebook
from dmlm.tokenizers.tokenize import load_record_audio
from dmlm.training.config import RunConfig
from dmlm.util.config import ConfigError, load_config
from dmlm.util.errors import MissingFileError
from dmlm.util.io import atomic_write_json, atomic_write_text


@dataclass
class AblateConfig:
    data: str = ""
    """A prepared corpus folder (train/dev/test.jsonl), e.g. runs/demo/data after `make demo`."""
    out: str = "runs/ablate"
    variants: list[str] = field(default_factory=lambda: ["k=500", "k=250", "k=1000", "k=500,pooling=2", "backend=mel,model=,layer=-1,k=500"])
    """Codebook variants, each a comma-separated list of CodebookSettings overrides."""
    minutes: float = 5.0
    """Training budget per variant."""
    fit_utts: int = 1500
    run: RunConfig = field(default_factory=RunConfig)


def _features_for(backend_settings: CodebookSettings, manifests: dict[str, Path]) -> dict[str, np.ndarray]:
    fx = build_features(backend_settings.backend, backend_settings.model, backend_settings.layer,
                        compute_type=backend_settings.compute_type, pad_quantum=backend_settings.pad_quantum)
    feats: dict[str, np.ndarray] = {}
    for split, m in manifests.items():
        recs = read_manifest(m)
        for s in tqdm(range(0, len(recs), 64), desc=f"{backend_settings.backend} features {split}"):
            chunk = recs[s : s + 64]
            for r, f in zip(chunk, fx([load_record_audio(m, r) for r in chunk])):
                feats[r.id] = f.astype(np.float16)
    return feats


def run_ablation(cfg: AblateConfig) -> list[dict]:
    from dmlm.evaluation.tasks import evaluate_task
    from dmlm.training.train import train

    if not cfg.data:
        raise ConfigError("ablate: set data=FOLDER, a prepared corpus (train/dev/test.jsonl; e.g. runs/demo/data)")
    manifests = {s: Path(cfg.data) / f"{s}.jsonl" for s in ("train", "dev", "test")}
    missing = [str(p) for p in manifests.values() if not p.is_file()]
    if missing:
        raise MissingFileError(f"ablate: {', '.join(missing)} not found (prepare the corpus first: dmlm prepare mini-world)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "ablate.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {r["variant"] for r in results}
    cache: dict[tuple, dict[str, np.ndarray]] = {}
    for variant in cfg.variants:
        if variant in done:
            continue
        settings = load_config(None, [x for x in variant.split(",") if x], cls=CodebookSettings)
        if settings.backend == "mel":
            settings.model, settings.layer = None, None
        key = (settings.backend, settings.model, settings.layer)
        if key not in cache:
            cache.clear()  # one backend's features in memory at a time
            cache[key] = _features_for(settings, manifests)
        feats = cache[key]
        name = variant.replace(",", "_").replace("=", "")
        vdir = out / name
        t0 = time.time()
        train_ids = [r.id for r in read_manifest(manifests["train"])][: cfg.fit_utts]
        cb = fit_codebook((feats[i].astype(np.float32) for i in train_ids), settings, features=_Passthrough(),
                          total=len(train_ids))
        cb.save(vdir / "codebook.safetensors")
        for split, m in manifests.items():
            build_store(read_manifest(m), lambda chunk: [cb.frames_to_units(feats[r.id].astype(np.float32)).tolist() for r in chunk],
                        store_prefix(vdir / "units", m), {"fingerprint": cb.fingerprint, "manifest": str(m), "modality": "speech"},
                        chunk_size=4096, desc=f"assign {split}")
        run = load_config(None, [], cls=RunConfig)
        run.model, run.train = cfg.run.model, cfg.run.train
        run.data.train, run.data.dev = str(manifests["train"]), str(manifests["dev"])
        run.data.units, run.data.codebook = str(vdir / "units"), str(vdir / "codebook.safetensors")
        run.train.out, run.train.max_minutes = str(vdir / "model"), cfg.minutes
        train(run)
        rep = evaluate_task(vdir / "model", "asr", manifests["test"], vdir / "eval_test.json", units=vdir / "units")
        from dmlm.data.shards import TokenStore

        store = TokenStore(store_prefix(vdir / "units", manifests["train"]))
        dur = sum(r.duration or 0 for r in read_manifest(manifests["train"]))
        log = [json.loads(x) for x in (vdir / "model.log.jsonl").read_text().splitlines()]
        results.append({
            "variant": variant, "settings": settings.reproducing(), "units_per_s": float(store.lengths().sum() / dur),
            "wer": rep["wer"], "cer": rep["cer"], "wer_heldout_voice": rep.get("wer_heldout_voice"),
            "steps": log[-1]["step"], "train_minutes": cfg.minutes, "seconds": round(time.time() - t0, 1),
        })
        atomic_write_json(results_path, results)
        atomic_write_text(out / "ablate.md", render(results))
    return results


class _Passthrough:
    """Features already computed: fit_codebook receives frames, not audio."""

    frame_rate = 50.0

    def __call__(self, frames):
        return list(frames)


def render(results: list[dict]) -> str:
    lines = ["| codebook variant | units/s | steps | test WER % | held-out voice WER % | CER % |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['variant']} | {r['units_per_s']:.1f} | {r['steps']} | {r['wer']:.2f} | "
                     f"{r['wer_heldout_voice']:.2f} | {r['cer']:.2f} |")
    return "\n".join(lines) + "\n"


def load_ablate_config(path: str | None, overrides: list[str]) -> AblateConfig:
    return load_config(path, overrides, cls=AblateConfig)
