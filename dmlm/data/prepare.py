"""`dmlm prepare NAME`: turn a text corpus into a speech corpus (manifests + 16 kHz wavs).

Layout written under `out_dir`:
    wav/<id>.wav
    img/<id>.png                          (mini-world scenes that can be drawn; digits)
    train.jsonl  dev.jsonl  test.jsonl   (paths relative to the manifest)
    unpaired.jsonl  neural_extra.jsonl   (mini-world, bible: `n_unpaired` text-only sentences; the first
                                          `neural_extra` of them spoken in the neural voice)
    test_domain.jsonl                     (bible, `n_test_domain`: held-out-domain sentences, not scripture,
                                          spoken like test; for testing only)
    prepare.json                          (the settings, so a re-run with others is refused)

The test split holds every test sentence twice: once in a training voice, once in the
held-out voice (`custom.heldout_voice = true`, id suffix `-hv`); metrics are reported for
each group separately. Re-running continues where synthesis stopped.

Images: a mini-world record whose scene is visual (`dmlm.data.scenes.is_visual`) gets
`image` (its drawn scene) and `caption` (its English text, so text, speech and images share
one vocabulary). The held-out-voice copy of a test sentence points at the same image file:
one sentence, one picture. Images are drawn after synthesis and before the manifests are
written; a folder prepared without them gets them on the next run (`images` is not part of
the settings a re-run must match), and an image already on disk is never drawn again.
The `digits` corpus is images only (no audio): `dmlm.data.digits`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dmlm.data.corpus import Sentence
from dmlm.data.manifest import HELDOUT_VOICE, Record, is_heldout_voice, read_manifest, write_manifest
from dmlm.data.synth import (NEURAL_VOICE, Voice, check_voice, draw_language_voice, draw_voice, synthesize_many,
                              training_voices)
from dmlm.util.errors import UserError
from dmlm.util.io import atomic_write_json


@dataclass
class PrepareConfig:
    corpus: str = "mini-world"
    """Corpus name: mini-world (closed vocabulary, es/de/fr translations, scene images), bible (open vocabulary, es) or digits (captioned images, no audio)."""
    n_train: int = 8000
    """Number of training sentences."""
    n_dev: int = 300
    """Number of dev sentences."""
    n_test: int = 500
    """Number of test sentences (each also spoken by the held-out voice)."""
    seed: int = 0
    """Seed for sentences, splits and voices."""
    workers: int = 2
    """Parallel espeak-ng processes."""
    images: bool = True
    """Draw mini-world scenes as 64x64 images (img/<id>.png) and set the records' image and caption."""
    neural_share: float = 0.0
    """Share of training-voice utterances (train, dev, and the test split's training-voice copy) spoken by the
    offline neural voice (`piper:en_US-joe-medium`) instead of a drawn espeak-ng voice; the held-out voice
    is never it. 0 keeps every draw as in corpora made before the neural voice existed."""
    n_unpaired: int = 0
    """mini-world, bible: also write unpaired.jsonl, this many more sentences as text only (with translations, no
    audio), disjoint from every split: unpaired text for mixed supervision. mini-world: free of held-out pairs.
    bible: verses of any length (no max_words) from the chapters train draws from, none a sentence of the held-out
    domain (`dmlm.data.bible.unpaired_verses`)."""
    neural_extra: int = 0
    """mini-world: also speak the first this many unpaired sentences (so n_unpaired must be at least as large)
    in the neural voice, into neural_extra.jsonl (`custom.vocoder_only`): more audio in the output voice for
    the vocoder alone (`dmlm vocoder train --manifest`); no training task reads it."""
    n_unpaired_speech: int = 0
    """mini-world: speak the last this many of the `n_unpaired` sentences (drawn training voices) into
    unpaired_speech.jsonl, audio only, no text: unpaired speech for mixed supervision (speech_lm), disjoint from
    every paired split. They leave unpaired.jsonl, so no modality of theirs is paired with another."""
    n_unpaired_images: int = 0
    """mini-world: draw the scenes of the this many unpaired sentences before those into unpaired_images.jsonl,
    images only, no caption: unpaired images (image_lm). They leave unpaired.jsonl too."""
    max_words: int = 0
    """bible: only verses of at most this many words (0: the corpus's own limit, 20). Shorter verses are shorter
    token sequences: more utterances per CPU minute (configs/studies/init.yaml)."""
    n_test_domain: int = 0
    """bible: also write test_domain.jsonl, this many sentences of a held-out text domain that is not scripture
    (`dmlm.data.heldout_domain`: The Devil's Dictionary, public domain; at most max_words words, 0: 20), spoken like
    the test split (training-voice draws with neural_share, and a held-out-voice copy each), none of them a
    sentence of train, dev or test. For testing only: no training task reads it. 0: not written."""
    speech_langs: list[str] = field(default_factory=list)
    """mini-world: also speak every sentence's translation in these languages (es, de, fr; espeak-ng voices of
    each, and a held-out voice per language in test) as records of their own (id `<sentence>-<lang>`, `lang` and
    `text` in that language, `translations` holding the others); every record of a sentence names its
    recordings in `custom.parallel` (S2ST). Empty: English speech only, as before."""
    extra_voices: list[str] = field(default_factory=list)
    """English training voices of engines beyond espeak-ng and the neural voice, drawn (uniformly among them) for a
    share `extra_share` of training-voice utterances: CMU Flite's flite:slt, flite:rms, flite:awb, flite:kal16
    (Debian `flite`; docs/design/data.md, "Voices beyond espeak-ng"). Empty: the draws of corpora made before."""
    extra_share: float = 0.0
    """Share of training-voice utterances spoken by one of `extra_voices` (> 0 with them, 0 without; neural_share +
    extra_share <= 1); the rest are espeak-ng's."""
    heldout_speaker: str = ""
    """The held-out voice, which speaks the test split's second copy (and test_domain's): any voice no training
    draw uses, e.g. flite:awb, a speaker of an engine the model never heard. "": espeak-ng's en-gb+f4, as before."""


