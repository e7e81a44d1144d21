"""`dmlm serve` under load: requests/s and p50/p95 latency at concurrency 1, 4 and 16, for
transcribe and speak; the ratio is requests/s at the highest concurrency over the same requests
sent one at a time (concurrency 1), on the same server and model.

What it says: how much the server's batching (`dmlm.serve.batching`: concurrent requests of a
task gathered into one model call) buys on this hardware. What it does not say: anything about
a large model. By default the server holds a *tiny* model built here the way tests/conftest.py
builds its fixtures (4 espeak-ng sentences, a 16-unit log-mel codebook, a 2-layer d=96 Llama
trained 200 steps on asr + t2s, a 3-step dim-32 vocoder); `--model` serves another checkpoint
(e.g. runs/demo/model) and `--url` measures a server already running. Traffic goes to loopback
only; every phase is bounded by `--requests` and `--max-seconds`.

Each request is the real route: POST /v1/transcribe with a wav (multipart) and POST /v1/speak
with a sentence (JSON, a wav back). Clips are espeak-ng renderings of the sentences. Before
each timed phase, the route is warmed up at that concurrency (a batch shape's first call pays
for its allocations). The server runs in its own process (`dmlm serve`), so the
client's work does not share its Python interpreter; on a 2-core machine they do share cores.

    python -m bench.serve_load [--model PATH | --url URL] [--requests 48] [--concurrency 1,4,16] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = ["the red cat runs", "a big dog sees", "the big cat likes", "a red dog runs"]


def tiny_model(root: Path) -> tuple[Path, list[Path]]:
    """A T2S + ASR model with a vocoder, the shape of the tests' fixtures; (checkpoint, its clips)."""
    from dmlm.data.manifest import Record, write_manifest
    from dmlm.data.synth import Voice, synthesize_many
    from dmlm.tokenizers.speech import CodebookSettings, fit_codebook
    from dmlm.tokenizers.tokenize import tokenize_manifest
    from dmlm.training.config import RunConfig
    from dmlm.training.train import train
    from dmlm.util.audio import load_audio
    from dmlm.util.config import load_config
    from dmlm.vocoder import VocoderConfig, train_vocoder

    voice = Voice("en-us+m3", rate=170, pitch=50)
    wavs = [root / "wav" / f"utt{i}.wav" for i in range(len(SENTENCES))]
    durations = synthesize_many([(t, voice, w) for t, w in zip(SENTENCES, wavs)], workers=2, desc="bench clips")
    manifest = root / "train.jsonl"
    write_manifest(manifest, [Record(id=f"utt{i}", split="train", lang="en", audio=f"wav/utt{i}.wav", duration=d, text=t,
                                     speaker=voice.name) for i, (t, d) in enumerate(zip(SENTENCES, durations))])
    cb = fit_codebook((load_audio(w) for w in wavs), CodebookSettings(backend="mel", model=None, layer=None, k=16, seed=0,
                                                                       dedup=True, pooling=1))
    cb_path = cb.save(root / "cb.safetensors")
    tokenize_manifest(cb, manifest, root / "units")
    cfg = load_config(None, [
        f"data.train={manifest}", f"data.dev={manifest}", f"data.units={root / 'units'}", f"data.codebook={cb_path}",
        f"train.out={root / 'model'}", "data.tasks=[asr, t2s]", "train.steps=200", "train.lr=3e-3",
        "train.eval_every=1000", "train.save_every=1000", "train.log_every=50", "train.batch_tokens=4000",
        "train.warmup_steps=5", "model.hidden_size=96", "model.layers=2", "model.heads=2",
        "model.intermediate_size=128", "data.bpe_vocab_size=300"], RunConfig)
    model = train(cfg)
    train_vocoder([manifest], [root / "units" / "train"], model / "codebooks" / "speech.safetensors",
                  VocoderConfig(dim=32, frame_dim=32, batch_size=2), model / "vocoder", steps=3, progress=False)
    return model, wavs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *flags: str, env: dict | None = None, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`dmlm serve MODEL` on a free loopback port; returns (process, base url) once /health answers."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would block the server once full
    proc = subprocess.Popen([sys.executable, "-m", "dmlm.cli", "serve", str(model), "--port", str(port),
                             "--log-level", "warning", *flags], env=env or os.environ.copy(),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dmlm serve exited with {proc.returncode}:\n{server_log(proc)[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"dmlm serve did not answer /health within {timeout} s")


def server_log(proc: subprocess.Popen) -> str:
    """What a `start_server` process has printed so far."""
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()  # type: ignore[attr-defined]


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


async def load(url: str, route: str, payloads: list, concurrency: int, n: int, max_seconds: float) -> dict:
    """`n` requests (cycling through `payloads`) from `concurrency` workers; latencies and errors."""
    import httpx

    latencies, errors, batches = [], [], []
    todo = iter(range(n))
    start = time.perf_counter()

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:
            if time.perf_counter() - start > max_seconds:
                return
            p = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                if route == "transcribe":
                    r = await client.post(url + "/v1/transcribe", files={"audio": ("clip.wav", p, "audio/wav")})
                    batch = r.json().get("batch_size") if r.status_code == 200 else None
                else:
                    r = await client.post(url + "/v1/speak", json={"text": p})
                    batch = r.headers.get("x-dmlm-batch-size")
                    if r.status_code == 200 and not r.content.startswith(b"RIFF"):
                        raise ValueError("not a wav")
            except Exception as e:  # noqa: BLE001 (every failure is counted, none ends the run)
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
                continue
            latencies.append(time.perf_counter() - t0)
            batches.append(int(batch or 1))

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    q = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000) if lat else (lambda f: float("nan"))
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(wall, 3), "requests_per_s": round(len(lat) / wall, 3) if wall else 0.0,
            "p50_ms": round(q(0.5), 1), "p95_ms": round(q(0.95), 1),
            "mean_batch": round(statistics.fmean(batches), 2) if batches else 0.0}


