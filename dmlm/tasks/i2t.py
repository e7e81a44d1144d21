"""I2T: image codes -> caption, scored by CIDEr and BLEU.

`<bos> <|i2t|> <|en|> <|image|> i i … <|/image|> <|en|> <|text|> t t … <|/text|> <eos>`

Images have no language; the source tag is the caption's language, so every task keeps the
one sequence format (a tag the model can read, never a prediction target).
"""

from __future__ import annotations

from dmlm.tasks import Sample, Sources, modality_ids, span
from dmlm.vocab import Vocab
from dmlm.util.errors import UserError


class I2T:
    name = "i2t"
    source = "image"
    target = "text"

    def prompt(self, sample: Sample, vocab: Vocab) -> list[int]:
        src = modality_ids(vocab, sample, "image", None, "I2T")
        return [vocab.bos, vocab.task(self.name)] + span(vocab, "image", src, sample.tgt_lang) + [
            vocab.lang(sample.tgt_lang), vocab.open("text")]

    def target_ids(self, sample: Sample, vocab: Vocab) -> list[int]:
        if not sample.text_ids:
            raise UserError(f"record {sample.id!r}: I2T needs a caption, got none")
        return list(sample.text_ids)

    def reference(self, record, sources: Sources, lang: str | None) -> list[str]:
        """Every caption of the record: `caption`, plus `custom.captions` (COCO has five)."""
        caps = [c for c in [record.caption, *record.custom.get("captions", [])] if c and c.strip()]
        if not caps:
            raise UserError(f"{sources.manifest}: record {record.id!r} has an image but no 'caption'")
        return list(dict.fromkeys(caps))

    def sample(self, record, sources: Sources, lang: str | None) -> Sample | None:
        if record.image is None:
            return None
        lang = lang or record.lang or "en"
        caption = self.reference(record, sources, lang)[0]
        return Sample(id=record.id, image_codes=sources.codes(record), text_ids=sources.text.encode(caption),
                      src_lang=lang, tgt_lang=lang)

    def evaluate(self, rows: list[dict]) -> dict:
        from dmlm.metrics.captioning import caption_scores

        return caption_scores([r["ref"] for r in rows], [r["hyp"] for r in rows])