def _corpus_fn(name: str) -> Callable[..., dict[str, list[Sentence]]]:
    if name == "mini-world":
        from dmlm.data import miniworld

        return miniworld.generate_splits
    if name == "bible":
        from dmlm.data import bible

        return bible.generate_splits
    raise UserError(f"unknown corpus {name!r}; expected one of: {', '.join(CORPORA)}")


CORPORA = ("mini-world", "bible", "digits")
IMAGE_CORPORA = ("digits",)  # images with captions, no audio
_RERUN_FREE = ("workers", "images", "n_unpaired", "neural_extra", "n_test_domain")  # settings a re-run may change: they add outputs, never alter them


def check_settings(cfg: PrepareConfig) -> None:
    """Settings that cannot make a corpus, refused by name before anything is written."""
    sizes = {"n_train": cfg.n_train, "n_dev": cfg.n_dev, "n_test": cfg.n_test, "n_unpaired": cfg.n_unpaired}
    bad = {k: v for k, v in sizes.items() if v < 0 or (k == "n_train" and v < 1)}
    if bad:  # a negative count would slice from the end (n_train=-3 wrote 810 records)
        raise UserError(f"prepare.{next(iter(bad))}: must be {'>= 1' if 'n_train' in bad else '>= 0'} sentences, "
                        f"got {next(iter(bad.values()))}")
    if not 0.0 <= cfg.neural_share <= 1.0:
        raise UserError(f"prepare.neural_share must be within [0, 1], got {cfg.neural_share}")
    media = cfg.n_unpaired_speech + cfg.n_unpaired_images
    if min(cfg.n_unpaired_speech, cfg.n_unpaired_images) < 0 or media > cfg.n_unpaired:
        raise UserError(f"prepare.n_unpaired_speech + n_unpaired_images take unpaired sentences, so they must be "
                        f">= 0 and sum to at most n_unpaired = {cfg.n_unpaired}, got {cfg.n_unpaired_speech} + "
                        f"{cfg.n_unpaired_images}")
    bad_langs = [lg for lg in cfg.speech_langs if lg not in ("es", "de", "fr")]
    if bad_langs or (cfg.speech_langs and cfg.corpus != "mini-world"):
        raise UserError(f"prepare.speech_langs: mini-world speaks es, de and fr, got {cfg.speech_langs} "
                        f"for corpus {cfg.corpus}")
    if cfg.max_words < 0 or (cfg.max_words and cfg.corpus != "bible"):
        raise UserError(f"prepare.max_words: a word limit on bible verses (>= 1, or 0 for the corpus's own), got "
                        f"{cfg.max_words} for corpus {cfg.corpus}")
    if (cfg.n_unpaired_speech or cfg.n_unpaired_images or cfg.neural_extra) and cfg.corpus != "mini-world":
        raise UserError(f"prepare.n_unpaired_speech, n_unpaired_images, neural_extra: mini-world's unpaired audio and "
                        f"scenes, got {cfg.n_unpaired_speech}, {cfg.n_unpaired_images}, {cfg.neural_extra} for corpus "
                        f"{cfg.corpus}")
    if cfg.n_test_domain < 0 or (cfg.n_test_domain and cfg.corpus != "bible"):
        raise UserError(f"prepare.n_test_domain: held-out-domain test sentences for the bible corpus (>= 0), got "
                        f"{cfg.n_test_domain} for corpus {cfg.corpus}")
    if not 0 <= cfg.neural_extra <= cfg.n_unpaired - media:
        raise UserError(f"prepare.neural_extra speaks unpaired text sentences, so it must be within [0, n_unpaired - "
                         f"n_unpaired_speech - n_unpaired_images = {cfg.n_unpaired - media}], got {cfg.neural_extra}")
    _check_voices(cfg)


