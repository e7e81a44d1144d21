"""The paired tasks as rows of one table (ESPnet-SpeechLM's tasks-as-data idea).

```
asr   <bos> <|asr|>  <|en|> <|speech|> s s … <|/speech|> <|en|> <|text|>   t t … <|/text|>   <eos>
s2tt  <bos> <|s2tt|> <|en|> <|speech|> s s … <|/speech|> <|es|> <|text|>   t t … <|/text|>   <eos>
t2s   <bos> <|t2s|>  <|en|> <|text|>   t t … <|/text|>   <|en|> <|speech|> s s … <|/speech|> <eos>
i2t   <bos> <|i2t|>  <|en|> <|image|>  i i … <|/image|>  <|en|> <|text|>   t t … <|/text|>   <eos>
s2st  <bos> <|s2st|> <|en|> <|speech|> s s … <|/speech|> <|es|> <|speech|> u u … <|/speech|> <eos>
s2st_chain  <bos> <|s2st_chain|> <|en|> <|speech|> s s … <|/speech|> <|es|> <|text|> t t … <|/text|> <|speech|> u u … <|/speech|> <eos>
```

S2ST reads a record's speech and writes the units of the same sentence spoken in the target
language: another record of the manifest, named by `custom.parallel[LANG]` (`dmlm prepare
mini-world` with `speech_langs`). The chained row (`via_text`) writes the target text first and
then the units, in one sequence (AudioPaLM's chained S2ST); its prompt opens the text span.
A spec's language selects records: `asr:es` and `t2s:es` read the Spanish recordings, `s2tt:es`
and `s2st:es` every recording in another language (`takes`).

A row says which modality goes in and out, which manifest field holds the target text, and
how hypotheses are scored (its metric and its `Scoring`: headline label and metrics, normalizer,
trivial baseline, judged by ear); prompt, target, sample and reference are the same code for all
four. `EVALUATIONS` holds the one evaluation that is not a task: resynthesis (reference units ->
vocoder -> a judge), scored like speech out. The task owns the prompt side: `source_sample` is the source half of a record (what
decoding needs) and `make_sample` wraps tokens a caller already has (inference), so nothing
outside this module builds a `Sample` for a paired task.

Language tags: the source tag is the record's language (`lang`); the target tag is the
spec's (`s2tt:es`) or the record's, and a transcript's is always the language spoken. Images have no language, so I2T's source tag is the
caption's: every task keeps the one sequence format (a tag the model reads, never a target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dmlm.metrics import error_rates, translation_scores, unit_scores
from dmlm.metrics.captioning import caption_scores
from dmlm.tasks import Sample, Scoring, Sources, modality_ids, span
from dmlm.util.errors import UserError
from dmlm.vocab import Vocab

# which Sample field holds a side's tokens, by modality and side
_SOURCE_FIELD = {"speech": "units", "image": "image_codes", "text": "text_ids"}


@dataclass(frozen=True)
class PairedTask:
    name: str
    source: str  # modality read
    target: str  # modality written
    label: str  # how errors name the task
    target_text: str | None = None  # text target: "text", "translation" or "caption"; None for speech
    metric: Callable[[list, list], dict] | None = None  # scores hypotheses against references
    scoring: Scoring = Scoring("", ())  # how evaluations are scored and shown
    rerank_by: str | None = None  # the task whose likelihood reranks sampled candidates (`DecodingOptions.rerank`)
    via_text: bool = False  # speech out written after its text in the target language (chained S2ST)
    decoded = True  # scored on decoded hypotheses

    # -- sequences ---------------------------------------------------------------------------
    def _source_lang(self, sample: Sample) -> str:
        return sample.tgt_lang if self.source == "image" else sample.src_lang

    def _target_lang(self, sample: Sample) -> str:
        # a transcript is in the language spoken; the other targets carry their own language
        return sample.src_lang if self.target_text == "text" else sample.tgt_lang

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        src = modality_ids(vocab, sample, self.source, sample.text_ids if self.source == "text" else None, self.label)
        return [vocab.bos, vocab.task(self.name)] + span(vocab, self.source, src, self._source_lang(sample)) + [
            vocab.lang(self._target_lang(sample)), vocab.open("text" if self.via_text else self.target)]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        if self.source == self.target == "speech":  # S2ST: the translation's recording (after its text, chained)
            if sample.target_units is None or len(sample.target_units) == 0:
                raise UserError(f"record {sample.id!r}: {self.label} needs the target language's speech units, got none")
            units = vocab.speech_ids(sample.target_units)
            if not self.via_text:
                return units
            if not sample.target_text_ids:
                raise UserError(f"record {sample.id!r}: {self.label} needs a translation, got none")
            return list(sample.target_text_ids) + [vocab.close("text"), vocab.open("speech")] + units
        if self.target == "speech":
            return modality_ids(vocab, sample, "speech", None, self.label)
        ids = sample.target_text_ids if self.target_text == "translation" else sample.text_ids
        if not ids:
            what = {"text": "transcript"}.get(self.target_text, self.target_text)
            raise UserError(f"record {sample.id!r}: {self.label} needs a {what}, got none")
        return list(ids)

    def make_sample(self, sample_id: str, tokens: Any, src_lang: str = "en", tgt_lang: str | None = None) -> Sample:
        """A prompt-only sample from source tokens (units, image codes or text ids)."""
        value = list(tokens) if self.source == "text" else np.asarray(tokens)
        return Sample(id=sample_id, src_lang=src_lang, tgt_lang=tgt_lang or src_lang,
                      **{_SOURCE_FIELD[self.source]: value})

    def with_source_of(self, sample: Sample, other: Sample) -> Sample:
        """`sample` with `other`'s source tokens (its target and language tags kept): a mismatched pair,
        what `train.dev_mismatched` scores to see whether a model reads its input."""
        field_name = _SOURCE_FIELD[self.source]
        return replace(sample, **{field_name: getattr(other, field_name)})

    # -- records -----------------------------------------------------------------------------
    def _langs(self, record, lang: str | None) -> tuple[str, str]:
        rec = record.lang or "en"
        if self.target_text == "translation":
            if not lang:
                raise UserError(f"task {self.name} needs a target language: write it as {self.name}:LANG, "
                                f"e.g. {self.name}:es")
            return rec, lang
        lang = lang or rec
        return lang, lang

    def takes(self, record, lang: str | None) -> bool:
        """Whether a spec in `lang` takes `record`: a transcript or speech in `lang` only from a recording in
        `lang` (`asr:es`, `t2s:es`); a translation into `lang` never from a record already in it, and S2ST
        only where the record names its sentence's recording in `lang`."""
        rec = record.lang or "en"
        if self.target_text == "translation":
            if lang == rec:
                return False
            return self.target != "speech" or bool(((record.custom or {}).get("parallel") or {}).get(lang))
        return not lang or "speech" not in (self.source, self.target) or lang == rec

    def _has_source(self, record) -> bool:
        if self.source == "speech":
            return record.audio is not None
        if self.source == "image":
            return record.image is not None
        return bool((record.text or "").strip())

    def _source_tokens(self, record, sources: Sources):
        if self.source == "speech":
            return sources.units(record)
        if self.source == "image":
            return sources.codes(record)
        return sources.encode(record, record.text, "'text' to speak")

    def source_sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        """The source half of `record` (all a prompt needs; decoding has no target); None if it lacks the source."""
        src_lang, tgt_lang = self._langs(record, lang)
        if not self._has_source(record) or not self.takes(record, lang):
            return None
        return self.make_sample(record.id, self._source_tokens(record, sources), src_lang, tgt_lang)

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        """The training pair of `record`; None when it lacks the modality the task reads (T2S: the audio
        it writes), an error naming the record when it has half of the pair. A record marked unpaired
        (`custom.unpaired`: audio, an image or text alone, by design) is never a pair."""
        if (record.custom or {}).get("unpaired"):
            return None
        if (record.audio is None) if "speech" in (self.source, self.target) else not self._has_source(record):
            return None
        if not self.takes(record, lang):
            return None
        src_lang, tgt_lang = self._langs(record, lang)
        s = Sample(id=record.id, src_lang=src_lang, tgt_lang=tgt_lang)
        # the target first: a record without its reference is named before its tokens are looked up
        if self.target_text == "translation":
            s.target_text_ids = sources.text.encode(self.reference(record, sources, lang))
        elif self.target_text == "caption":
            s.text_ids = sources.text.encode(self.reference(record, sources, lang)[0])
        if self.source == "speech":
            s.units = sources.units(record)
        elif self.source == "image":
            s.image_codes = sources.codes(record)
        if self.source == self.target == "speech":
            s.target_units = sources.parallel_units(record, tgt_lang)
        elif self.target == "speech":
            s.units = sources.units(record)
            s.text_ids = sources.encode(record, record.text, "'text' to speak")
        elif self.target_text == "text":
            s.text_ids = sources.encode(record, record.text, "'text' (transcript)")
        return s

    def reference(self, record, sources: Sources, lang: str | None) -> Any:
        """What a hypothesis is scored against: the transcript, the translation, every caption
        (`caption` plus `custom.captions`, COCO has five), or the reference units."""
        if self.target == "speech" and self.target_text != "translation":
            return sources.units(record).tolist()
        if self.target_text == "translation":
            _, lang = self._langs(record, lang)
            tr = record.translations or {}
            if not tr.get(lang, "").strip():
                have = ", ".join(sorted(tr)) or "none"
                raise UserError(f"{sources.manifest}: record {record.id!r} has no '{lang}' translation "
                                f"(translations it has: {have})")
            return tr[lang]
        if self.target_text == "caption":
            caps = [c for c in [record.caption, *record.custom.get("captions", [])] if c and c.strip()]
            if not caps:
                raise UserError(f"{sources.manifest}: record {record.id!r} has an image but no 'caption'")
            return list(dict.fromkeys(caps))
        if not (record.text or "").strip():
            raise UserError(f"{sources.manifest}: record {record.id!r} has no reference 'text' to score against")
        return record.text

    def baseline_target(self, record, sources: Sources, lang: str | None) -> str | None:
        """`record`'s target text for the trivial baseline (`scoring.baseline`), or None when it has
        no source or no target in `lang`."""
        if not self._has_source(record):
            return None
        if self.target_text == "translation":
            return (record.translations or {}).get(lang) or None
        if self.target_text == "caption":
            return self.reference(record, sources, lang)[0] if record.caption else None
        return record.text or None

    def output_units(self, ids: list[int], vocab: Vocab) -> list[int]:
        """The speech units of decoded target ids (a chained output's units follow its text and `<|speech|>`)."""
        if self.via_text:
            opener = vocab.open("speech")
            ids = ids[len(ids) - ids[::-1].index(opener):] if opener in ids else []
        return vocab.ids_to_units(ids)

    def output_text_ids(self, ids: list[int], vocab: Vocab) -> list[int]:
        """The text ids of a chained output (before its `<|/text|>`); [] for other outputs."""
        if not self.via_text:
            return []
        close = vocab.close("text")
        return list(ids[: ids.index(close)] if close in ids else ids)

    def evaluate(self, rows: list[dict]) -> dict:
        return self.metric([r["ref"] for r in rows], [r["hyp"] for r in rows])


