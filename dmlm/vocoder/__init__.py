"""Speech units -> 16 kHz waveform (see `dmlm.vocoder.model` for the design)."""

from dmlm.vocoder.model import NoVocoder, Vocoder, VocoderConfig, run_lengths
from dmlm.vocoder.train import train_vocoder

__all__ = ["NoVocoder", "Vocoder", "VocoderConfig", "run_lengths", "train_vocoder"]
