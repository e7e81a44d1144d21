"""ASR: speech units -> transcript.

`<bos> <|asr|> <|en|> <|speech|> s s … <|/speech|> <|en|> <|text|> t t … <|/text|> <eos>`
"""

from __future__ import annotations

from dmlm.vocab import Vocab


class ASR:
    name = "asr"
    source = "speech"
    target = "text"

    def prompt(self, sample, vocab: Vocab) -> list[int]:
        if sample.units is None or len(sample.units) == 0:
            raise ValueError(f"record {sample.id!r}: ASR needs speech units, got none")
        return (
            [vocab.bos, vocab.task("asr"), vocab.lang(sample.src_lang), vocab.open("speech")]
            + vocab.speech_ids(sample.units)
            + [vocab.close("speech"), vocab.lang(sample.src_lang), vocab.open("text")]
        )

    def target_ids(self, sample, vocab: Vocab) -> list[int]:
        if not sample.text_ids:
            raise ValueError(f"record {sample.id!r}: ASR needs a transcript, got none")
        return list(sample.text_ids)
