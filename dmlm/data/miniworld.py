"""mini-world: a synchronous grammar of short English sentences with exact es/de/fr translations.

Every sentence is sampled as a structured `scene` first and then *rendered* into four languages
by `render(scene)`; the text is never parsed back. That keeps the scene (which a later stage
draws as an image) and the four strings in lock-step by construction. The word lists live in
`dmlm.data.miniworld_lexicon`; this module holds the grammar, rendering and splitting.

Design decisions:
- **Scene first, words second.** A scene names entities by key (`"ball"`, `"red"`, `"under"`),
  never by surface string, so the image renderer needs no English. `render` is a pure
  function of the scene; tests pin exact outputs for hand-built scenes.
- **Constructions are kept where the grammar can be exact**: singular anchors only, plurals
  always carry a numeral (no bare plurals, so French "des/de" never arises), present tense,
  no separable German verbs, no persons as objects (so Spanish never needs the personal "a";
  animals as objects go without it, the unmarked non-personified reading).
- **Agreement is computed, idioms are stored.** Articles, adjective endings (German weak /
  mixed / strong, Spanish and French gender and number), French elision and `de`/`à`
  contractions, German `in dem -> im` and V2 word order are rules; place and time phrases
  ("am Strand", "à la plage") are stored whole per language because their prepositions are
  lexical, not grammatical.
- **Adjective order**: English and German size before colour ("big red"); Spanish puts both
  after the noun, colour nearest it ("pelota roja grande"); French sizes chosen to be the
  prenominal kind ("grand ballon rouge"). German "orange" uses the declinable
  "orangefarben" attributively; "rosa" stays undeclined.
- **All output is lowercase without final punctuation**, German nouns included, so every
  language has the same casing convention as the ASR target. Lexicon entries keep normal
  casing for readability; `render` lowercases at the end.
- **Splits are built from one seeded stream**: train, then dev, then test, with a global
  set of seen English texts, so splits are disjoint and duplicate-free. A seeded set of
  (colour, object) pairs never occurs in train/dev; 40 % of test sentences are forced to
  contain one. Dev/test sentences using any word absent from train are rejected, so
  generalisation is tested on combinations, never on unseen words.
"""

from __future__ import annotations

import random
from typing import Any

from dmlm.data.corpus import Sentence
from dmlm.data.miniworld_lexicon import (
    COLOURS,
    INTRANSITIVE,
    NOUNS,
    NUMBERS,
    OBJECTS,
    PEOPLE,
    PLACES,
    RELATIONS,
    SIZES,
    TIMES,
    TRANSITIVE,
    Adj,
    Verb,
)
from dmlm.util.errors import UserError

LANGS = ("es", "de", "fr")
HELDOUT_TEST_FRACTION = 0.4  # share of test sentences forced to contain a held-out pair
N_HELDOUT_PAIRS = 24
MIN_WORDS, MAX_WORDS = 5, 12


# -------------------------------------------------------------------------------- rendering

_FR_VOWELS = set("aeiouyàâäéèêëîïôöûüœ")
_FR_H_MUET = {"homme", "hommes", "horloge", "horloges", "hôpital", "hiver"}
_FR_NO_ELISION = {"onze", "huit"}  # vowel-initial but behave like h aspiré
_DE_CONTRACT = {"in": "im", "an": "am", "bei": "beim", "von": "vom", "zu": "zum"}

_DE_ART = {
    ("the", "nom"): {"m": "der", "f": "die", "n": "das", "pl": "die"},
    ("the", "acc"): {"m": "den", "f": "die", "n": "das", "pl": "die"},
    ("the", "dat"): {"m": "dem", "f": "der", "n": "dem", "pl": "den"},
    ("a", "nom"): {"m": "ein", "f": "eine", "n": "ein"},
    ("a", "acc"): {"m": "einen", "f": "eine", "n": "ein"},
    ("a", "dat"): {"m": "einem", "f": "einer", "n": "einem"},
}
# Adjective endings: weak after der/die/das, mixed after ein, strong with no article
# (our only article-less NPs are numeral plurals, but the full table costs nothing).
_DE_ENDINGS = {
    "weak": {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},
             "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
             "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"}},
    "mixed": {"nom": {"m": "er", "f": "e", "n": "es"},
              "acc": {"m": "en", "f": "e", "n": "es"},
              "dat": {"m": "en", "f": "en", "n": "en"}},
    "strong": {"nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},
               "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
               "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"}},
}


