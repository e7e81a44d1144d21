"""Everything a run needs before its first step: tokenizers, vocabulary, rendered examples, mixture.

Design decisions:
- Each manifest is read once (`Manifests`); the text tokenizer's training texts and every task's
  samples come from those records.
- The text tokenizer is `data.text_tokenizer` if set; else the LLM's own (trimmed to the training
  texts with `model.trim_vocab`: a pure function of them, so a resumed run rebuilds the same one);
  else a BPE trained on the training texts.
- Examples are rendered task by task into one list; `pools` names each task's slice and the
  mixture (`data.weights`) draws from those slices, so the data order is a function of the seed.
- Configuration mistakes (a task with no record it can read, a codebook missing for a modality,
  an example longer than the model's positions) are refused here, before any step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from dmlm.data.manifest import Record, read_manifest
from dmlm.data.mixture import Mixture
from dmlm.data.split import Split
from dmlm.modeling import model_positions
from dmlm.tasks import Rendered, Sample, Sources, Task, get_task, parse_spec, render
from dmlm.tokenizers.speech import Codebook
from dmlm.tokenizers.text import TextTokenizer
from dmlm.training.config import RunConfig
from dmlm.util.errors import UserError
from dmlm.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class Manifests:
    """The records of each manifest a run reads, each file read once on first use."""

    _records: dict[str, list[Record]] = field(default_factory=dict)

    def __call__(self, path: str | Path) -> list[Record]:
        key = str(path)
        if key not in self._records:
            self._records[key] = read_manifest(path)
        return self._records[key]


def task_samples(spec: str, sources: Sources, speakers: list[str] | None = None,
                 records: list[Record] | None = None) -> list[Sample]:
    """Every sample task `spec` can take from the manifest of `sources` (`records`, its records if
    already read; records lacking the task's modality are skipped); with `speakers`, only records of
    those speakers."""
    name, lang = parse_spec(spec)
    task = get_task(name)
    wanted = set(speakers) if speakers is not None else None
    out = []
    for r in records if records is not None else read_manifest(sources.manifest):
        if wanted is not None and r.speaker not in wanted:
            continue
        s = task.sample(r, sources, lang)
        if s is not None:
            out.append(s)
    return out


def training_texts(records: list[Record]) -> list[str]:
    """Every string a text tokenizer must cover: transcripts, translations, captions."""
    texts = []
    for r in records:
        texts += [t for t in [r.text, r.caption, *(r.translations or {}).values()] if t and t.strip()]
    return texts


def _train_records(cfg: RunConfig, manifests: Manifests) -> list[Record]:
    """The records of data.train and data.unpaired, in that order."""
    return [r for m in [cfg.data.train, *cfg.data.unpaired] for r in manifests(m)]


def build_text_tokenizer(cfg: RunConfig, manifests: Manifests | None = None) -> TextTokenizer:
    """data.text_tokenizer if set; else the LLM's own (init=pretrained/random; with model.trim_vocab cut to the
    training texts, a pure function of them, so a resumed run rebuilds the same one); else a BPE trained on them.
    `manifests`: the run's manifests, if already being read."""
    cfg.model.validate()
    manifests = manifests or Manifests()
    if cfg.data.text_tokenizer:
        if cfg.model.trim_vocab:
            raise UserError("model.trim_vocab trims the LLM's own tokenizer (its ids name the embedding rows kept); "
                            f"unset data.text_tokenizer ({cfg.data.text_tokenizer}) or model.trim_vocab")
        return TextTokenizer.load(cfg.data.text_tokenizer)
    if cfg.model.from_llm:
        from dmlm.util.assets import llm_dir

        text = TextTokenizer.load(llm_dir(cfg.model.llm))
        if cfg.model.trim_vocab:
            from dmlm.tokenizers.trim import trim_tokenizer

            full = text.vocab_size
            text = trim_tokenizer(text, training_texts(_train_records(cfg, manifests)))
            log.info("text vocabulary trimmed to the training texts: %d of %d tokens", text.vocab_size, full)
        return text
    texts = training_texts(_train_records(cfg, manifests))
    if not texts:
        raise UserError(f"{cfg.data.train}: no 'text', 'translations' or 'caption' in any record to train the BPE on")
    return TextTokenizer.train_bpe(texts, cfg.data.bpe_vocab_size)


