"""`dmlm serve` as a real process on loopback, used the way people and programs use it:

- the page in headless Chromium (Debian's `chromium`, driven by Playwright with the system
  browser): upload a wav, record from a (fake) microphone, type a sentence, upload an image;
  the texts appear, the audio element holds a playable wav; a screenshot is saved (to
  $DMLM_SERVE_SCREENSHOT as well, when set: that is how docs/serve.png is made);
- the official `openai` client pointed at `base_url=http://127.0.0.1:PORT/v1`;
- a bounded load (200 requests at concurrency 16): no errors, batches form, the server's RSS
  grows by less than `RSS_BOUND`, no temporary file is left;
- `bench.serve_load --quick` against the same server;
- SIGTERM while requests wait in a batch queue: each still gets its answer, then the server
  stops (uvicorn exits by the signal it caught, status -15, after a clean shutdown).

The model is the tests' tiny every-task model with a 3-step vocoder (conftest's `speaking_model`).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from bench.serve_load import load, server_log, start_server, stop_server

RSS_BOUND = 48 * 2**20
"""Most the server's resident memory may grow over 200 requests after a warm-up of 48."""


@pytest.fixture(scope="module")
def rec(first_record):
    return first_record


@pytest.fixture(scope="module")
def server(speaking_model, tmp_path_factory):
    """(url, process, its TMPDIR) of `dmlm serve` on the model; stopped with SIGTERM."""
    tmp = tmp_path_factory.mktemp("serve_tmpdir")
    proc, url = start_server(speaking_model, "--max-wait-ms", "20", "--log-level", "info",
                             env={**os.environ, "TMPDIR": str(tmp)})
    yield url, proc, tmp
    if proc.poll() is None:  # the SIGTERM test stops it; a run of only some tests does not
        stop_server(proc)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the browser test needs Debian's chromium: run `make sysdeps` (apt-get install chromium)")
    return path


def test_the_page_in_a_browser(server, rec, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _, _ = server
    wav, text, es, image = rec
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        try:
            ctx = browser.new_context(viewport={"width": 1000, "height": 1000})
            ctx.grant_permissions(["microphone"], origin=url)
            page = ctx.new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            expect(page.locator("#model-line")).to_contain_text("asr")

            def answered(action) -> None:
                """Run `action`, then wait until both speech results are new (their timings changed)."""
                before = page.evaluate("[...document.querySelectorAll('#speech-in .time')].map(e => e.textContent)")
                action()
                page.wait_for_function(f"""(b => [...document.querySelectorAll('#speech-in .time')]
                    .every((e, i) => e.textContent && e.textContent !== b[i]))({before!r})""", timeout=20_000)

            # a file -> transcript and translation, each with its time
            answered(lambda: page.set_input_files("#audio-file", str(wav)))
            expect(page.locator("#transcript")).to_have_text(text)
            expect(page.locator("#translation")).to_have_text(es)
            expect(page.locator("#transcript-time")).to_contain_text(" ms")

            # the microphone (Chromium's fake device: a beep) -> a wav recorded by the page -> a transcript
            page.click("#record")
            expect(page.locator("#record")).to_have_text("■ Stop")
            page.wait_for_timeout(1200)
            answered(lambda: page.click("#record"))
            recorded = float(page.locator("#transcript-time").inner_text().split("ms, batch of 1, ")[1].split(" s")[0])
            assert 0.8 < recorded < 5, recorded

            # text -> speech in the audio player, and a download link to the same wav
            page.fill("#speak-text", text)
            page.click("#speak-button")
            page.wait_for_function("(a => a.readyState >= 1 && a.duration > 0.1)(document.getElementById('speech'))",
                                   timeout=30_000)
            head = page.evaluate("""async () => {
                const a = document.getElementById('speech');
                const bytes = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
                return [String.fromCharCode(...bytes.slice(0, 4)), bytes.length, a.duration,
                        document.getElementById('speech-download').href === a.src]; }""")
            assert head[0] == "RIFF" and head[1] > 1000 and head[2] > 0.1 and head[3], head
            expect(page.locator("#speech-time")).to_contain_text("s of speech")

            # a clip -> its translation, spoken (the model's one way: the cascade into Spanish)
            assert page.locator("#s2st-how option").all_inner_texts() == ["cascade"]
            assert page.locator("#s2st-to option").all_inner_texts() == ["es"]
            page.set_input_files("#s2st-file", str(wav))
            page.wait_for_function("(a => a.readyState >= 1 && a.duration > 0.1)(document.getElementById('s2st-speech'))",
                                   timeout=30_000)
            expect(page.locator("#s2st-time")).to_contain_text("→ es cascade")
            assert page.evaluate("""async () => {
                const a = document.getElementById('s2st-download');
                return String.fromCharCode(...new Uint8Array(await (await fetch(a.href)).arrayBuffer()).slice(0, 4));
                }""") == "RIFF"

            # an image -> its caption
            page.set_input_files("#image-file", str(image))
            expect(page.locator("#caption")).to_have_text(text, timeout=20_000)
            expect(page.locator("#caption-time")).to_contain_text(" ms")
            # the last results are the beep's; the clip's again for the picture
            answered(lambda: page.set_input_files("#audio-file", str(wav)))
            expect(page.locator("#transcript")).to_have_text(text)
            expect(page.locator("#translation")).to_have_text(es)
            assert page.locator("#error").is_hidden()

            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("DMLM_SERVE_SCREENSHOT"):
                shutil.copy(shot, os.environ["DMLM_SERVE_SCREENSHOT"])
        finally:
            browser.close()
    assert not problems, problems


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client flags translations.create
def test_the_openai_client_works_unchanged(server, rec):
    import openai

    url, _, _ = server
    wav, text, es, _ = rec
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [mm.id for mm in client.models.list()] == ["dmlm"]
    with open(wav, "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text == text
    with open(wav, "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text").strip() == text
    with open(wav, "rb") as f:
        verbose = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
    assert verbose.text == text and verbose.language == "en" and verbose.duration == pytest.approx(sf.info(wav).duration, abs=0.01)
    assert verbose.segments[0].end == verbose.duration
    with open(wav, "rb") as f:
        assert client.audio.translations.create(model="whisper-1", file=f, extra_body={"to": "es"}).text == es
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="wav")
    samples, rate = sf.read(io.BytesIO(speech.content))
    assert rate == 16000 and len(samples) / rate > 0.1
    mp3 = client.audio.speech.create(model="tts-1", voice="alloy", input=text)  # OpenAI's default format: mp3
    samples, rate = sf.read(io.BytesIO(mp3.content))
    assert rate == 16000 and len(samples) / rate > 0.1
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="aac")
    with pytest.raises(openai.UnprocessableEntityError, match="input"):
        client.audio.speech.create(model="tts-1", voice="alloy", input=None)  # type: ignore[arg-type]