def _fr_elides(word: str) -> bool:
    return word not in _FR_NO_ELISION and (word[0].lower() in _FR_VOWELS or word in _FR_H_MUET)


def _adjs(np: dict[str, Any], with_colour: bool = True) -> list[Adj]:
    """The NP's adjectives in English/German order (size before colour)."""
    out = [SIZES[np["size"]]] if np.get("size") else []
    if with_colour and np.get("colour"):
        out.append(COLOURS[np["colour"]])
    return out


def _agr(forms: tuple[str, str, str, str], gender: str, plural: bool) -> str:
    return forms[(2 if plural else 0) + (1 if gender == "f" else 0)]


def _np_en(np: dict[str, Any], with_colour: bool = True) -> str:
    noun = NOUNS[np["kind"]]
    words = [a.key for a in _adjs(np, with_colour)] + [noun.en[np["count"] > 1]]
    if np["det"] == "the":
        det = "the"
    elif np["det"] == "a":
        det = "an" if words[0][0] in "aeiou" else "a"
    else:
        det = NUMBERS[np["count"]][0]
    return " ".join([det, *words])


def _np_es(np: dict[str, Any], with_colour: bool = True) -> str:
    noun = NOUNS[np["kind"]]
    sg, pl, g = noun.es
    plural = np["count"] > 1
    if np["det"] == "the":
        det = {"m": "el", "f": "la"}[g] if not plural else {"m": "los", "f": "las"}[g]
    elif np["count"] == 1:
        det = {"m": "un", "f": "una"}[g]
    else:
        det = NUMBERS[np["count"]][1]
    # Colour sits next to the noun, size after it: "una pelota roja grande".
    adjs = [_agr(a.es, g, plural) for a in reversed(_adjs(np, with_colour))]
    return " ".join([det, pl if plural else sg, *adjs])


def _np_de(np: dict[str, Any], case: str, with_colour: bool = True) -> str:
    noun = NOUNS[np["kind"]]
    sg, pl, g, obl = noun.de
    plural = np["count"] > 1
    slot = "pl" if plural else g
    if np["det"] == "the":
        det, decl = _DE_ART[("the", case)][slot], "weak"
    elif not plural:  # "a" and "one" are both ein/eine
        det, decl = _DE_ART[("a", case)][g], "mixed"
    else:
        det, decl = NUMBERS[np["count"]][2], "strong"
    adjs = [a.de if a.de_indecl else a.de + _DE_ENDINGS[decl][case][slot]
            for a in _adjs(np, with_colour)]
    if plural:
        # Dative plural adds -n unless the plural already ends in -n or -s.
        form = pl + "n" if case == "dat" and not pl.endswith(("n", "s")) else pl
    else:
        form = sg if case == "nom" else obl
    return " ".join([det, *adjs, form])


def _np_fr(np: dict[str, Any], with_colour: bool = True) -> str:
    noun = NOUNS[np["kind"]]
    sg, pl, g = noun.fr
    plural = np["count"] > 1
    size = SIZES[np["size"]] if np.get("size") else None
    colour = COLOURS[np["colour"]] if with_colour and np.get("colour") else None
    words = ([_agr(size.fr, g, plural)] if size else []) + [pl if plural else sg]
    words += [_agr(colour.fr, g, plural)] if colour else []
    if np["det"] == "the":
        if plural:
            det = "les "
        else:
            det = "l'" if _fr_elides(words[0]) else {"m": "le ", "f": "la "}[g]
    elif np["count"] == 1:
        det = {"m": "un ", "f": "une "}[g]
    else:
        det = NUMBERS[np["count"]][3] + " "
    return det + " ".join(words)


def _pp_es(prep: str, np: str) -> str:
    if (prep == "de" or prep.endswith(" de")) and np.startswith("el "):
        return f"{prep[:-2]}del {np[3:]}"
    return f"{prep} {np}"


def _pp_de(prep: str, np: str) -> str:
    *head, last = prep.split()
    if np.startswith("dem ") and last in _DE_CONTRACT:
        return " ".join([*head, _DE_CONTRACT[last], np[4:]])
    return f"{prep} {np}"


