"""mini-world grammar: split invariants, held-out combinations, and exact translations."""

from __future__ import annotations

import json
import re
import time

import pytest

from dmlm.data.miniworld import (
    LANGS,
    NOUNS,
    colour_pairs,
    generate_splits,
    heldout_pairs,
    render,
    vocabulary,
)


@pytest.fixture(scope="module")
def splits():
    return generate_splits(8000, 300, 500, seed=0)


def _words(sentences) -> set[str]:
    return {w for s in sentences for w in s.text.split()}


def _np(kind, count=1, det="the", colour=None, size=None):
    return {"kind": kind, "colour": colour, "size": size, "count": count,
            "definite": det == "the", "det": det}


def _scene(template, objects=(), relation=None, anchor=None, place=None, time=None,
           agent=None, action=None):
    return {"template": template, "objects": list(objects), "relation": relation,
            "anchor": anchor, "place": place, "time": time, "agent": agent, "action": action}


EXACT = [
    (_scene("locative", [_np("ball", colour="red", size="big")], "under", _np("table")), {
        "en": "the big red ball is under the table",
        "es": "la pelota roja grande está debajo de la mesa",
        "de": "der große rote ball ist unter dem tisch",
        "fr": "le grand ballon rouge est sous la table"}),
    (_scene("locative", [_np("cup", 3, "number", "blue", "small")], "next_to",
            _np("box", colour="green")), {
        "en": "three small blue cups are next to the green box",
        "es": "tres tazas azules pequeñas están al lado de la caja verde",
        "de": "drei kleine blaue tassen sind neben der grünen kiste",
        "fr": "trois petites tasses bleues sont à côté de la boîte verte"}),
    # French elision of "de" and the adjective-initial article, German dative after "ein".
    (_scene("locative", [_np("mouse", det="a", colour="grey")], "far_from",
            _np("tree", det="a", size="huge")), {
        "en": "a grey mouse is far from a huge tree",
        "es": "un ratón gris está lejos de un árbol enorme",
        "de": "eine graue maus ist weit weg von einem riesigen baum",
        "fr": "une souris grise est loin d'un énorme arbre"}),
    # German "in dem" -> "im"; a place phrase appended.
    (_scene("locative", [_np("key")], "inside", _np("basket"), place="kitchen"), {
        "en": "the key is inside the basket in the kitchen",
        "es": "la llave está dentro de la cesta en la cocina",
        "de": "der schlüssel ist im korb in der küche",
        "fr": "la clé est dans le panier dans la cuisine"}),
    (_scene("transitive_place", [_np("dog", 2, "number", "yellow")], place="garden",
            agent=_np("teacher"), action="see"), {
        "en": "the teacher sees two yellow dogs in the garden",
        "es": "el profesor ve dos perros amarillos en el jardín",
        "de": "der lehrer sieht zwei gelbe hunde im garten",
        "fr": "le professeur voit deux chiens jaunes dans le jardin"}),
    # German V2 after a fronted time; neuter mixed declension.
    (_scene("transitive_time", [_np("house", det="a", size="small")], time="morning",
            agent=_np("girl"), action="paint"), {
        "en": "in the morning the girl paints a small house",
        "es": "por la mañana la niña pinta una casa pequeña",
        "de": "am morgen malt das mädchen ein kleines haus",
        "fr": "le matin la fille peint une petite maison"}),
    # German weak noun in the accusative; English "an".
    (_scene("transitive", [_np("elephant", det="a")], agent=_np("woman"), action="watch"), {
        "en": "the woman watches an elephant",
        "es": "la mujer mira un elefante",
        "de": "die frau beobachtet einen elefanten",
        "fr": "la femme regarde un éléphant"}),
    # German place-fronted existential; "orange" attributive vs. invariable elsewhere.
    (_scene("existential", [_np("elephant", det="a", colour="orange")], place="zoo"), {
        "en": "there is an orange elephant at the zoo",
        "es": "hay un elefante naranja en el zoológico",
        "de": "im zoo gibt es einen orangefarbenen elefanten",
        "fr": "il y a un éléphant orange au zoo"}),
    # Predicative colour agrees with the subject; "de le" -> "du", "bei dem" -> "beim".
    (_scene("predicate", [_np("cat", colour="white", size="huge")], "near", _np("bed")), {
        "en": "the huge cat near the bed is white",
        "es": "el gato enorme que está cerca de la cama es blanco",
        "de": "die riesige katze nahe beim bett ist weiß",
        "fr": "l'énorme chat près du lit est blanc"}),
    (_scene("intransitive_time", place="park", time="night", agent=_np("boy", 2, "number"),
            action="sleep"), {
        "en": "at night two boys sleep in the park",
        "es": "por la noche dos niños duermen en el parque",
        "de": "in der nacht schlafen zwei jungen im park",
        "fr": "la nuit deux garçons dorment dans le parc"}),
]


