"""Voice groups and the `limit` rule: one definition for every evaluation.

A test split can hold records spoken by a voice no training record has
(`custom.heldout_voice`): they are scored as their own group, because that is where a speech
codebook's and model's generalization across speakers shows. `limit=N` takes the first N
records of each group, in manifest order, so a limited run keeps both groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmlm.data.manifest import HELDOUT_VOICE, is_heldout_voice

GROUPS = ("seen", HELDOUT_VOICE)


def voice_groups(records: Sequence[Any]) -> dict[str, list[int]]:
    """Indices of the records of each voice group that has any (training voices "seen", "heldout_voice")."""
    out: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, r in enumerate(records):
        out[HELDOUT_VOICE if is_heldout_voice(r) else "seen"].append(i)
    return {g: idx for g, idx in out.items() if idx}


def limit_per_group(records: Sequence[Any], limit: int | None) -> list:
    """The first `limit` records of each voice group (all when `limit` is falsy), seen voices first."""
    if not limit:
        return list(records)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 records per voice group, got {limit}")
    groups = voice_groups(records)
    return [records[i] for g in GROUPS for i in groups.get(g, [])[:limit]]
