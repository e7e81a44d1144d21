"""A vocoder's settings, one dataclass per kind: what changing a setting costs is the kind of its field.

Design decisions:
- Five kinds, each its own dataclass, so that a reader sees at once what a setting is for:
  `Architecture` (the network's shape and the spectrogram it regresses: a new value retrains),
  `Training` (how the network is fitted: a new value retrains), `Synthesis` (read only while
  synthesizing: a trained vocoder takes a new value as it is, `Vocoder.update`), `Matching`
  (the size of the matching set: a new value rebuilds the set, not the network) and `Spec`
  (what training found: the codebook it was made for and its voices; training writes these).
- `VocoderConfig` inherits all five, so its fields stay flat: the demo's `vocoder:` block, the
  `vocoder.knn=...` and `dmlm vocoder train knn=...` overrides and every saved `config.json`
  keep the keys they had. The kind of a field is the class that declares it (`kind_of`).
- A setting measured as not helping is removed; a vocoder saved with it at its neutral value
  still loads (`REMOVED_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from dmlm.util.audio import SAMPLE_RATE
from dmlm.util.errors import UserError
from dmlm.vocoder.spectrogram import from_mel, to_mel


@dataclass
class Architecture:
    """The network's shape and the spectrogram it regresses: a new value needs a new network."""

    dim: int = 256
    """Channels of the unit-rate layers (and the unit embedding)."""
    unit_layers: int = 6
    """Residual conv blocks at the unit rate (dilations 1, 2, 4, 1, 2, 4, ...)."""
    frame_dim: int = 256
    """Channels at the spectrogram rate (the per-frame output projection, and frame_layers)."""
    frame_layers: int = 0
    """Residual conv blocks at the spectrogram rate (dilations 1, 2, 1, 2, ...)."""
    kernel: int = 5
    """Convolution width (odd)."""
    dropout: float = 0.1
    """Dropout inside the residual blocks during training."""
    duration_dim: int = 128
    """Channels of the duration predictor (used only for codebooks that deduplicate units)."""
    target: str = "mel"
    """What the network regresses: linear (log-magnitude STFT bins) or mel (log band magnitudes, n_mels)."""
    n_mels: int = 80
    """Mel bands for target=mel (inverted to a smooth linear envelope before Griffin-Lim)."""
    n_fft: int = 512
    """STFT size of the target spectrogram (n_fft // 2 + 1 bins)."""
    hop: int = 160
    """STFT hop in samples at the 16 kHz sample rate (160 = 100 frames/s); sample rate / hop must be a
    multiple of the codebook's frame rate."""
    win_length: int = 512
    """STFT window (Hann) in samples."""


@dataclass
class Synthesis:
    """Read only while synthesizing: a trained vocoder takes new values without retraining."""

    gl_iters: int = 16
    """Griffin-Lim iterations at synthesis (16 judged as well as 32 on the demo, at half the cost)."""
    gl_momentum: float = 0.99
    """Fast Griffin-Lim momentum (0: classic Griffin-Lim)."""
    gl_power: float = 1.2
    """Magnitudes are raised to this power before inversion (> 1 sharpens harmonics)."""
    knn: int = 8
    """Replace each predicted frame by the mean of its knn nearest real frames of the same unit (the
    matching set of the output voice); 0: the network's frames as they are."""
    knn_context: int = 2
    """Frames on each side of a frame (`knn_stride` apart) that take part in its match: the real frame
    whose surroundings also look like the prediction's wins (0: the frame alone)."""
    knn_stride: int = 2
    """Spectrogram frames between the context frames of a match (2 = 20 ms at hop 160)."""


@dataclass
class Matching:
    """The matching set's size: a new value rebuilds the set (seconds), not the network."""

    matching_clips: int = 4000
    """Training clips of the output voice whose frames form the matching set for `knn` (0: none)."""


