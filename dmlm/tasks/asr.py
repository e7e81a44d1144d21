"""ASR: speech units -> transcript, scored by WER/CER.

`<bos> <|asr|> <|en|> <|speech|> s s … <|/speech|> <|en|> <|text|> t t … <|/text|> <eos>`
"""

from __future__ import annotations

from dmlm.tasks import Sample, Sources, modality_ids, span
from dmlm.vocab import Vocab
from dmlm.util.errors import UserError


class ASR:
    name = "asr"
    source = "speech"
    target = "text"

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        src = modality_ids(vocab, sample, "speech", None, "ASR")
        return [vocab.bos, vocab.task(self.name)] + span(vocab, "speech", src, sample.src_lang) + [
            vocab.lang(sample.src_lang), vocab.open("text")]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        if not sample.text_ids:
            raise UserError(f"record {sample.id!r}: ASR needs a transcript, got none")
        return list(sample.text_ids)

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.audio is None:
            return None
        lang = lang or record.lang or "en"
        return Sample(id=record.id, units=sources.units(record), text_ids=sources.encode(record, record.text, "'text' (transcript)"),
                      src_lang=lang, tgt_lang=lang)

    def reference(self, record, sources: Sources, lang: str | None) -> str:
        if not (record.text or "").strip():
            raise UserError(f"{sources.manifest}: record {record.id!r} has no reference 'text' to score against")
        return record.text

    def evaluate(self, rows: list[dict]) -> dict:
        from dmlm.metrics import error_rates

        return error_rates([r["ref"] for r in rows], [r["hyp"] for r in rows])
