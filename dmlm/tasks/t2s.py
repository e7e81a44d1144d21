"""T2S: text -> speech units, scored on units (the vocoder turns them into audio).

`<bos> <|t2s|> <|en|> <|text|> t t … <|/text|> <|en|> <|speech|> s s … <|/speech|> <eos>`

Unit accuracy and unit error rate against the reference units are a proxy; audio-level
judging (vocoder + an ASR listening) is `dmlm.vocoder`'s.
"""

from __future__ import annotations

from dmlm.tasks import Sample, Sources, modality_ids, span
from dmlm.vocab import Vocab


class T2S:
    name = "t2s"
    source = "text"
    target = "speech"

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        src = modality_ids(vocab, sample, "text", sample.text_ids, "T2S")
        return [vocab.bos, vocab.task(self.name)] + span(vocab, "text", src, sample.src_lang) + [
            vocab.lang(sample.tgt_lang), vocab.open("speech")]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        return modality_ids(vocab, sample, "speech", None, "T2S")

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.audio is None:
            return None
        lang = lang or record.lang or "en"
        return Sample(id=record.id, units=sources.units(record), text_ids=sources.encode(record, record.text, "'text' to speak"),
                      src_lang=lang, tgt_lang=lang)

    def reference(self, record, sources: Sources, lang: str | None) -> list[int]:
        return sources.units(record).tolist()

    def evaluate(self, rows: list[dict]) -> dict:
        from dmlm.metrics import unit_scores

        return unit_scores([r["ref"] for r in rows], [r["hyp"] for r in rows])
