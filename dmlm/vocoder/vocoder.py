"""The `Vocoder` object: a trained network, its settings and its matching set; units in, 16 kHz waveform out.

Design decisions (the whole design: `dmlm.vocoder`):
- Synthesis: deduplicated units are expanded by predicted durations, the network predicts a log
  spectrogram, each frame is matched to real frames of the output voice (`knn`, the matching set),
  the envelope is inverted by Griffin-Lim (`dmlm.vocoder.spectrogram`) and peak-normalized
  (never clipped, never amplified past 0.9 / peak). Clips are batched by length.
- The output voice is fixed (`voice`, a training speaker) and never depends on the input's voice; a
  vocoder trained on several languages speaks each in a voice of that language (`voice_by_lang`,
  `voice_for`): Spanish units said by an English voice would be another accent, not the translation.
- A vocoder is tied to the codebook it was trained for: its config records the codebook's
  fingerprint, k and frame rate, and `check` / `load(codebook=...)` raise `CodebookMismatch`.
- Saving is atomic (a temp folder renamed into place). After training only synthesis and
  matching settings change, through `update`, which rewrites the saved config atomically
  (`dmlm.vocoder.files`): no caller edits `config.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dmlm.tokenizers.speech import CodebookMismatch
from dmlm.util.audio import SAMPLE_RATE
from dmlm.util.errors import UserError
from dmlm.vocoder.config import VocoderConfig
from dmlm.vocoder.files import VocoderFiles
from dmlm.vocoder.matching import MatchingSet
from dmlm.vocoder.network import UnitToSpec, pad_batch
from dmlm.vocoder.spectrogram import griffin_lim


class Vocoder:
    """A trained unit vocoder: `synthesize(units) -> float32 16 kHz waveform`."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: VocoderConfig, net: UnitToSpec | None = None, matching: MatchingSet | None = None):
        if cfg.k <= 0:
            raise ValueError("VocoderConfig.k (the codebook size) must be set")
        self.cfg = cfg
        self.net = (net or UnitToSpec(cfg)).eval()
        self.matching = matching
        self.folder: Path | None = None  # where it was loaded from or saved to: what `update` rewrites

    # -- persistence -----------------------------------------------------------------------
    def save(self, out_dir: str | Path, record: dict | None = None) -> Path:
        """Write `config.json` (with the training `record`), `model.safetensors` and the matching
        set through a temp folder renamed into place."""
        from safetensors.torch import save_file

        from dmlm.util.io import atomic_dir, fault_point

        files = VocoderFiles(out_dir)
        files.finish_interrupted_save()
        # fault points (crash tests): vocoder-weights inside the write, vocoder-commit (complete, not in
        # place) and vocoder-swap (between the renames); the config is written last: complete
        with atomic_dir(files.folder, stage=lambda name: fault_point(f"vocoder-{name}"), what="vocoder") as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()},
                      str(tmp / files.weights_path.name))
            fault_point("vocoder-weights")
            if self.matching is not None:
                self.matching.save(tmp)
            files.write_config(self.cfg, record, folder=tmp)
        self.folder = files.folder
        return files.folder

    @classmethod
    def load(cls, path: str | Path, codebook=None, device: str = "cpu", matching: bool = True) -> Vocoder:
        """Load a vocoder folder; check it against `codebook`.
        `matching=False` skips its matching set (for a caller about to replace it)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        files = VocoderFiles(path)
        files.require()
        cfg = files.config()
        name = files.matching_path
        try:  # a truncated or damaged file: one line naming it, not safetensors' traceback
            match = MatchingSet.load(files.folder) if matching else None
            name = files.weights_path
            weights = load_file(str(files.weights_path))
        except SafetensorError as e:
            raise UserError(f"{name}: cannot read it ({e}); the file is truncated or damaged") from None
        voc = cls(cfg, matching=match)
        voc.net.load_state_dict(weights)
        voc.net.to(device)
        voc.folder = files.folder
        if codebook is not None:
            voc.check(codebook)
        return voc

    def update(self, **settings) -> dict:
        """New synthesis (or matching) settings, e.g. `update(knn=4, gl_iters=32)`: written into the
        saved `config.json` atomically and taken at once; returns those that changed. A setting of
        another kind is refused (it needs a new network). A new `matching_clips` drops the matching
        set (built from the old count): rebuild it with `dmlm.vocoder.add_matching_set`."""
        if self.folder is None:
            raise ValueError("this vocoder was neither loaded nor saved: there is no config to update")
        new = VocoderFiles(self.folder).update(**settings)
        self.cfg = replace(self.cfg, **new)
        if "matching_clips" in new:
            self.matching = None
        return new

    def check(self, codebook) -> None:
        """Raise `CodebookMismatch` unless this vocoder was trained for `codebook`."""
        if codebook.fingerprint != self.cfg.codebook_fingerprint:
            raise CodebookMismatch(
                f"the vocoder was trained for speech codebook {self.cfg.codebook_fingerprint}, "
                f"but the codebook given is {codebook.fingerprint}; train a vocoder for this codebook "
                "(`dmlm vocoder train`)")

    # -- synthesis -------------------------------------------------------------------------
    def _validate(self, units: Sequence[int] | np.ndarray, i: int | None = None) -> np.ndarray:
        what = "unit sequence" if i is None else f"unit sequence {i}"
        u = np.asarray(units)
        if u.ndim != 1:
            raise UserError(f"{what}: expected a 1-D sequence of unit ids, got shape {u.shape}")
        if len(u) == 0:
            raise UserError(f"{what} is empty: nothing to synthesize")
        if not np.issubdtype(u.dtype, np.integer):
            raise UserError(f"{what}: unit ids must be integers, got dtype {u.dtype}")
        bad = u[(u < 0) | (u >= self.cfg.k)]
        if len(bad):
            raise UserError(f"{what}: unit id {int(bad[0])} is outside [0, {self.cfg.k}) "
                             f"(the codebook has k={self.cfg.k})")
        return u.astype(np.int64)

    @torch.inference_mode()
    def expand(self, seqs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Deduplicated units -> units at the codebook frame rate, by predicted durations."""
        if self.net.duration is None:
            return list(seqs)
        dev = self.net.emb.weight.device
        ids, mask = pad_batch(seqs)
        logd = self.net.duration(ids.to(dev), mask.to(dev)).cpu()
        out = []
        for s, ld in zip(seqs, logd):
            d = np.clip(np.rint(np.exp(ld[: len(s)].numpy())), 1, None).astype(np.int64)
            out.append(np.repeat(s, d))
        return out

    @property
    def voice(self) -> str | None:
        """The voice it speaks by default (None for a vocoder trained without speaker_conditioning)."""
        return self.cfg.voice if self.cfg.speaker_conditioning else None

    def voice_for(self, lang: str | None = None, voice: str | None = None) -> str | None:
        """The voice synthesis speaks in: `voice` if given (checked: a training speaker), else the default
        voice of `lang` if training saw that language (`cfg.voice_by_lang`), else `self.voice`."""
        if voice is not None:
            self.speaker_id(voice)  # an unknown voice, or any voice for an unconditioned vocoder: an error now
            return voice
        if self.voice is None:
            return None
        return self.cfg.voice_by_lang.get(lang, self.voice) if lang else self.voice

    @torch.inference_mode()
    def speaker_id(self, voice: str | None) -> int | None:
        """Embedding row of `voice` (default: the config's voice); None for an unconditioned vocoder."""
        if self.net.speaker is None:
            if voice is not None:
                raise UserError("this vocoder has no voices to choose from (trained without speaker_conditioning)")
            return None
        voice = voice or self.cfg.voice
        if voice not in self.cfg.voices:
            raise UserError(f"unknown voice {voice!r}; this vocoder knows {', '.join(self.cfg.voices)}")
        return self.cfg.voices.index(voice)

    @torch.inference_mode()
    def spectrogram_batch(self, seqs: Sequence[np.ndarray],
                          voice: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Units (frame-rate, already expanded) -> (B, T*r, bins) network output and (B,) frame counts."""
        dev = self.net.emb.weight.device
        ids, mask = pad_batch(seqs)
        sid = self.speaker_id(voice)
        spk = None if sid is None else torch.full((len(seqs),), sid, dtype=torch.long, device=dev)
        spec = self.net(ids.to(dev), mask.to(dev), spk)
        return spec, mask.sum(1) * self.net.r

    @torch.inference_mode()
    def refine(self, spec: torch.Tensor, seqs: Sequence[np.ndarray], voice: str | None = None) -> torch.Tensor:
        """(B, T*r, bins) network output -> the same with each clip's frames matched to real ones
        (`cfg.knn`); unchanged without a matching set, with knn=0 or for a voice other than the set's."""
        m = self.matching
        # a set saved without its voice's name (older vocoders) is the default voice's
        if not self.cfg.knn or m is None or voice not in (None, m.voice or self.voice):
            return spec
        out = spec.float().clone()
        lengths = torch.as_tensor([len(s) for s in seqs]) * self.net.r
        valid = torch.arange(out.shape[1])[None] < lengths[:, None]  # (B, T*r): the clips' own frames, in clip order
        units = torch.as_tensor(np.concatenate([np.repeat(np.asarray(s, dtype=np.int64), self.net.r) for s in seqs]))
        out[valid.to(out.device)] = m.refine(out[valid.to(out.device)], units.to(out.device), self.cfg.knn,
                                             self.cfg.knn_context, self.cfg.knn_stride, lengths.tolist())
        return out

    @torch.inference_mode()
    def synthesize_batch(self, batch: Sequence[Sequence[int]], batch_size: int = 16,
                         voice: str | None = None, lang: str | None = None) -> list[np.ndarray]:
        """Each unit sequence -> float32 16 kHz waveform of len(units_expanded) / frame_rate seconds.
        `voice`: a training speaker of a speaker-conditioned vocoder; default: the voice of `lang`, the
        language the units speak (`voice_for`)."""
        if isinstance(batch, np.ndarray) and batch.ndim == 1:
            raise ValueError("synthesize_batch takes a list of unit sequences; use synthesize for one")
        voice = self.voice_for(lang, voice)
        seqs = [self._validate(u, i) for i, u in enumerate(batch)]
        seqs = self.expand(seqs)
        c = self.cfg
        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths waste little padding
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            spec, frames = self.spectrogram_batch([seqs[i] for i in idx], voice)
            spec = self.refine(spec, [seqs[i] for i in idx], voice)
            wav = griffin_lim(c.to_log_magnitude(spec), c.n_fft, c.hop, c.win_length, c.gl_iters, c.gl_momentum,
                              c.gl_power, frames)
            peak = wav.abs().amax(1, keepdim=True).clamp_min(1e-4)
            wav = wav * torch.clamp(0.9 / peak, max=1.0)  # never clip, never amplify noise
            for row, i in enumerate(idx):
                out[i] = wav[row, : int(frames[row]) * c.hop].float().cpu().numpy()
        return out  # type: ignore[return-value]

    def synthesize(self, units: Sequence[int], voice: str | None = None, lang: str | None = None) -> np.ndarray:
        """One unit sequence -> float32 16 kHz waveform (`voice`, `lang`: as `synthesize_batch`)."""
        return self.synthesize_batch([self._validate(units)], voice=voice, lang=lang)[0]

    def seconds(self, n_units: int) -> float:
        """Duration of the audio synthesized from `n_units` frame-rate units."""
        return n_units / self.cfg.frame_rate

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