def _pp_fr(prep: str, np: str) -> str:
    if prep == "de" or prep.endswith(" de"):
        stem = prep[:-2]
        if np.startswith("le "):
            return f"{stem}du {np[3:]}"
        if np.startswith("les "):
            return f"{stem}des {np[4:]}"
        if _fr_elides(np.split()[0]) and not np.startswith("l'"):
            return f"{stem}d'{np}"
    return f"{prep} {np}"


def _pl(np: dict[str, Any]) -> int:
    """Index into the (singular, plural) pairs of the lexicon."""
    return int(np["count"] > 1)


def render(scene: dict[str, Any]) -> dict[str, str]:
    """Render a scene as {"en", "es", "de", "fr"} sentences: lowercase, no final punctuation.

    Pure and deterministic; the scene's `template` picks the construction and the scene's
    entity keys pick the words.
    """
    t = scene["template"]
    obj = scene["objects"][0] if scene.get("objects") else None
    place = PLACES[scene["place"]] if scene.get("place") else None
    time = TIMES[scene["time"]] if scene.get("time") else None

    def tail(lang: str) -> str:
        return f" {getattr(place, lang)}" if place else ""

    if t in ("locative", "predicate"):
        rel, anc = RELATIONS[scene["relation"]], scene["anchor"]
        es_pp = _pp_es(rel.es, _np_es(anc))
        de_pp = _pp_de(rel.de, _np_de(anc, "dat"))
        fr_pp = _pp_fr(rel.fr, _np_fr(anc))
    if t == "locative":
        n = _pl(obj)
        out = {
            "en": f"{_np_en(obj)} {('is', 'are')[n]} {rel.en} {_np_en(anc)}{tail('en')}",
            "es": f"{_np_es(obj)} {('está', 'están')[n]} {es_pp}{tail('es')}",
            "de": f"{_np_de(obj, 'nom')} {('ist', 'sind')[n]} {de_pp}{tail('de')}",
            "fr": f"{_np_fr(obj)} {('est', 'sont')[n]} {fr_pp}{tail('fr')}",
        }
    elif t == "predicate":
        # The colour is predicated, not attributive: "the big ball under the table is red".
        c, g_es, g_fr = COLOURS[obj["colour"]], NOUNS[obj["kind"]].es[2], NOUNS[obj["kind"]].fr[2]
        out = {
            "en": f"{_np_en(obj, False)} {rel.en} {_np_en(anc)} is {c.key}",
            "es": f"{_np_es(obj, False)} que está {es_pp} es {_agr(c.es, g_es, False)}",
            "de": f"{_np_de(obj, 'nom', False)} {de_pp} ist {c.de_pred or c.de}",
            "fr": f"{_np_fr(obj, False)} {fr_pp} est {_agr(c.fr, g_fr, False)}",
        }
    elif t == "existential":
        n = _pl(obj)
        out = {
            "en": f"there {('is', 'are')[n]} {_np_en(obj)} {place.en}",
            "es": f"hay {_np_es(obj)} {place.es}",
            "de": f"{place.de} gibt es {_np_de(obj, 'acc')}",  # place fronted, verb second
            "fr": f"il y a {_np_fr(obj)} {place.fr}",
        }
    else:
        agent = scene["agent"]
        transitive = t.startswith("transitive")
        verb = (TRANSITIVE if transitive else INTRANSITIVE)[scene["action"]]
        n = _pl(agent)
        subj = {"en": _np_en(agent), "es": _np_es(agent), "de": _np_de(agent, "nom"),
                "fr": _np_fr(agent)}
        comp = {"en": _np_en(obj), "es": _np_es(obj), "de": _np_de(obj, "acc"),
                "fr": _np_fr(obj)} if transitive else {k: "" for k in ("en", "es", "de", "fr")}
        out = {}
        for lang in ("en", "es", "de", "fr"):
            v = getattr(verb, lang)[n]
            words = [subj[lang], v, comp[lang]]
            if time:
                words.insert(0, getattr(time, lang))
                if lang == "de":  # German V2: the verb precedes the subject after a fronted time
                    words[1], words[2] = words[2], words[1]
            out[lang] = " ".join(w for w in words if w) + tail(lang)
    return {k: v.lower() for k, v in out.items()}


# --------------------------------------------------------------------------------- sampling

