"""Log-magnitude spectrograms and their inversion by fast Griffin-Lim, in plain torch.

Design decisions:
- Spectrograms are log-magnitude STFTs; the vocoder regresses either them or (its default) their
  log-mel envelope (`to_mel`), turned back into a smooth linear envelope by the overlap-weighted
  mean of the bands covering each bin (`from_mel`), not by a pseudo-inverse of the filter bank.
- Inversion is Griffin-Lim with momentum ("fast Griffin-Lim", Perraudin et al. 2013; the
  update torchaudio uses), batched: every clip of a batch runs the same STFT/ISTFT calls,
  padded frames carry zero magnitude and the waveforms are cut to each clip's length.
  It needs no training and is deterministic (zero initial phase). 16 iterations (the default)
  judged as well as 32 by both ASR judges on the demo (docs/experiments.md, "Speech out") at half the cost.
- Magnitudes can be raised to a power > 1 before inversion (Tacotron's trick): it sharpens
  the harmonics a regression model smears and reduces Griffin-Lim's "phasiness".
"""

from __future__ import annotations

import torch

from dmlm.util.audio import SAMPLE_RATE


def _window(n_fft: int, win_length: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(win_length, device=device)


def log_magnitude(wav: torch.Tensor, n_fft: int, hop: int, win_length: int, floor: float = 1e-5) -> torch.Tensor:
    """(..., N) waveform -> (..., N // hop + 1, n_fft // 2 + 1) log-magnitude frames (centered)."""
    shape = wav.shape[:-1]
    spec = torch.stft(wav.reshape(-1, wav.shape[-1]), n_fft, hop, win_length,
                      window=_window(n_fft, win_length, wav.device), return_complex=True)
    out = spec.abs().clamp_min(floor).log().transpose(1, 2)  # (B, T, F)
    return out.reshape(*shape, *out.shape[1:])


def griffin_lim(log_mag: torch.Tensor, n_fft: int, hop: int, win_length: int, n_iter: int = 32,
                momentum: float = 0.99, power: float = 1.0, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, F) log magnitudes -> (B, T * hop) waveforms; `lengths` (B,) frames (the rest is padding)."""
    B, T, F = log_mag.shape
    if F != n_fft // 2 + 1:
        raise ValueError(f"spectrogram has {F} bins, n_fft={n_fft} needs {n_fft // 2 + 1}")
    mag = (log_mag.float() * power).exp().transpose(1, 2)  # (B, F, T)
    if lengths is not None:
        valid = torch.arange(T, device=mag.device)[None] < lengths.to(mag.device)[:, None]
        mag = mag * valid[:, None, :]
    # one silent frame past the end: centered frames 0..T span exactly T * hop samples
    mag = torch.nn.functional.pad(mag, (0, 1))
    win = _window(n_fft, win_length, mag.device)
    n = T * hop

    def istft(x: torch.Tensor) -> torch.Tensor:
        return torch.istft(x, n_fft, hop, win_length, window=win, length=n)

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft, hop, win_length, window=win, return_complex=True)  # (B, F, T + 1)

    angles = torch.ones_like(mag, dtype=torch.complex64)  # zero phase: deterministic
    rebuilt = torch.zeros_like(angles)
    alpha = momentum / (1 + momentum)
    for _ in range(n_iter):
        prev = rebuilt
        rebuilt = stft(istft(mag * angles))
        angles = rebuilt - alpha * prev
        angles = angles / angles.abs().clamp_min(1e-16)
    wav = istft(mag * angles)
    if lengths is not None:
        wav = wav * (torch.arange(n, device=wav.device)[None] < (lengths.to(wav.device) * hop)[:, None])
    return wav


_MEL_CACHE: dict[tuple[int, int], torch.Tensor] = {}


def mel_average(n_fft: int, n_mels: int) -> torch.Tensor:
    """(n_mels, F) triangular mel bands (0-8 kHz), each row normalized to sum 1: band averages."""
    key = (n_fft, n_mels)
    if key not in _MEL_CACHE:
        from transformers.audio_utils import mel_filter_bank

        fb = torch.as_tensor(mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels,
                                             min_frequency=0.0, max_frequency=SAMPLE_RATE / 2,
                                             sampling_rate=SAMPLE_RATE, norm=None, mel_scale="htk"),
                             dtype=torch.float32).T  # (n_mels, F)
        _MEL_CACHE[key] = fb / fb.sum(1, keepdim=True).clamp_min(1e-8)
    return _MEL_CACHE[key]


def to_mel(log_mag: torch.Tensor, n_fft: int, n_mels: int, floor: float = 1e-5) -> torch.Tensor:
    """(..., F) log magnitudes -> (..., n_mels) log mean magnitude per mel band."""
    return (log_mag.exp() @ mel_average(n_fft, n_mels).T.to(log_mag.device)).clamp_min(floor).log()


def from_mel(log_mel: torch.Tensor, n_fft: int, floor: float = 1e-5) -> torch.Tensor:
    """(..., n_mels) log band magnitudes -> (..., F) log magnitudes: each bin is the
    overlap-weighted mean of the bands covering it (a smooth envelope, no harmonics)."""
    fb = mel_average(n_fft, log_mel.shape[-1]).to(log_mel.device)
    w = fb / fb.sum(0, keepdim=True).clamp_min(1e-8)  # (n_mels, F), columns sum to 1
    return (log_mel.exp() @ w).clamp_min(floor).log()
