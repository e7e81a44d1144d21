"""`EvalOptions`: the settings of an evaluation, one frozen value beside `DecodingOptions`.

Design decisions:
- Decoding settings (strategy, beam, batch size...) are `dmlm.decoding.DecodingOptions`; what
  is scored and how is this: the two travel side by side through `dmlm.evaluation.run.evaluate`
  and the functions below it, so no function grows one keyword per setting.
- Frozen (whisper's `DecodingOptions`): a recipe builds one and reuses it; `dataclasses.replace`
  makes a variant.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation scores: how many records, with which baseline and extra clips."""

    limit: int | None = None
    """The first N records of each voice group (`dmlm.evaluation.grouping`); T2S judged by ear: N distinct
    texts. None: every record."""
    progress: bool = True
    """Show a progress bar while decoding."""
    voice_clips: int | None = 0
    """Resynthesis: score the vocoder's own voice on this many training-voice clips (None: every one;
    0: only those among the `limit`)."""
    train_manifest: str | None = None
    """The training manifest of the trivial baseline; None: the one the checkpoint was trained on."""
    original: bool = True
    """Speech judged by ear: also judge the original recordings (the judge's own ceiling)."""