_TEMPLATES = {  # template -> sampling weight
    "locative": 0.20, "predicate": 0.10, "existential": 0.12, "transitive": 0.10,
    "transitive_place": 0.15, "transitive_time": 0.13, "intransitive_place": 0.11,
    "intransitive_time": 0.09,
}
_OBJECT_TEMPLATES = ("locative", "predicate", "existential", "transitive", "transitive_place",
                     "transitive_time")
_OBJECT_KINDS = [n.key for n in OBJECTS]


def _verb_accepts(verb: Verb, kind: str) -> bool:
    return verb.takes is None or kind in verb.takes or NOUNS[kind].cls in verb.takes


def _sample_np(rng: random.Random, kind: str, dets: dict[str, float],
               p_colour: float, p_size: float, colour: str | None = None) -> dict[str, Any]:
    det = rng.choices(list(dets), weights=list(dets.values()))[0]
    count = {"the": 1, "a": 1, "one": 1}.get(det) or rng.randint(2, 12)
    if colour is None and rng.random() < p_colour:
        colour = rng.choice(list(COLOURS))
    return {"kind": kind, "colour": colour,
            "size": rng.choice(list(SIZES)) if rng.random() < p_size else None,
            "count": count, "definite": det == "the",
            "det": "a" if det == "a" else ("the" if det == "the" else "number")}


def _sample_agent(rng: random.Random) -> dict[str, Any]:
    det = rng.choices(["the", "a", "number"], weights=[0.6, 0.2, 0.2])[0]
    count = rng.randint(2, 5) if det == "number" else 1
    return {"kind": rng.choice(PEOPLE).key, "count": count, "definite": det == "the", "det": det}


def sample_scene(rng: random.Random, force: tuple[str, str] | None = None) -> dict[str, Any]:
    """Sample one scene. `force=(colour, kind)` makes the main object that coloured kind."""
    templates = _OBJECT_TEMPLATES if force else tuple(_TEMPLATES)
    t = rng.choices(templates, weights=[_TEMPLATES[k] for k in templates])[0]
    colour, kind = force if force else (None, None)
    scene: dict[str, Any] = {"template": t, "objects": [], "relation": None, "anchor": None,
                             "place": None, "time": None, "agent": None, "action": None}
    if t in ("locative", "predicate"):
        kind = kind or rng.choice(_OBJECT_KINDS)
        rel = rng.choice([r for r in RELATIONS.values() if set(r.anchors) - {kind}])
        scene["relation"] = rel.key
        anchor_kind = rng.choice([a for a in rel.anchors if a != kind])
        scene["anchor"] = _sample_np(rng, anchor_kind, {"the": 0.8, "a": 0.2}, 0.3, 0.2)
        if t == "locative":
            obj = _sample_np(rng, kind, {"the": 0.5, "number": 0.4, "a": 0.05, "one": 0.05},
                             0.6, 0.45, colour)
            if rng.random() < 0.25:
                scene["place"] = rng.choice(list(PLACES))
        else:  # predicate: a definite singular subject whose colour is the predicate
            obj = _sample_np(rng, kind, {"the": 1.0}, 1.0, 0.4, colour)
        scene["objects"] = [obj]
    elif t == "existential":
        kind = kind or rng.choice(_OBJECT_KINDS)
        scene["objects"] = [_sample_np(rng, kind, {"a": 0.45, "one": 0.1, "number": 0.45},
                                       0.6, 0.45, colour)]
        scene["place"] = rng.choice(list(PLACES))
    else:
        scene["agent"] = _sample_agent(rng)
        if t.startswith("transitive"):
            verbs = [v for v in TRANSITIVE.values() if kind is None or _verb_accepts(v, kind)]
            verb = rng.choice(verbs)
            kind = kind or rng.choice([k for k in _OBJECT_KINDS if _verb_accepts(verb, k)])
            scene["objects"] = [_sample_np(rng, kind, {"the": 0.4, "a": 0.3, "number": 0.3},
                                           0.6, 0.45, colour)]
            if t == "transitive_place":
                scene["place"] = rng.choice(list(PLACES))
        else:
            verb = rng.choice(list(INTRANSITIVE.values()))
            scene["place"] = rng.choice(sorted(verb.takes) if verb.takes else list(PLACES))
        scene["action"] = verb.key
        if t.endswith("_time"):
            scene["time"] = rng.choice(list(TIMES))
    return scene