def _check_voices(cfg: PrepareConfig) -> None:
    """extra_voices, extra_share, heldout_speaker: known voices, new to training, and a held-out voice no training
    draw uses."""
    for name in cfg.extra_voices:
        check_voice(name, "prepare.extra_voices")
    if cfg.heldout_speaker:
        check_voice(cfg.heldout_speaker, "prepare.heldout_speaker")
    if (cfg.extra_share > 0) != bool(cfg.extra_voices) or cfg.extra_share < 0 or cfg.neural_share + cfg.extra_share > 1:
        raise UserError(f"prepare.extra_share: the share of training utterances spoken by extra_voices, > 0 with them "
                        f"and 0 without, at most 1 - neural_share; got {cfg.extra_share} with extra_voices = "
                        f"{cfg.extra_voices} and neural_share = {cfg.neural_share}")
    drawn = {*training_voices(), NEURAL_VOICE}
    if len(set(cfg.extra_voices)) != len(cfg.extra_voices) or drawn & set(cfg.extra_voices):
        raise UserError(f"prepare.extra_voices: each a voice the draws have not got already, once (the neural voice "
                        f"comes with neural_share, espeak-ng's training voices anyway), got {cfg.extra_voices}")
    if cfg.heldout_speaker in drawn | set(cfg.extra_voices):
        raise UserError(f"prepare.heldout_speaker: {cfg.heldout_speaker!r} is a training voice; the held-out voice "
                        f"must be one that no training draw uses")
    if (cfg.extra_voices or cfg.heldout_speaker) and cfg.corpus in IMAGE_CORPORA:
        raise UserError(f"prepare.extra_voices, heldout_speaker: voices of a speech corpus, not of {cfg.corpus}")


def _voices(cfg: PrepareConfig) -> dict:
    """`draw_voice`'s settings for English speech: the training voices' shares and the held-out voice."""
    return {"neural_share": cfg.neural_share, "extra": tuple(cfg.extra_voices), "extra_share": cfg.extra_share,
            "heldout_speaker": cfg.heldout_speaker}


