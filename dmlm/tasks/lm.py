"""Unpaired tasks: plain language modelling of one modality (mixed supervision).

`<bos> <|text_lm|> <|en|> <|text|> t t … <|/text|> <eos>`, likewise `<|speech_lm|>`
(`<|speech|>` units) and `<|image_lm|>` (`<|image|>` codes).

The whole span is the target; the prompt is the four tags before it. Scored by perplexity
over the target tokens (close tag and eos included), teacher-forced.

`text_lm:es` models the record's Spanish translation: unpaired text in another language.
"""

from __future__ import annotations

import math

from dmlm.tasks import Sample, Scoring, Sources, modality_ids
from dmlm.vocab import Vocab


class _LM:
    name = ""
    source = None
    target = ""
    decoded = False  # scored teacher-forced
    scoring = Scoring("{spec} (unpaired)", (("perplexity", "perplexity"),))

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        return [vocab.bos, vocab.task(self.name), vocab.lang(sample.tgt_lang), vocab.open(self.target)]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        return modality_ids(vocab, sample, self.target, sample.text_ids, self.name)

    def takes(self, record, lang: str | None) -> bool:
        return True  # `sample` leaves out a record without this modality in `lang`

    def reference(self, record, sources: Sources, lang: str | None):
        return None  # scored teacher-forced, not by decoding

    def evaluate(self, rows: list[dict]) -> dict:
        """rows: [{"nll": summed target nats, "tokens": n}] -> perplexity over all target tokens."""
        nll = sum(r["nll"] for r in rows)
        n = sum(r["tokens"] for r in rows)
        return {"perplexity": math.exp(nll / max(n, 1)), "nll_per_token": nll / max(n, 1), "tokens": n}


class TextLM(_LM):
    name = "text_lm"
    target = "text"

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        rec_lang = record.lang or "en"
        lang = lang or rec_lang
        if lang == rec_lang:
            text = record.text or record.caption
        else:
            text = (record.translations or {}).get(lang)
        if not text or not text.strip():
            return None  # unpaired text: records without text in this language simply do not take part
        return Sample(id=record.id, text_ids=sources.text.encode(text), src_lang=lang, tgt_lang=lang)


class SpeechLM(_LM):
    name = "speech_lm"
    target = "speech"

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.audio is None:
            return None
        lang = lang or record.lang or "en"
        return Sample(id=record.id, units=sources.units(record), src_lang=lang, tgt_lang=lang)


class ImageLM(_LM):
    name = "image_lm"
    target = "image"

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.image is None:
            return None
        lang = lang or record.lang or "en"
        return Sample(id=record.id, image_codes=sources.codes(record), src_lang=lang, tgt_lang=lang)
