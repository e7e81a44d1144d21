"""Frame features for the speech codebook: Whisper encoder activations or log-mel frames.

Design decisions:
- Whisper runs on each clip's **own length**, not padded to 30 s: the encoder's positional
  embeddings are sliced to the clip. Clips are batched by length; within a batch each clip's
  audio is zero-padded to a multiple of `pad_quantum` seconds, the same way Whisper itself
  pads audio, and its output is sliced back to its own frames. Because the padding of a clip
  depends only on its own length, a clip's features do not depend on its batch mates:
  tokenization is deterministic whatever the batch size.
- Clips longer than the encoder's window (`WHISPER_SECONDS` = 30 s, 1500 positions) are cut into
  consecutive, non-overlapping 30 s windows (the last one shorter), each encoded as a clip of
  its own, and their frames concatenated in order: a 35 s LibriSpeech utterance gives 1500 + 250
  frames, as many as one pass would. No overlap, so no frame is counted twice; the cost is that
  frames at a window edge see no context across it. (The codebook's later stages, pooling and
  assignment, are per frame, so units of windowed clips concatenate the same way.)
- Two Whisper engines give the same features: CTranslate2 (fast, int8, last layer only) and
  `transformers` (any layer). The backend name in the codebook records which one made it.
- `mel`: 80 log-mel bins at 100 Hz, stacked in pairs to 160 dims at 50 Hz (Whisper's encoder
  frame rate), a codebook baseline that needs no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch

from dmlm.util.audio import SAMPLE_RATE
from dmlm.util.errors import UserError

HOP = 160  # 10 ms mel hop; Whisper encoder frames are 2 hops = 20 ms
N_FFT = 400
WHISPER_SECONDS = 30  # Whisper's encoder input: 30 s of audio, 1500 positions
WHISPER_SAMPLES = WHISPER_SECONDS * SAMPLE_RATE


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(fb, dtype=np.float32)).T.contiguous()  # (n_mels, F)


def log_mel(wav: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel spectrogram of one clip at its own length; (n_mels, len // 160)."""
    x = torch.as_tensor(wav, dtype=torch.float32)
    stft = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = stft[..., :-1].abs() ** 2  # (F, T)
    mel = _mel_filters(n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def n_frames(n_samples: int) -> int:
    """Encoder frames (50 Hz) for a clip of `n_samples` at 16 kHz."""
    return max(1, (n_samples // HOP + 1) // 2)


class FeatureExtractor(Protocol):
    name: str
    dim: int
    frame_rate: float

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per clip (T_i, dim) float32 features."""
        ...

    def settings(self) -> dict: ...


def _pad_to_quantum(wav: np.ndarray, quantum_s: float) -> np.ndarray:
    """Zero-padded to a multiple of `quantum_s`, but never past the encoder's window."""
    q = int(quantum_s * SAMPLE_RATE)
    target = max(q, math.ceil(len(wav) / q) * q)
    if len(wav) <= WHISPER_SAMPLES:
        target = min(target, WHISPER_SAMPLES)
    return np.pad(wav, (0, target - len(wav)))


def windows(wav: np.ndarray) -> list[np.ndarray]:
    """`wav` cut into consecutive non-overlapping `WHISPER_SECONDS` windows (one, for a clip that fits)."""
    n = WHISPER_SAMPLES
    return [wav[i : i + n] for i in range(0, max(len(wav), 1), n)]


class _WhisperBase:
    frame_rate = 50.0

    def __init__(self, model: str, layer: int, pad_quantum: float, batch_size: int):
        self.model, self.layer, self.pad_quantum, self.batch_size = model, layer, pad_quantum, batch_size

    def _encode_batch(self, mels: torch.Tensor) -> np.ndarray:  # (B, 80, T) -> (B, T/2, D)
        raise NotImplementedError

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        for k, w in enumerate(wavs):  # a clip past the window: its windows, encoded as clips of their own
            for piece in windows(w):
                pieces.append(piece)
                owner.append(k)
        parts: list[list[np.ndarray]] = [[] for _ in wavs]
        for k, f in zip(owner, self._encode_clips(pieces)):
            parts[k].append(f)
        return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]

    def _encode_clips(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features of clips that each fit the encoder's window."""
        padded = [_pad_to_quantum(w, self.pad_quantum) for w in wavs]
        order = sorted(range(len(wavs)), key=lambda i: len(padded[i]))
        out: list[np.ndarray | None] = [None] * len(wavs)
        i = 0
        while i < len(order):
            # a batch holds clips of one padded length only, so nobody's features see extra padding
            j = i
            while j < len(order) and j - i < self.batch_size and len(padded[order[j]]) == len(padded[order[i]]):
                j += 1
            idx = order[i:j]
            mels = torch.stack([log_mel(padded[k], self.n_mels) for k in idx])
            feats = self._encode_batch(mels)
            for row, k in enumerate(idx):
                out[k] = np.ascontiguousarray(feats[row, : n_frames(len(wavs[k]))], dtype=np.float32)
            i = j
        return out  # type: ignore[return-value]

    def settings(self) -> dict:
        return {"backend": self.name, "model": self.model, "layer": self.layer, "frame_rate": self.frame_rate,
                "pad_quantum": self.pad_quantum}


class WhisperCT2Features(_WhisperBase):
    """Last-layer Whisper encoder output through CTranslate2 (int8 by default)."""

    name = "whisper"

    def __init__(self, model: str = "whisper-base", layer: int = -1, compute_type: str = "int8",
                 pad_quantum: float = 0.5, batch_size: int = 16, threads: int = 0):
        if layer != -1:
            raise UserError(f"the CTranslate2 Whisper engine gives the last layer only (got layer={layer}); "
                             "use backend 'whisper-hf' for other layers")
        super().__init__(model, layer, pad_quantum, batch_size)
        import ctranslate2

        from dmlm.util.assets import whisper_ct2_dir

        path = whisper_ct2_dir(model)
        self.compute_type = compute_type
        self._model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type=compute_type,
                                                 intra_threads=threads or torch.get_num_threads())
        self.n_mels = self._model.n_mels
        self.dim = None  # known after the first batch
        self._path = path

    def _encode_batch(self, mels: torch.Tensor) -> np.ndarray:
        import ctranslate2

        out = np.asarray(self._model.encode(ctranslate2.StorageView.from_array(mels.numpy())))
        self.dim = out.shape[-1]
        return out

    def settings(self) -> dict:
        return {**super().settings(), "engine": "ctranslate2", "compute_type": self.compute_type}


class WhisperHFFeatures(_WhisperBase):
    """Whisper encoder activations at any layer through `transformers` (fp32).

    layer = -1 (or N) is the final layer-normed output (what CTranslate2 gives); 1..N-1 are
    the residual stream after that block.
    """

    name = "whisper-hf"

    def __init__(self, model: str = "whisper-base", layer: int = -1, pad_quantum: float = 0.5,
                 batch_size: int = 16, device: str = "cpu"):
        super().__init__(model, layer, pad_quantum, batch_size)
        from transformers import WhisperModel

        from dmlm.util.assets import whisper_hf_dir

        enc = WhisperModel.from_pretrained(whisper_hf_dir(model)).get_encoder().eval().to(device)
        n_layers = len(enc.layers)
        if not (layer == -1 or 1 <= layer <= n_layers):
            raise UserError(f"layer must be -1 or 1..{n_layers} for {model}, got {layer}")
        self._enc, self._n_layers, self.device = enc, n_layers, device
        self.n_mels = enc.config.num_mel_bins
        self.dim = enc.config.d_model

    @torch.inference_mode()
    def _encode_batch(self, mels: torch.Tensor) -> np.ndarray:
        enc = self._enc
        x = torch.nn.functional.gelu(enc.conv1(mels.to(self.device)))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)  # (B, T, D)
        x = x + enc.embed_positions.weight[: x.shape[1]]  # own length: slice the positions
        last = self._n_layers if self.layer == -1 else self.layer
        for layer in enc.layers[:last]:
            x = layer(x, None)
        if last == self._n_layers:
            x = enc.layer_norm(x)
        return x.float().cpu().numpy()


@dataclass
class MelFeatures:
    """Log-mel frames stacked in pairs (50 Hz, 2 × n_mels dims): a model-free baseline."""

    n_mels: int = 80
    name: str = "mel"
    frame_rate: float = 50.0

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for w in wavs:
            m = log_mel(w, self.n_mels).T  # (T, n_mels)
            if m.shape[0] % 2:
                m = torch.cat([m, m[-1:]])
            out.append(m.reshape(-1, 2 * self.n_mels).numpy().astype(np.float32))
        return out

    def settings(self) -> dict:
        return {"backend": "mel", "model": None, "layer": None, "frame_rate": self.frame_rate, "n_mels": self.n_mels}


BACKENDS = ("whisper", "whisper-hf", "mel")


def build_features(backend: str, model: str = "whisper-base", layer: int = -1, **kw) -> FeatureExtractor:
    """The feature extractor named by a codebook's settings."""
    if backend == "whisper":
        return WhisperCT2Features(model, layer, **{k: v for k, v in kw.items() if k in ("compute_type", "pad_quantum", "batch_size", "threads")})
    if backend == "whisper-hf":
        return WhisperHFFeatures(model, layer, **{k: v for k, v in kw.items() if k in ("pad_quantum", "batch_size", "device")})
    if backend == "mel":
        return MelFeatures(**{k: v for k, v in kw.items() if k in ("n_mels",)})
    raise UserError(f"unknown speech feature backend {backend!r}; expected one of {BACKENDS}")