@dataclass
class Training:
    """How the network is fitted: a new value needs a new training run."""

    centroid_init: bool = True
    """Start the unit embeddings from the codebook's centroids (PCA to `dim`): similar units start similar."""
    table_clips: int = 4000
    """Clips averaged into the per-unit mean spectrogram the network starts from (0: no table, the net alone)."""
    cache_gb: float = 2.0
    """Memory for training targets kept between steps (float16 spectrograms, filled as clips are first
    loaded): a clip in the cache costs no wav read and no STFT again (0: recompute every time)."""
    batch_size: int = 16
    """Clips per step."""
    precision: str = "fp32"
    """Training matmuls/convolutions: fp32, bf16 (autocast; the loss and the optimizer stay fp32), or auto
    (bf16 on a GPU or a CPU oneDNN runs bf16 on, else fp32). On the demo's 2-core CPU bf16 runs 1.4x the
    steps of fp32 in the same minutes."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warmup, cosine decay to 10 %)."""
    warmup: float = 0.05
    """Fraction of training (by steps or by time, whichever bound is nearer) spent in linear warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_seconds: float = 8.0
    """Training clips are cut to a random window of at most this many seconds."""
    speakers: list[str] | None = None
    """Train only on records of these speakers (None: all). A single voice gives a sharper, consistent output voice."""
    seed: int = 0
    """Seed for init, data order and crops."""
    speaker_conditioning: bool = True
    """Learn one embedding per training speaker and synthesize in one fixed voice per language (`voice`,
    `voice_by_lang`) instead of the average of all."""


@dataclass
class Spec:
    """What the vocoder was made for: training writes these (a user's `voice` is kept if it is a training speaker)."""

    codebook_fingerprint: str | None = None
    """Fingerprint of the speech codebook the vocoder was trained for."""
    k: int = 0
    """Units in that codebook."""
    frame_rate: float = 25.0
    """That codebook's units per second (before deduplication)."""
    dedup: bool = False
    """Whether that codebook deduplicates units (then the duration predictor is used)."""
    voices: list[str] | None = None
    """Training speakers, in embedding order (speaker_conditioning only)."""
    voice: str | None = None
    """Default voice for synthesis: the training speaker with most clips (speaker_conditioning only)."""
    voice_by_lang: dict[str, str] = field(default_factory=dict)
    """Default voice of each language (a record without `lang` is "en"): its training speaker with most clips, `voice`
    for the language `voice` speaks most; synthesis in a language speaks its voice (speaker_conditioning only; absent
    in a vocoder saved before it: every language speaks `voice`)."""


KINDS: dict[str, type] = {"architecture": Architecture, "synthesis": Synthesis, "matching": Matching,
                          "training": Training, "spec": Spec}
"""Each kind of setting and the dataclass that declares its fields."""

RETRAIN_KINDS = ("architecture", "training")
"""The kinds whose settings a trained network depends on."""

REMOVED_FIELDS = {"unit_noise": 0.0}
"""Former settings and their neutral values (docs/experiments.md, "Speech out": no gain measured)."""

ADDED_FIELDS = {"voice_by_lang": {}}
"""Settings newer than saved vocoders, and the value their absence means: written only when they differ from it,
so a vocoder saved before them is saved again under the keys it had."""


def kind_of(name: str) -> str:
    """The kind of the VocoderConfig field `name` (a key of `KINDS`)."""
    for kind, cls in KINDS.items():
        if name in {f.name for f in fields(cls)}:
            return kind
    raise KeyError(f"{name!r} is not a vocoder setting")


@dataclass
class VocoderConfig(Spec, Training, Matching, Synthesis, Architecture):
    """Every vocoder setting, flat (fields in the order architecture, synthesis, matching, training,
    spec); `kind_of(name)` says which kind a field is."""

    def changed_settings(self, saved: dict, *kinds: str) -> list[str]:
        """Sorted names of the settings of these kinds (default: those the network depends on,
        `RETRAIN_KINDS`) whose value differs from a saved config.json's (a missing key: its default)."""
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        names = [f.name for kind in (kinds or RETRAIN_KINDS) for f in fields(KINDS[kind])]
        return sorted(n for n in names if saved.get(n, getattr(VocoderConfig, n)) != getattr(self, n))

    @property
    def n_bins(self) -> int:
        """Channels the network predicts per frame."""
        if self.target not in ("linear", "mel"):
            raise UserError(f"vocoder target must be linear or mel, got {self.target!r}")
        return self.n_mels if self.target == "mel" else self.n_fft // 2 + 1

    def to_target(self, log_mag: torch.Tensor) -> torch.Tensor:
        """(..., n_fft // 2 + 1) log magnitudes -> (..., n_bins) training target."""
        return to_mel(log_mag, self.n_fft, self.n_mels) if self.target == "mel" else log_mag

    def to_log_magnitude(self, pred: torch.Tensor) -> torch.Tensor:
        """(..., n_bins) network output -> (..., n_fft // 2 + 1) log magnitudes for Griffin-Lim."""
        return from_mel(pred, self.n_fft) if self.target == "mel" else pred

    @property
    def upsample(self) -> int:
        """Spectrogram frames per codebook frame."""
        r = SAMPLE_RATE / self.hop / self.frame_rate
        if r < 1 or abs(r - round(r)) > 1e-6:
            raise UserError(f"{SAMPLE_RATE} / hop ({self.hop}) = {SAMPLE_RATE / self.hop:g} frames/s is not a whole "
                             f"multiple of the codebook's {self.frame_rate:g} units/s; pick another hop")
        return int(round(r))

    @classmethod
    def from_dict(cls, d: dict) -> VocoderConfig:
        """The settings of a saved config.json (its `format_version` and `training` record ignored)."""
        known = {f.name for f in fields(cls)}
        # settings measured as not helping were removed; a vocoder saved at their neutral value loads as before
        d = {k: v for k, v in d.items() if not (k in REMOVED_FIELDS and v == REMOVED_FIELDS[k])}
        unknown = set(d) - known - {"format_version", "training"}
        if unknown:
            raise UserError(f"unknown vocoder config fields {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})