def prepare(cfg: PrepareConfig, out_dir: str | Path) -> dict[str, Path]:
    """Synthesize the corpus into `out_dir`; returns {split: manifest path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "prepare.json"
    settings = asdict(cfg)
    if cfg.corpus not in CORPORA:
        raise UserError(f"unknown corpus {cfg.corpus!r}; expected one of: {', '.join(CORPORA)}")
    check_settings(cfg)
    if settings_path.is_file():
        old = {**asdict(PrepareConfig()), **json.loads(settings_path.read_text())}  # keys added since: defaults
        if {k: v for k, v in old.items() if k not in _RERUN_FREE} != {k: v for k, v in settings.items()
                                                                      if k not in _RERUN_FREE}:
            raise UserError(
                f"{settings_path}: this folder was prepared with other settings ({old}); "
                f"use another output folder or delete it"
            )
    atomic_write_json(settings_path, settings, indent=2)

    manifests = {s: out / f"{s}.jsonl" for s in ("train", "dev", "test")}
    if cfg.corpus in IMAGE_CORPORA:
        return _prepare_digits(cfg, out, manifests)
    if cfg.n_unpaired and cfg.corpus not in ("mini-world", "bible"):
        raise UserError(f"prepare.n_unpaired: only mini-world and bible generate unpaired text, not {cfg.corpus}")
    if all(p.is_file() for p in manifests.values()):
        if cfg.images and cfg.corpus == "mini-world":
            for path in manifests.values():  # the splits: unpaired text and the vocoder's audio have no scenes
                records = read_manifest(path)
                with_images = add_scene_images(records, out)
                if with_images != records:
                    write_manifest(path, with_images)
        if cfg.n_unpaired:
            manifests["unpaired"] = _write_unpaired(cfg, out)
            manifests.update(_write_unpaired_media(cfg, out))
        if cfg.neural_extra:
            manifests["neural_extra"] = _write_neural_extra(cfg, out, manifests["unpaired"])
        if cfg.n_test_domain:
            manifests["test_domain"] = _write_test_domain(cfg, out, manifests)
        return manifests

    splits = _generate_splits(cfg)
    unpaired = splits.pop("unpaired", None)
    rng = random.Random(cfg.seed + 1)
    plan: dict[str, list[tuple[Sentence, Voice, str, bool]]] = {}
    for split, sentences in splits.items():
        rows = [(s, draw_voice(rng, **_voices(cfg)), s.id, False) for s in sentences]
        if split == "test":
            rows += [(s, draw_voice(rng, heldout=True, **_voices(cfg)), f"{s.id}-hv", True) for s in sentences]
        plan[split] = [(s, v, uid, held, "en") for s, v, uid, held in rows]
    _plan_languages(cfg, splits, plan)

    jobs = [(_spoken(s, lang), v, out / "wav" / f"{uid}.wav") for rows in plan.values() for s, v, uid, _, lang in rows]
    durations = iter(synthesize_many(jobs, workers=cfg.workers, desc=f"synthesize {cfg.corpus}"))
    for split, rows in plan.items():
        records = [_speech_record(cfg, split, row, next(durations)) for row in rows]
        if cfg.images and cfg.corpus == "mini-world":
            records = add_scene_images(records, out)
        write_manifest(manifests[split], records)
    if cfg.n_unpaired:
        manifests["unpaired"] = _write_unpaired(cfg, out, unpaired)
        manifests.update(_write_unpaired_media(cfg, out, unpaired))
    if cfg.neural_extra:
        manifests["neural_extra"] = _write_neural_extra(cfg, out, manifests["unpaired"])
    if cfg.n_test_domain:
        manifests["test_domain"] = _write_test_domain(cfg, out, manifests)
    return manifests


def _generate_splits(cfg: PrepareConfig) -> dict[str, list[Sentence]]:
    """The corpus's sentences by split (`unpaired` too, with n_unpaired); deterministic in the settings."""
    extra: dict = {"n_unpaired": cfg.n_unpaired} if cfg.n_unpaired else {}
    if cfg.max_words:
        extra["max_words"] = cfg.max_words
    if cfg.n_unpaired and cfg.n_test_domain:  # every sentence of the domain, any length: no count can add one
        from dmlm.data import heldout_domain

        extra["unpaired_exclude"] = {r["text"] for r in heldout_domain.all_sentences()}
    return _corpus_fn(cfg.corpus)(cfg.n_train, cfg.n_dev, cfg.n_test, seed=cfg.seed, **extra)


def _spoken(s: Sentence, lang: str) -> str:
    return s.text if lang == "en" else s.translations[lang]


def _plan_languages(cfg: PrepareConfig, splits: dict[str, list[Sentence]], plan: dict[str, list]) -> None:
    """Add each sentence's recordings in `cfg.speech_langs` to `plan` (their own voice draws, from their own
    seed, so the English draws stay those of a corpus without them); test also in each language's held-out voice."""
    for lang in cfg.speech_langs:
        rng = random.Random(cfg.seed + 10 + ("es", "de", "fr").index(lang))
        for split, sentences in splits.items():
            rows = [(s, draw_language_voice(rng, lang), f"{s.id}-{lang}", False, lang) for s in sentences]
            if split == "test":
                rows += [(s, draw_language_voice(rng, lang, heldout=True), f"{s.id}-{lang}-hv", True, lang)
                         for s in sentences]
            plan[split] += rows