def test_bounded_load_has_no_errors_and_bounded_memory(server, rec):
    import asyncio

    import psutil

    url, proc, tmp = server
    wav, text, _, _ = rec
    clip = [wav.read_bytes()]

    async def mixed(n_transcribe: int, n_speak: int) -> list[dict]:
        # 12 transcribing and 4 speaking clients at once: concurrency 16
        return await asyncio.gather(load(url, "transcribe", clip, 12, n_transcribe, 120),
                                    load(url, "speak", [text], 4, n_speak, 120))

    rss = psutil.Process(proc.pid).memory_info().rss
    warm = asyncio.run(mixed(40, 8))
    after_warmup = psutil.Process(proc.pid).memory_info().rss
    rows = asyncio.run(mixed(160, 40))
    end = psutil.Process(proc.pid).memory_info().rss
    assert sum(r["requests"] for r in rows) == 200 and not any(r["errors"] for r in rows + warm), rows
    assert end - after_warmup < RSS_BOUND, f"RSS grew {(end - after_warmup) / 2**20:.1f} MiB over 200 requests"
    assert max(r["mean_batch"] for r in rows) > 1.5  # concurrent requests did share model calls
    h = httpx.get(url + "/health").json()["batching"]
    assert h["largest"] > 1 and h["calls"] < 248
    assert list(Path(tmp).iterdir()) == []  # no temporary file left
    print(f"RSS {rss / 2**20:.0f} -> {after_warmup / 2**20:.0f} (warm) -> {end / 2**20:.0f} MiB; {rows}")


def test_bench_quick_against_the_server(server, tmp_path, monkeypatch):
    import json

    import bench.common
    from bench import serve_load

    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    url, _, _ = server
    res = serve_load.main(["--quick", "--url", url, "--concurrency", "1,4"])
    saved = json.loads((tmp_path / "serve_load.json").read_text())
    assert saved["ratio"] == pytest.approx(saved["dmlm"] / saved["baseline"]) and saved["errors"] == 0
    assert set(saved["ratios"]) == {"transcribe", "speak"} and res["ratios"] == saved["ratios"]
    for rows in saved["routes"].values():
        assert [r["concurrency"] for r in rows] == [1, 4] and all(r["requests"] == 8 for r in rows)
        assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)


def test_sigterm_lets_the_requests_in_flight_finish(server, rec):
    """Last in the file: it stops the module's server. SIGTERM arrives while requests wait in a
    batch queue behind a running batch; each of them still gets its wav, then the server exits."""
    url, proc, _ = server
    _, text, _, _ = rec
    answers: list = []

    def ask() -> None:
        try:
            r = httpx.post(url + "/v1/speak", json={"text": text}, timeout=120)
            answers.append((r.status_code, r.content[:4]))
        except httpx.ConnectError:  # sent after the listener closed: never in flight
            answers.append("refused")

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for t in threads:
        t.start()
    deadline, queued = time.monotonic() + 30, 0
    while not queued:
        assert time.monotonic() < deadline, "no request ever waited in a queue"
        queued = httpx.get(url + "/health").json()["batching"]["pending"]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    done = [a for a in answers if a != "refused"]
    assert len(answers) == 12 and len(done) >= queued and set(done) == {(200, b"RIFF")}, answers
    assert proc.wait(60) == -signal.SIGTERM  # after a clean shutdown uvicorn exits by the signal it caught
    log = server_log(proc)
    assert "Waiting for connections to close" in log and "Finished server process" in log, log[-2000:]
    assert "Traceback" not in log, log[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