def main(argv: list[str] | None = None) -> dict:
    from bench.common import write_result

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint to serve (default: a tiny model built here)")
    ap.add_argument("--url", help="measure a server already running at this URL instead")
    ap.add_argument("--requests", type=int, default=48, help="requests per route and concurrency")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-seconds", type=float, default=90, help="stop issuing requests of one phase after this")
    ap.add_argument("--server-flags", default="", help="extra `dmlm serve` flags, e.g. '--max-batch 16'")
    ap.add_argument("--quick", action="store_true", help="8 requests per phase (a smoke run for the tests)")
    args = ap.parse_args(argv)
    n = 8 if args.quick else args.requests
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="dmlm-serve-load-") as tmp:
        tmp = Path(tmp)
        proc, clips = None, None
        if args.url:
            url, model_desc = args.url.rstrip("/"), f"a running server at {args.url}"
        else:
            if args.model:
                model, model_desc = Path(args.model), str(Path(args.model).resolve())
            else:
                print("building the tiny model (asr + t2s + vocoder)...", flush=True)
                model, clips = tiny_model(tmp)
                model_desc = ("tiny, built by bench.serve_load.tiny_model like tests/conftest.py's fixtures: "
                              "2-layer d=96 Llama, 16 mel units, 200 steps on 4 sentences, 3-step dim-32 vocoder")
            proc, url = start_server(model, *args.server_flags.split())
        try:
            if clips is None:
                from dmlm.data.synth import Voice, synthesize_many

                clips = [tmp / "clips" / f"c{i}.wav" for i in range(len(SENTENCES))]
                synthesize_many([(t, Voice("en-us+m3", rate=170, pitch=50), c) for t, c in zip(SENTENCES, clips)],
                                workers=2, desc="bench clips")
            audio = [c.read_bytes() for c in clips]
            payloads = {"transcribe": audio, "speak": SENTENCES}
            table: dict[str, list[dict]] = {}
            for route, items in payloads.items():
                table[route] = []
                for c in levels:
                    # warm-up at this concurrency: the first call of a new batch shape is slower (allocations)
                    asyncio.run(load(url, route, items, c, min(n, 2 * c), args.max_seconds))
                    row = asyncio.run(load(url, route, items, c, n, args.max_seconds))
                    table[route].append(row)
                    print(f"{route:10s} c={c:<3d} {row['requests_per_s']:8.2f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                          f"p95 {row['p95_ms']:7.1f} ms  mean batch {row['mean_batch']:5.2f}  errors {row['errors']}",
                          flush=True)
        finally:
            if proc is not None:
                stop_server(proc)

    def ratio(route: str) -> float:
        rows = table[route]
        return rows[-1]["requests_per_s"] / rows[0]["requests_per_s"] if rows[0]["requests_per_s"] else 0.0

    head, base = table["transcribe"][-1], table["transcribe"][0]
    res = write_result(
        "serve_load", f"transcribe requests/s at concurrency {levels[-1]} (dmlm) vs one at a time (baseline)", "requests/s",
        max(head["requests_per_s"], 1e-9), max(base["requests_per_s"], 1e-9), True,
        ratios={r: round(ratio(r), 3) for r in table}, routes=table, requests_per_phase=n, model=model_desc,
        errors=sum(row["errors"] for rows in table.values() for row in rows),
        note="loopback; server (dmlm serve, its own process) and client share the machine's cores")
    print(f"ratio c={levels[-1]} / c={levels[0]}: " + ", ".join(f"{r} {v:.2f}x" for r, v in res["ratios"].items()))
    return res


if __name__ == "__main__":
    main()