def _speech_record(cfg: PrepareConfig, split: str, row: tuple, duration: float) -> Record:
    """The manifest record of one planned recording (a sentence in `lang`, spoken by `v`)."""
    s, v, uid, heldout, lang = row
    custom = dict(s.custom)
    custom.update(voice=asdict(v), heldout_voice=heldout)
    translations = dict(s.translations)
    if cfg.speech_langs:  # every recording of the sentence, by language (training voices: the S2ST targets)
        custom["parallel"] = {"en": s.id, **{lg: f"{s.id}-{lg}" for lg in cfg.speech_langs}}
    if lang != "en":
        translations = {"en": s.text, **{lg: t for lg, t in translations.items() if lg != lang}}
    return Record(id=uid, split=split, lang=lang, audio=f"wav/{uid}.wav", duration=round(duration, 3),
                  text=_spoken(s, lang), translations=translations or None, speaker=v.speaker, custom=custom)


def _write_unpaired(cfg: PrepareConfig, out: Path, sentences: list[Sentence] | None = None) -> Path:
    """unpaired.jsonl: text-only records (English + translations) for text_lm tasks."""
    path = out / "unpaired.jsonl"
    n_text = cfg.n_unpaired - cfg.n_unpaired_speech - cfg.n_unpaired_images
    if path.is_file() and cfg.corpus == "mini-world" and sum(1 for _ in path.open()) == n_text:
        return path
    # bible's are drawn again on every run (a second): adding n_test_domain to a prepared folder may drop some
    sentences = (sentences if sentences is not None else _unpaired_sentences(cfg))[:n_text]
    if path.is_file() and [r.id for r in read_manifest(path)] == [s.id for s in sentences]:
        return path
    write_manifest(path, [Record(id=s.id, split="train", lang="en", text=s.text, translations=dict(s.translations),
                                 custom={"unpaired": True}) for s in sentences])
    return path


def _unpaired_sentences(cfg: PrepareConfig) -> list[Sentence]:
    """A folder prepared before: the splits drawn again (deterministic) for their unpaired part."""
    return _generate_splits(cfg)["unpaired"]


def _write_unpaired_media(cfg: PrepareConfig, out: Path, sentences: list[Sentence] | None = None) -> dict[str, Path]:
    """unpaired_speech.jsonl (audio only) and unpaired_images.jsonl (images only) from the unpaired sentences
    after the text-only ones: each sentence in one modality alone. Resumes like the splits."""
    from dmlm.data.scenes import draw_scene, is_visual
    from dmlm.util.images import save_image

    n_text = cfg.n_unpaired - cfg.n_unpaired_speech - cfg.n_unpaired_images
    paths: dict[str, Path] = {}
    if cfg.n_unpaired_images:
        path = paths["unpaired_images"] = out / "unpaired_images.jsonl"
        if not path.is_file():
            sentences = sentences if sentences is not None else _unpaired_sentences(cfg)
            records = []
            for s in sentences[n_text : n_text + cfg.n_unpaired_images]:
                scene = s.custom.get("scene")
                if not scene or not is_visual(scene):
                    continue
                rel = f"img/{s.id}-ui.png"
                if not (out / rel).is_file():
                    save_image(out / rel, draw_scene(scene, 64))
                records.append(Record(id=f"{s.id}-ui", split="train", image=rel, custom={"unpaired": True}))
            write_manifest(path, records)
    if cfg.n_unpaired_speech:
        path = paths["unpaired_speech"] = out / "unpaired_speech.jsonl"
        if not path.is_file():
            sentences = sentences if sentences is not None else _unpaired_sentences(cfg)
            rng = random.Random(cfg.seed + 3)  # its own draws: the splits' voices are untouched
            rows = [(s, draw_voice(rng, **_voices(cfg)), f"{s.id}-us")
                    for s in sentences[cfg.n_unpaired - cfg.n_unpaired_speech :]]
            jobs = [(s.text, v, out / "wav" / f"{uid}.wav") for s, v, uid in rows]
            durations = synthesize_many(jobs, workers=cfg.workers, desc="synthesize unpaired speech")
            write_manifest(path, [Record(id=uid, split="train", lang="en", audio=f"wav/{uid}.wav", duration=round(d, 3),
                                         speaker=v.speaker, custom={"voice": asdict(v), "unpaired": True})
                                  for (s, v, uid), d in zip(rows, durations)])
    return paths


