"""The unit vocoder: speech units -> log-mel envelope -> Griffin-Lim -> 16 kHz waveform.

Where things are:
- `config`      the settings, one dataclass per kind: architecture, synthesis, matching, training,
                and the spec training writes (`VocoderConfig` inherits them all, flat)
- `files`       the files of a saved vocoder folder; `VocoderFiles.update` rewrites its settings
- `network`     the nn.Module (`UnitToSpec`: units -> log spectrogram) and its duration predictor
- `matching`    the matching set: real frames of the output voice by unit (`MatchingSet`)
- `vocoder`     the `Vocoder` object: load, save, update, synthesize
- `spectrogram` log magnitudes, mel envelopes and Griffin-Lim, in plain torch
- `train`       `train_vocoder`, `add_matching_set`, `reuse_vocoder`

Design decisions (measurements: docs/experiments.md, "Speech out"):
- Units are *content* (k-means of Whisper's last layer); pitch and timbre must be invented.
  The vocoder regresses a log spectrogram with an L1 loss and Griffin-Lim inverts it: it trains
  in minutes on 2 CPU cores and is embarrassingly parallel on a GPU. A GAN vocoder (unit
  HiFi-GAN) sounds better but needs GPU-days and runs ~20x slower on the CPU (`bench/vocoder_speed.py`).
- The default target is an 80-band log-mel *envelope* (`target="mel"`), inverted to a smooth
  linear magnitude: Griffin-Lim on the envelope of real speech is as intelligible as on its
  full STFT (judged by ASR), and the envelope is what units can predict; harmonics depend on
  the speaker's pitch, which units do not carry.
- A regression net trained from scratch for 4 CPU minutes barely leaves the average spectrum
  (>90 % WER). Two cheap priors fix that: (1) a lookup table of the mean target frame of each
  (unit, position in unit), averaged over a few thousand clips in seconds before training, is
  the output the net starts from (alone: ~35 % WER); the net learns the context-dependent
  residual, its output layer starting at zero; (2) the unit embeddings start from the
  codebook's centroids (PCA), so acoustically close units start close.
- Speaker conditioning (on by default): the net gets an embedding of the training speaker and
  synthesizes in one fixed voice (`voice`); otherwise its output is the blurred average of
  all training voices. The output voice never depends on the input's voice.
- Codebooks that deduplicate units lose their timing; a duration predictor restores it before
  upsampling. Training uses the true run-lengths (teacher forcing); synthesis rounds the
  prediction to >= 1 frame.
- Regression to the mean: an L1-trained net predicts a context-averaged envelope, smoother than
  any real frame; at synthesis each frame is replaced by the mean of its `knn` nearest real
  frames of the same unit, matched with their context (`dmlm.vocoder.matching`). It costs no
  training and lowers resynthesis WER on the demo.
- What a setting costs to change is the kind of its field (`dmlm.vocoder.config`): synthesis
  settings change on a trained vocoder (`Vocoder.update`), a matching setting rebuilds the
  matching set, architecture and training settings need a new network.
- A vocoder is tied to the codebook it was trained for: `config.json` records the codebook's
  fingerprint, k and frame rate, and loading it for another codebook raises `CodebookMismatch`.
  In a checkpoint it lives in `<model>/vocoder/`.
"""

from dmlm.vocoder.config import VocoderConfig, kind_of
from dmlm.vocoder.files import NoVocoder, VocoderFiles
from dmlm.vocoder.matching import MatchingSet
from dmlm.vocoder.network import run_lengths
from dmlm.vocoder.train import add_matching_set, reuse_vocoder, train_vocoder
from dmlm.vocoder.vocoder import Vocoder

__all__ = ["MatchingSet", "NoVocoder", "Vocoder", "VocoderConfig", "VocoderFiles", "add_matching_set", "kind_of",
           "reuse_vocoder", "run_lengths", "train_vocoder"]