ERROR_RATES = (("wer", "WER %"), ("cer", "CER %"), ("wer_heldout_voice", "WER % held-out voice"))
_TEXT_NORMALIZER = "dmlm.metrics.normalize.normalize"
_JUDGE_WERS = (("asr_only_judge_wer", "ASR-only-model WER %"), ("asr_only_judge_original_wer", "its WER % of the recordings"))



def _s2st_scoring(how: str) -> Scoring:
    """S2ST is judged by ear against the translation (ASR-BLEU): Whisper transcribes the speech out in the
    target language; the ceiling is the same judge on the target language's own recordings."""
    return Scoring(f"S2ST {{src}}→{{lang}} ({how})", (
        ("asr_bleu", "ASR-BLEU"), ("asr_chrf", "ASR-chrF"), ("asr_bleu_heldout_voice", "ASR-BLEU held-out voice"),
        ("ceiling_asr_bleu", "ASR-BLEU of the target recordings (ceiling)")),
        "sacrebleu defaults (13a tokenizer)", by_ear="always", judged_against="translation")


PAIRED = (
    PairedTask("asr", "speech", "text", "ASR", target_text="text", metric=error_rates,
               scoring=Scoring("ASR", ERROR_RATES, _TEXT_NORMALIZER)),
    PairedTask("s2tt", "speech", "text", "S2TT", target_text="translation", metric=translation_scores,
               scoring=Scoring("S2TT {src}→{lang}", (("bleu", "BLEU"), ("chrf", "chrF"),
                                                       ("bleu_heldout_voice", "BLEU held-out voice"),
                                                       ("baseline_bleu", "baseline BLEU")),
                               "sacrebleu defaults (13a tokenizer)", baseline=True)),
    PairedTask("t2s", "text", "speech", "T2S", metric=unit_scores, rerank_by="asr",
               scoring=Scoring("T2S", (("unit_accuracy", "unit acc. %"), ("unit_error_rate", "unit error %"),
                                       ("wer", "Whisper WER %"), ("greedy_wer", "Whisper WER %, greedy (no rerank)"),
                                       ("original_wer", "Whisper WER % of the recordings"), *_JUDGE_WERS),
                               "none (unit ids)", by_ear="with_judge")),
    PairedTask("i2t", "image", "text", "I2T", target_text="caption", metric=caption_scores,
               scoring=Scoring("I2T captioning", (("cider", "CIDEr"), ("bleu", "BLEU"), ("baseline_cider", "baseline CIDEr")),
                               _TEXT_NORMALIZER, baseline=True)),
    PairedTask("s2st", "speech", "speech", "S2ST", target_text="translation", metric=translation_scores,
               scoring=_s2st_scoring("direct")),
    PairedTask("s2st_chain", "speech", "speech", "S2ST (chained)", target_text="translation",
               metric=translation_scores, via_text=True, scoring=_s2st_scoring("chained: text, then units")),
)

EVALUATIONS = {
    "resynthesis": Scoring("Resynthesis (codebook + vocoder)", (
        ("wer", "Whisper WER %"), ("original_wer", "Whisper WER % of the recordings"),
        ("wer_vocoder_voice", "Whisper WER %, clips in the vocoder's voice"),
        ("original_wer_vocoder_voice", "Whisper WER % of those recordings"), *_JUDGE_WERS),
        by_ear="always", voice_clips=True),
}
"""Evaluations that are not tasks (no sequence format, no LM): reference units -> vocoder -> a judge."""