@dataclass
class Setup:
    """What `setup` builds from a config: the run's vocabulary, tokenizers and examples."""

    vocab: Vocab
    text: TextTokenizer
    codebook: Codebook | None
    image_codebook: object | None
    train: list[Rendered]  # every task's examples, task by task (offsets in `pools`)
    pools: dict[str, tuple[int, int]]  # spec -> [start, end) in `train`
    mixture: Mixture
    dev: list[Rendered]
    dev_samples: list[Sample]
    dev_mismatched: list[Rendered] = field(default_factory=list)  # train.dev_mismatched: sources swapped (`mismatched`)


def mixture_weights(cfg: RunConfig) -> list[float]:
    """data.weights, one per task of data.tasks (all 1 when unset)."""
    w = cfg.data.weights or [1.0] * len(cfg.data.tasks)
    if len(w) != len(cfg.data.tasks):
        raise UserError(f"data.weights has {len(w)} entries but data.tasks has {len(cfg.data.tasks)} ({cfg.data.tasks})")
    return list(w)


def _check_task_fields(cfg: RunConfig) -> None:
    """data.tasks is not empty and data.unpaired_only / data.speakers name only its tasks."""
    specs = cfg.data.tasks
    if not specs:
        raise UserError("data.tasks is empty: name at least one task, e.g. data.tasks=[asr]")
    stray = sorted(set(cfg.data.unpaired_only) - set(specs))
    if stray:
        raise UserError(f"data.unpaired_only names tasks {stray} that are not in data.tasks {specs}")
    if cfg.data.unpaired_only and not cfg.data.unpaired:
        raise UserError(f"data.unpaired_only {cfg.data.unpaired_only}: those tasks read only data.unpaired, which is empty")
    stray = sorted(set(cfg.data.speakers) - set(specs))
    if stray:
        raise UserError(f"data.speakers names tasks {stray} that are not in data.tasks {specs}")


def _codebooks(cfg: RunConfig) -> tuple[Codebook | None, object | None]:
    """The speech and image codebooks, each required when a task reads or writes its modality."""
    specs = cfg.data.tasks
    modalities = set()
    for spec in specs:
        t = get_task(parse_spec(spec)[0])
        modalities |= {t.source, t.target} - {None}
    codebook = Codebook.load(cfg.data.codebook) if cfg.data.codebook else None
    if "speech" in modalities and codebook is None:
        raise UserError(f"tasks {specs} read or write speech: set data.codebook to the speech codebook")
    image_cb = None
    if cfg.data.image_codebook:
        from dmlm.tokenizers.image import ImageCodebook

        image_cb = ImageCodebook.load(cfg.data.image_codebook)
    if "image" in modalities and image_cb is None:
        raise UserError(f"tasks {specs} read or write images: set data.image_codebook to the image codebook")
    return codebook, image_cb


def _check_pool(cfg: RunConfig, spec: str, empty: bool, train_sources: list[Sources]) -> None:
    """A task restricted to data.unpaired or to some speakers must still find a training record."""
    if empty and spec in cfg.data.unpaired_only:
        raise UserError(f"task {spec} (data.unpaired_only): no record it can read in data.unpaired {cfg.data.unpaired}")
    if empty and spec in cfg.data.speakers:
        raise UserError(f"task {spec}: no training record of speakers {cfg.data.speakers[spec]} "
                        f"(data.speakers) in {[s.manifest for s in train_sources]}")