def _write_neural_extra(cfg: PrepareConfig, out: Path, unpaired: Path) -> Path:
    """neural_extra.jsonl: the first `cfg.neural_extra` unpaired sentences spoken in the neural voice
    (voices drawn from their own seed: the splits' draws are untouched). Resumes like the splits."""
    path = out / "neural_extra.jsonl"
    if path.is_file() and sum(1 for _ in path.open()) == cfg.neural_extra:
        return path
    rng = random.Random(cfg.seed + 2)
    rows = [(s, draw_voice(rng, neural_share=1.0), f"{s.id}-voc") for s in read_manifest(unpaired)[: cfg.neural_extra]]
    jobs = [(s.text, v, out / "wav" / f"{uid}.wav") for s, v, uid in rows]
    durations = synthesize_many(jobs, workers=cfg.workers, desc="synthesize neural_extra")
    write_manifest(path, [Record(id=uid, split="train", lang="en", audio=f"wav/{uid}.wav", duration=round(d, 3),
                                 text=s.text, speaker=v.speaker,
                                 custom={"voice": asdict(v), HELDOUT_VOICE: False, "vocoder_only": True})
                          for (s, v, uid), d in zip(rows, durations)])
    return path


def _write_test_domain(cfg: PrepareConfig, out: Path, manifests: dict[str, Path]) -> Path:
    """test_domain.jsonl: `cfg.n_test_domain` held-out-domain sentences (none with the text of a train, dev or
    test record) spoken like the test split: a training-voice draw each, then a held-out-voice copy each. Voices
    come from seeds of their own (the splits' draws are untouched), drawn in the domain's draw order, so a larger
    count extends a smaller one's records and its wavs. Resumes like the splits."""
    from dmlm.data import heldout_domain

    path = out / "test_domain.jsonl"
    if path.is_file() and sum(1 for _ in path.open()) == 2 * cfg.n_test_domain:
        return path
    taken = {r.text for split in ("train", "dev", "test") for r in read_manifest(manifests[split])}
    limit = {"max_words": cfg.max_words} if cfg.max_words else {}
    sentences = heldout_domain.draw(cfg.n_test_domain, seed=cfg.seed, exclude=taken, **limit)
    seen_rng, held_rng = random.Random(cfg.seed + 4), random.Random(cfg.seed + 5)
    rows = [(s, draw_voice(seen_rng, **_voices(cfg)), s.id, False, "en") for s in sentences]
    rows += [(s, draw_voice(held_rng, heldout=True, **_voices(cfg)), f"{s.id}-hv", True, "en") for s in sentences]
    jobs = [(s.text, v, out / "wav" / f"{uid}.wav") for s, v, uid, _, _ in rows]
    durations = synthesize_many(jobs, workers=cfg.workers, desc="synthesize test_domain")
    write_manifest(path, [_speech_record(cfg, "test", row, d) for row, d in zip(rows, durations)])
    return path


def add_scene_images(records: list[Record], out: Path, size: int = 64) -> list[Record]:
    """Records with `image` + `caption` set where the scene is visual; draws missing images.

    A test record in the held-out voice (`custom.heldout_voice`, id `<sentence id>-hv`)
    shares its sentence's image.
    """
    from dmlm.data.scenes import draw_scene, is_visual
    from dmlm.util.images import save_image

    result = []
    for r in records:
        scene = r.custom.get("scene")
        if not scene or not is_visual(scene) or (r.lang or "en") != "en":  # one picture: on the English record
            result.append(r)
            continue
        name = r.id.removesuffix("-hv") if is_heldout_voice(r) else r.id
        rel = f"img/{name}.png"
        if not (out / rel).is_file():
            save_image(out / rel, draw_scene(scene, size))
        result.append(replace(r, image=rel, caption=r.text))
    return result


def _prepare_digits(cfg: PrepareConfig, out: Path, manifests: dict[str, Path]) -> dict[str, Path]:
    """Images + captions of `dmlm.data.digits`; no audio, so `text` stays empty: the caption is the text."""
    from dmlm.data import digits
    from dmlm.util.images import save_image

    if all(p.is_file() for p in manifests.values()):
        return manifests
    for split, examples in digits.generate_splits(cfg.n_train, cfg.n_dev, cfg.n_test, seed=cfg.seed).items():
        records = []
        for ex in examples:
            rel = f"img/{ex.id}.png"
            if not (out / rel).is_file():
                save_image(out / rel, ex.image)
            records.append(Record(id=ex.id, split=split, lang="en", image=rel, caption=ex.caption, custom=ex.custom))
        write_manifest(manifests[split], records)
    return manifests