@pytest.mark.parametrize("scene,expected", EXACT, ids=[e["en"] for _, e in EXACT])
def test_render_exact(scene, expected):
    assert render(scene) == expected


def test_deterministic_for_a_seed():
    a, b = generate_splits(500, 50, 100, seed=3), generate_splits(500, 50, 100, seed=3)
    assert a == b
    c = generate_splits(500, 50, 100, seed=4)
    assert [s.text for s in a["train"]] != [s.text for s in c["train"]]


def test_ids_and_sizes(splits):
    for split, n in (("train", 8000), ("dev", 300), ("test", 500)):
        assert len(splits[split]) == n
        assert [s.id for s in splits[split]] == [f"mw-{split}-{i:06d}" for i in range(n)]


def test_splits_disjoint_and_duplicate_free(splits):
    texts = [s.text for ss in splits.values() for s in ss]
    assert len(texts) == len(set(texts))


def test_heldout_pairs_never_in_train_or_dev(splits):
    held = set(heldout_pairs(0))
    assert len(held) >= 10
    for s in splits["train"] + splits["dev"]:
        assert not colour_pairs(s.custom["scene"]) & held
        assert s.custom["heldout_combo"] is False
        # Also on the surface: no attributive "purple elephant(s)" anywhere.
        for colour, kind in held:
            for form in NOUNS[kind].en:
                assert f" {colour} {form}" not in f" {s.text} "


def test_heldout_pairs_in_test(splits):
    held = set(heldout_pairs(0))
    flags = [s.custom["heldout_combo"] for s in splits["test"]]
    assert 1 / 3 <= sum(flags) / len(flags) <= 1 / 2
    for s in splits["test"]:
        assert s.custom["heldout_combo"] == bool(colour_pairs(s.custom["scene"]) & held)
    seen = set().union(*(colour_pairs(s.custom["scene"]) for s in splits["test"]))
    assert len(seen & held) >= len(held) // 2  # the probe covers many pairs, not one


def test_test_and_dev_words_occur_in_train(splits):
    train = _words(splits["train"])
    assert _words(splits["test"]) <= train
    assert _words(splits["dev"]) <= train


def test_vocabulary_size_and_coverage(splits):
    vocab = vocabulary()
    assert 250 <= len(vocab) <= 350
    # vocabulary() is exactly what the grammar produces: nothing missing, nothing extra.
    assert _words(splits["train"]) == vocab


def test_sentence_shape(splits):
    for s in splits["train"] + splits["dev"] + splits["test"]:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", s.text), s.text
        assert 5 <= len(s.text.split()) <= 12
        assert set(s.translations) == set(LANGS)
        for t in s.translations.values():
            assert t == t.lower() and t == t.strip() and not t.endswith(".")


def test_scene_is_structured_and_rerenders(splits):
    templates = set()
    for s in splits["dev"]:
        scene = s.custom["scene"]
        json.dumps(scene)  # manifests store it as JSON
        templates.add(scene["template"])
        for obj in scene["objects"]:
            assert obj["kind"] in NOUNS and isinstance(obj["count"], int)
        assert render(scene) == {"en": s.text, **s.translations}
    assert len(templates) >= 6


def test_generation_is_fast():
    t0 = time.perf_counter()
    generate_splits(8000, 300, 500, seed=1)
    assert time.perf_counter() - t0 < 5.0


def test_impossible_request_raises():
    # Three train sentences cannot cover the words of fifty dev sentences.
    with pytest.raises(RuntimeError):
        generate_splits(3, 50, 10)


def test_unpaired_split_is_disjoint_and_leaves_the_other_splits_alone():
    from dmlm.data import miniworld

    a = miniworld.generate_splits(300, 30, 50, seed=2)
    b = miniworld.generate_splits(300, 30, 50, seed=2, n_unpaired=500)
    for split in ("train", "dev", "test"):
        assert [s.text for s in a[split]] == [s.text for s in b[split]]
    paired = {s.text for split in ("train", "dev", "test") for s in b[split]}
    unpaired = [s.text for s in b["unpaired"]]
    assert len(unpaired) == len(set(unpaired)) == 500 and not set(unpaired) & paired
    assert not any(s.custom["heldout_combo"] for s in b["unpaired"])
    assert all(set(s.translations) == {"es", "de", "fr"} for s in b["unpaired"])