def setup(cfg: RunConfig) -> Setup:
    """Check the config's data fields, build tokenizers and vocabulary, render every task's examples."""
    cfg.validate()
    _check_task_fields(cfg)
    codebook, image_cb = _codebooks(cfg)
    manifests = Manifests()
    text = build_text_tokenizer(cfg, manifests)
    fps = {m: cb.fingerprint for m, cb in (("speech", codebook), ("image", image_cb)) if cb is not None}
    bpe = codebook.bpe if codebook is not None else None  # unit merges: the vocabulary renders pieces
    if bpe is not None:
        fps["speech_bpe"] = bpe.fingerprint
    vocab = Vocab(text_size=text.vocab_size, speech_size=codebook.pieces if codebook else 0,
                  image_size=image_cb.k if image_cb else 0, bos_id=text.bos_id, eos_id=text.eos_id, fingerprints=fps,
                  speech_bpe=bpe.to_dict() if bpe is not None else {})

    def sources(manifest: str) -> Sources:
        split = Split(manifest, cfg.data.units or None)
        return Sources(manifest, text, split.store("speech", codebook, required=False),
                       split.store("image", image_cb, required=False))

    train_sources = [sources(m) for m in [cfg.data.train, *cfg.data.unpaired]]
    dev_sources = sources(cfg.data.dev) if cfg.data.dev else None
    rendered: list[Rendered] = []
    pools: dict[str, tuple[int, int]] = {}
    dev: list[Rendered] = []
    dev_samples: list[Sample] = []
    dev_mismatched: list[Rendered] = []
    for spec in cfg.data.tasks:
        task, speakers = get_task(parse_spec(spec)[0]), cfg.data.speakers.get(spec)
        start = len(rendered)
        for k, src in enumerate(train_sources):
            if k == 0 and spec in cfg.data.unpaired_only:  # train_sources[0] is data.train
                continue
            samples = task_samples(spec, src, speakers, manifests(src.manifest))
            rendered += [render(task, s, vocab, spec) for s in samples]
        pools[spec] = (start, len(rendered))
        _check_pool(cfg, spec, start == len(rendered), train_sources)
        if dev_sources is not None:
            ds = task_samples(spec, dev_sources, speakers, manifests(dev_sources.manifest))
            dev += [render(task, s, vocab, spec) for s in ds]
            dev_samples += ds
            if cfg.train.dev_mismatched:
                dev_mismatched += mismatched(task, ds, vocab, spec)
    if cfg.train.dev_mismatched and dev_sources is not None and not dev_mismatched:
        log.warning("train.dev_mismatched: no task of %s has a source and two dev examples; no listening gap logged",
                    cfg.data.tasks)
    mixture = Mixture([b - a for a, b in pools.values()], mixture_weights(cfg), cfg.train.seed, names=cfg.data.tasks)
    return Setup(vocab, text, codebook, image_cb, rendered, pools, mixture, dev, dev_samples, dev_mismatched)


def mismatched(task: Task, samples: list[Sample], vocab: Vocab, spec: str) -> list[Rendered]:
    """The dev examples of one task with each source replaced by the next example's (a rotation by one: a fixed
    derangement), the targets kept. Empty for a task without a source (the unpaired LM tasks) or with fewer than
    two examples; an example whose neighbour has the same source tokens stays matched (nothing to swap)."""
    if task.source is None or len(samples) < 2:
        return []
    return [render(task, task.with_source_of(s, samples[(i + 1) % len(samples)]), vocab, spec)
            for i, s in enumerate(samples)]


def check_fits(model, S: Setup) -> None:
    """Refuse examples longer than the model's positions (past them it would train on positions it
    cannot represent, or crash), counting them and naming the longest."""
    limit = model_positions(model)
    for split, rendered in (("training", S.train), ("dev", S.dev), ("mismatched dev", S.dev_mismatched)):
        over = [r for r in rendered if limit is not None and len(r.ids) > limit]
        if over:
            worst = max(over, key=lambda r: len(r.ids))
            raise UserError(f"{len(over)} {split} example(s) are longer than the model's {limit} positions "
                            f"(model.max_positions): the longest, a {worst.task} example, has {len(worst.ids)} "
                            "tokens; raise model.max_positions or leave out the longest records")
