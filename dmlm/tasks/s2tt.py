"""S2TT: speech in one language -> text in another, scored by BLEU and chrF (sacrebleu).

`<bos> <|s2tt|> <|en|> <|speech|> s s … <|/speech|> <|es|> <|text|> t t … <|/text|> <eos>`

The spec names the target language (`s2tt:es`); the source language is the record's `lang`.
"""

from __future__ import annotations

from dmlm.tasks import Sample, Sources, modality_ids, span
from dmlm.vocab import Vocab
from dmlm.util.errors import UserError


class S2TT:
    name = "s2tt"
    source = "speech"
    target = "text"

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        src = modality_ids(vocab, sample, "speech", None, "S2TT")
        return [vocab.bos, vocab.task(self.name)] + span(vocab, "speech", src, sample.src_lang) + [
            vocab.lang(sample.tgt_lang), vocab.open("text")]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        if not sample.target_text_ids:
            raise UserError(f"record {sample.id!r}: S2TT needs a translation, got none")
        return list(sample.target_text_ids)

    @staticmethod
    def _lang(lang: str | None) -> str:
        if not lang:
            raise UserError("task s2tt needs a target language: write it as s2tt:LANG, e.g. s2tt:es")
        return lang

    def reference(self, record, sources: Sources, lang: str | None) -> str:
        lang = self._lang(lang)
        tr = record.translations or {}
        if not tr.get(lang, "").strip():
            have = ", ".join(sorted(tr)) or "none"
            raise UserError(f"{sources.manifest}: record {record.id!r} has no '{lang}' translation "
                             f"(translations it has: {have})")
        return tr[lang]

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.audio is None:
            return None
        ref = self.reference(record, sources, lang)
        return Sample(id=record.id, units=sources.units(record), target_text_ids=sources.text.encode(ref),
                      src_lang=record.lang or "en", tgt_lang=self._lang(lang))

    def evaluate(self, rows: list[dict]) -> dict:
        from dmlm.metrics import translation_scores

        return translation_scores([r["ref"] for r in rows], [r["hyp"] for r in rows])
