"""Speech out judged by ear: units -> the checkpoint's vocoder -> an ASR judge -> WER.

Design decisions:
- Two measurements separate the two halves of text-to-speech:
  * `evaluate_resynthesis`: reference units (from the token store) -> vocoder -> judge. This is
    the vocoder's ceiling: what T2S can reach if the DMLM predicted the units perfectly.
  * `evaluate_t2s_audio`: text -> DMLM units (`dmlm.inference.synthesize_units`) -> vocoder ->
    judge. Its gap to resynthesis is the DMLM's share of the errors.
  Both also judge the *original* recordings of the same records (the judge's own ceiling).
  Resynthesis reports training voices and the held-out voice separately, like
  ASR evaluation (`dmlm.evaluation.tasks`) (the input audio's voice matters there); T2S takes `n` distinct
  texts and reports one score (its input is text: no voice to hold out).
- One type per argument: a `Codebook` and a `Vocoder` (resynthesis), a `Checkpoint` (T2S), a
  `Split` (its token stores, or units computed here), a `Judge` object, and `EvalOptions`
  (`limit`: records per voice group / distinct texts; `voice_clips`; `original`).
  `t2s_units` generates the units `evaluate_t2s_audio` judges, so a caller judging one model's
  speech with several judges generates them once and passes them in.
- Reports and examples go to one folder: `report.json`, `hyps.jsonl`, a few wavs (synthesized
  and original) and `spectrograms.png` (reference vs synthesized). Every file is written to a
  temp name and renamed, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dmlm.data.manifest import HELDOUT_VOICE, Record, is_heldout_voice, read_manifest
from dmlm.data.split import Split
from dmlm.decoding import DecodingOptions
from dmlm.evaluation.grouping import limit_per_group, voice_groups
from dmlm.evaluation.judge import Judge, judge_normalizer, transcribe
from dmlm.evaluation.options import EvalOptions
from dmlm.modeling import Checkpoint
from dmlm.tokenizers.speech import Codebook
from dmlm.util.audio import SAMPLE_RATE, load_audio, write_wav
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_file, atomic_write_json, write_jsonl
from dmlm.vocoder import Vocoder

N_EXAMPLES = 4  # wavs and plot rows written per evaluation


def safe_name(record_id: str) -> str:
    """A record id as a file name inside the output folder: no separators, no leading dots, at most 120 characters
    (a manifest's ids must not choose where files are written)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", record_id).lstrip(".")[:120]
    return name or "record"


# ------------------------------------------------------------------------------ evaluation


def pick_records(manifest: str | Path, n: int | None, voice: str | None = None,
                 voice_clips: int | None = 0) -> tuple[list[Record], int]:
    """The first `n` records with text of each voice group (training voices, held-out voice;
    None: all), then more training-voice records spoken in `voice` (the vocoder's) until that
    voice has `voice_clips` of them (None: all the manifest has; 0: none added). Returns the
    records and how many at the end were added for the voice: those count only in its own group.
    `n=0` with a voice: that voice's clips alone."""
    recs = [r for r in read_manifest(manifest) if r.text]
    if not recs:
        raise UserError(f"{manifest}: no records with a reference 'text'")
    if n is None or (n == 0 and (voice is None or voice_clips == 0)):
        return recs, 0
    seen = [r for r in recs if not is_heldout_voice(r)]
    picked = limit_per_group(recs, n) if n else []
    if voice is None or voice_clips == 0:
        return picked, 0
    have = sum(r.speaker == voice for r in seen[:n])
    extra = [r for r in seen[n:] if r.speaker == voice]
    extra = extra if voice_clips is None else extra[: max(0, voice_clips - have)]
    return picked + extra, len(extra)


def pick_texts(manifest: str | Path, n: int | None, voice: str | None = None) -> list[Record]:
    """The first `n` records with distinct texts (for text input the voice is irrelevant),
    records spoken in `voice` (the vocoder's) first, then other training voices: each text's
    original audio is, where the manifest has one, a recording of the voice T2S speaks in."""
    recs = [r for r in read_manifest(manifest) if r.text]
    if not recs:
        raise UserError(f"{manifest}: no records with a reference 'text'")
    # stable: manifest order within groups
    recs.sort(key=lambda r: (is_heldout_voice(r), voice is not None and r.speaker != voice))
    seen, out = set(), []
    for r in recs:
        if r.text not in seen:
            seen.add(r.text)
            out.append(r)
    return out[:n] if n else out


def _score(recs: list[Record], wavs: list[np.ndarray | None], judge_: Judge,
           by_voice: bool = True, voice: str | None = None, voice_only: int = 0) -> tuple[dict, list[str]]:
    """WER/CER by voice group (or of all, "all"); a missing clip (None) is an empty transcript.

    With `voice` (the vocoder's output voice), the training-voice clips spoken in that voice are
    also scored as their own group, "vocoder_voice": resynthesis there changes only the
    codebook's and vocoder's losses, not the speaker. The last `voice_only` records (extra
    clips in that voice, `pick_records`) count only in that group."""
    ok = [i for i, w in enumerate(wavs) if w is not None]
    hyps = [""] * len(recs)
    if ok:  # scored below, by group
        for i, h in zip(ok, transcribe([wavs[i] for i in ok], judge_)):
            hyps[i] = h
    from dmlm.metrics import error_rates

    norm = judge_normalizer(judge_)

    def rates(idx: list[int]) -> dict:
        refs, hs = [recs[i].text for i in idx], [hyps[i] for i in idx]
        e = error_rates(refs, hs, normalizer=norm)
        if norm != "basic":  # the simple rule's number beside it, for comparison with ASR tables
            e["wer_basic"] = error_rates(refs, hs)["wer"]
        return e

    if not by_voice:
        return {"all": rates(list(range(len(recs))))}, hyps
    out: dict = {}
    grouped = len(recs) - voice_only
    for name, idx in voice_groups(recs[:grouped]).items():
        out[name] = rates(idx)
    same = [i for i, r in enumerate(recs) if voice and r.speaker == voice and not is_heldout_voice(r)]
    if same:
        out["vocoder_voice"] = rates(same)
    return out, hyps


def plot_spectrograms(rows: Sequence[tuple[str, str, np.ndarray, np.ndarray]], path: str | Path,
                      right: str = "synthesized") -> Path:
    """Rows of (reference text, what the judge heard, reference wav, synthesized wav) as
    log-magnitude images side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from dmlm.vocoder.spectrogram import log_magnitude

    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 2.4 * len(rows)), squeeze=False)
    for row, (text, heard, ref, syn) in enumerate(rows):
        for col, (title, w) in enumerate(((f"reference: {text}", ref), (f"{right}, judge heard: {heard}", syn))):
            s = log_magnitude(torch.as_tensor(w, dtype=torch.float32), 512, 160, 512).T.numpy()
            ax = axes[row][col]
            ax.imshow(s, origin="lower", aspect="auto", vmin=s.max() - 10, vmax=s.max(),
                      extent=(0, len(w) / SAMPLE_RATE, 0, SAMPLE_RATE / 2000))
            ax.set_title(title[:80], fontsize=8)
            ax.set_ylabel("kHz")
        axes[row][0].set_xlabel("s")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return Path(path)


def _write_outputs(out_dir: Path, report: dict, recs: list[Record], refs_audio: list[np.ndarray],
                   wavs: list[np.ndarray | None], hyps: list[str], ref_hyps: list[str] | None, right: str,
                   voice_only: int = 0) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    grouped = len(recs) - voice_only
    rows = [{"id": r.id, "ref": r.text, "hyp": h, HELDOUT_VOICE: is_heldout_voice(r),
             **({"vocoder_voice_only": True} if i >= grouped else {}),
             **({"hyp_original": ref_hyps[i]} if ref_hyps else {})} for i, (r, h) in enumerate(zip(recs, hyps))]
    write_jsonl(out_dir / "hyps.jsonl", rows)
    ex = [i for i, w in enumerate(wavs) if w is not None]
    # examples from both voice groups
    ex = ([i for i in ex if not is_heldout_voice(recs[i])][: N_EXAMPLES // 2]
          + [i for i in ex if is_heldout_voice(recs[i])][: N_EXAMPLES // 2]) or ex[:N_EXAMPLES]
    for i in ex:
        name = safe_name(recs[i].id)
        write_wav(out_dir / "examples" / f"{name}.{right}.wav", wavs[i])
        write_wav(out_dir / "examples" / f"{name}.original.wav", refs_audio[i])
    if ex:
        plot_spectrograms([(recs[i].text, hyps[i], refs_audio[i], wavs[i]) for i in ex],
                          out_dir / "spectrograms.png", right)
    report["examples"] = [{"id": recs[i].id, "ref": recs[i].text, "hyp": hyps[i]} for i in ex]
    atomic_write_json(out_dir / "report.json", report)


def _flatten(report: dict, scores: dict, prefix: str = "") -> None:
    """ASR evaluation's layout: seen-voice (or all) wer/cer at top, held-out voice as wer_heldout_voice."""
    if "all" in scores:
        report[f"{prefix}wer"], report[f"{prefix}cer"] = scores["all"]["wer"], scores["all"]["cer"]
    if "seen" in scores:
        report[f"{prefix}wer"], report[f"{prefix}cer"] = scores["seen"]["wer"], scores["seen"]["cer"]
    for group in (HELDOUT_VOICE, "vocoder_voice"):
        if group in scores:
            report[f"{prefix}wer_{group}"], report[f"{prefix}cer_{group}"] = scores[group]["wer"], scores[group]["cer"]


def _judge_name(j: Judge) -> str:
    j = getattr(j, "inner", j)  # OnceJudge: the judge it wraps
    name = type(j).__name__
    model = getattr(j, "model_name", None) or getattr(getattr(j, "ck", None), "path", None)
    return f"{name}({model}, {getattr(j, 'engine', '')})".replace(", )", ")") if model else name


def _reference_units(codebook: Codebook, split: Split, recs: list[Record], audio: list[np.ndarray]) -> tuple[list, str]:
    """(units of `recs`, where they came from): the split's token store (checked against `codebook`), else
    computed here from the recordings."""
    from dmlm.inference import speech_units

    if not split.has_store("speech"):
        return speech_units(codebook, audio), "computed with the codebook"
    store = split.store("speech", codebook)
    return [split.tokens(r, "speech") for r in recs], str(store.prefix)


def evaluate_resynthesis(codebook: Codebook, vocoder: Vocoder, split: Split, judge_: Judge,
                         options: EvalOptions = EvalOptions(), out_dir: Path | None = None) -> dict:
    """Reference units -> `vocoder` -> `judge_`: WER/CER against each record's text.

    Units come from the split's token store (made with `codebook`), else are computed here from the
    recordings with `codebook`. `options.limit` records per voice group. `options.voice_clips`: the
    vocoder's own voice is scored on this many training-voice clips (None: every one in the manifest;
    0: only those among the `limit`), extra clips counting only there (`pick_records`).
    `options.original`: also judge the original recordings (the judge's ceiling).
    """
    t_start = time.time()
    vocoder.check(codebook)
    voice = vocoder.voice
    recs, extra = pick_records(split.manifest, options.limit, voice, options.voice_clips)
    refs_audio = [load_audio(r.audio_path(split.manifest)) for r in recs]
    units, units_name = _reference_units(codebook, split, recs, refs_audio)
    t0 = time.time()
    wavs = vocoder.synthesize_batch(units)
    t_syn = time.time() - t0
    scores, hyps = _score(recs, wavs, judge_, voice=voice, voice_only=extra)
    report: dict = {"task": "resynthesis", "vocoder_voice": voice, "model": str(getattr(vocoder, "folder", None)),
                    "manifest": str(split.manifest.resolve()), "units": units_name,
                    "codebook_fingerprint": codebook.fingerprint, "judge": _judge_name(judge_), "voice_clips_added": extra,
                    "normalizer": judge_normalizer(judge_), "vocoder": asdict(vocoder.cfg),
                    "vocoder_x_real_time": sum(len(w) for w in wavs) / SAMPLE_RATE / t_syn, "scores": scores}
    _flatten(report, scores)
    ref_hyps = None
    if options.original:
        ref_scores, ref_hyps = _score(recs, refs_audio, judge_, voice=voice, voice_only=extra)
        report["original_scores"] = ref_scores
        _flatten(report, ref_scores, "original_")
    report["seconds"] = round(time.time() - t_start, 1)
    if out_dir is not None:
        _write_outputs(Path(out_dir), report, recs, refs_audio, wavs, hyps, ref_hyps, "resynthesized", extra)
    return report


def t2s_units(ck: Checkpoint, split: Split, opts: DecodingOptions = DecodingOptions(),
              options: EvalOptions = EvalOptions(), vocoder: Vocoder | None = None) -> list[np.ndarray]:
    """The units `evaluate_t2s_audio` judges with the same arguments: T2S output for its texts (`pick_texts`)."""
    from dmlm.inference import synthesize_units

    voc = vocoder or ck.vocoder()
    recs = pick_texts(split.manifest, options.limit, voc.voice)
    return synthesize_units(ck, [r.text for r in recs], opts=opts)


def evaluate_t2s_audio(ck: Checkpoint, split: Split, judge_: Judge, opts: DecodingOptions = DecodingOptions(),
                       options: EvalOptions = EvalOptions(), out_dir: Path | None = None,
                       vocoder: Vocoder | None = None, units: Sequence[np.ndarray] | None = None) -> dict:
    """Text -> DMLM units -> vocoder -> `judge_`: WER/CER against the text (T2S intelligibility).

    A text for which the model generates no units counts as an empty transcript (all deletions) and
    is counted in `empty_outputs`. `options.limit` distinct texts. `vocoder`: another vocoder than
    the checkpoint's own `vocoder/` (it must be trained for the checkpoint's codebook). `units`: the
    units to judge, from `t2s_units` with the same arguments (generated here when None).
    """
    t0 = time.time()
    cb = ck.codebook("speech")
    voc = vocoder or ck.vocoder()
    voc.check(cb)
    voice = voc.voice
    recs = pick_texts(split.manifest, options.limit, voice)
    units = list(units) if units is not None else t2s_units(ck, split, opts, options, voc)
    if len(units) != len(recs):
        raise ValueError(f"{len(units)} unit sequences for {len(recs)} texts: give the units of `t2s_units` with "
                         "the same arguments")
    keep = [i for i, u in enumerate(units) if len(u)]
    wavs: list[np.ndarray | None] = [None] * len(recs)
    for i, w in zip(keep, voc.synthesize_batch([np.asarray(units[i]) for i in keep]) if keep else []):
        wavs[i] = w
    scores, hyps = _score(recs, wavs, judge_, by_voice=False)
    report: dict = {"task": "t2s", "model": str(ck.path), "manifest": str(split.manifest.resolve()), "vocoder_voice": voice,
                    "recordings_in_vocoder_voice": sum(r.speaker == voice for r in recs) if voice else 0,
                    "codebook_fingerprint": cb.fingerprint, "judge": _judge_name(judge_),
                    "normalizer": judge_normalizer(judge_), "decoding": asdict(opts),
                    "empty_outputs": len(recs) - len(keep),
                    "mean_seconds": sum(len(u) for u in units) / max(1, len(recs)) / cb.settings.frame_rate,
                    "scores": scores}
    _flatten(report, scores)
    refs_audio = [load_audio(r.audio_path(split.manifest)) if r.audio else np.zeros(1600, np.float32) for r in recs]
    ref_hyps = None
    if options.original and all(r.audio for r in recs):
        ref_scores, ref_hyps = _score(recs, refs_audio, judge_, by_voice=False)
        report["original_scores"] = ref_scores
        _flatten(report, ref_scores, "original_")
    report["seconds"] = round(time.time() - t0, 1)
    if out_dir is not None:
        _write_outputs(Path(out_dir), report, recs, refs_audio, wavs, hyps, ref_hyps, "t2s")
    return report