def colour_pairs(scene: dict[str, Any]) -> set[tuple[str, str]]:
    """All (colour, object kind) combinations a scene shows, in any slot."""
    nps = list(scene.get("objects") or []) + ([scene["anchor"]] if scene.get("anchor") else [])
    return {(np["colour"], np["kind"]) for np in nps if np.get("colour")}


def heldout_pairs(seed: int = 0) -> list[tuple[str, str]]:
    """The (colour, object) pairs that never occur in train or dev for this seed."""
    rng = random.Random(f"miniworld-heldout-{seed}")
    # Each object contributes at most one pair, so every object keeps 11 colours in train.
    kinds = rng.sample(_OBJECT_KINDS, N_HELDOUT_PAIRS)
    return sorted((rng.choice(list(COLOURS)), k) for k in kinds)


def vocabulary() -> set[str]:
    """Every English word the grammar can produce."""
    words = {"the", "a", "an", "is", "are", "there"}
    words |= {NUMBERS[n][0] for n in NUMBERS} | set(COLOURS) | set(SIZES)
    for n in NOUNS.values():
        words |= set(n.en)
    for v in list(TRANSITIVE.values()) + list(INTRANSITIVE.values()):
        words |= set(v.en)
    for p in list(PLACES.values()) + list(TIMES.values()):
        words |= set(p.en.split())
    for r in RELATIONS.values():
        words |= set(r.en.split())
    return words


def _make(split: str, i: int, scene: dict[str, Any], held: set[tuple[str, str]]) -> Sentence:
    out = render(scene)
    return Sentence(
        id=f"mw-{split}-{i:06d}",
        text=out.pop("en"),
        translations=out,
        custom={"scene": scene, "template": scene["template"],
                "heldout_combo": bool(colour_pairs(scene) & held)},
    )


class MiniWorldError(UserError, RuntimeError):
    """The requested split sizes cannot be sampled (a `UserError`: the CLI reports it in one line)."""


def generate_splits(n_train: int, n_dev: int, n_test: int,
                    seed: int = 0, n_unpaired: int = 0) -> dict[str, list[Sentence]]:
    """Sample disjoint train/dev/test splits; test probes held-out colour-object pairs.

    `n_unpaired` > 0 adds an `unpaired` split: more training sentences (with translations)
    drawn after test, disjoint from every split and free of held-out pairs, for text-only
    (unpaired) training. The other splits do not depend on it.

    Deterministic for a seed. Raises `MiniWorldError` (a `RuntimeError`) if the requested sizes cannot
    be met (e.g. a train split too small to cover the words dev and test need).
    """
    rng = random.Random(seed)
    held = set(heldout_pairs(seed))
    held_list = sorted(held)
    seen: set[str] = set()
    train_words: set[str] = set()

    def draw(n: int, force: bool, need_known_words: bool, split: str) -> list[dict[str, Any]]:
        scenes: list[dict[str, Any]] = []
        for _ in range(50 * n + 1000):
            if len(scenes) == n:
                break
            scene = sample_scene(rng, rng.choice(held_list) if force else None)
            if bool(colour_pairs(scene) & held) != force:
                continue
            text = render(scene)["en"]
            words = text.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS or text in seen:
                continue
            if need_known_words and not set(words) <= train_words:
                continue
            seen.add(text)
            scenes.append(scene)
        if len(scenes) < n:
            known = f" whose words all occur in the {n_train} training sentences" if need_known_words else ""
            raise MiniWorldError(f"mini-world: could only sample {len(scenes)} of the {n} {split} sentences{known}; "
                                 "ask for fewer (prepare n_dev=, n_test=) or more training sentences (n_train=)")
        return scenes

    train = draw(n_train, force=False, need_known_words=False, split="train")
    for s in train:
        train_words.update(render(s)["en"].split())
    dev = draw(n_dev, force=False, need_known_words=True, split="dev")
    n_forced = round(HELDOUT_TEST_FRACTION * n_test)
    test = draw(n_forced, force=True, need_known_words=True, split="test (held-out pairs)")
    test += draw(n_test - n_forced, force=False, need_known_words=True, split="test")
    rng.shuffle(test)
    splits = [("train", train), ("dev", dev), ("test", test)]
    if n_unpaired:
        splits.append(("unpaired", draw(n_unpaired, force=False, need_known_words=False, split="unpaired")))
    return {split: [_make(split, i, sc, held) for i, sc in enumerate(scenes)] for split, scenes in splits}
