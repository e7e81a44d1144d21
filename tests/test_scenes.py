"""mini-world scene images: determinism, one visible difference per attribute, layout
invariants, and `prepare` writing images + captions for the visual records."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from dmlm.data.miniworld import render, sample_scene
from dmlm.data.miniworld_lexicon import COLOURS, OBJECTS, PLACES, RELATIONS, SIZES
from dmlm.data.scenes import CELLS, COLOUR_RGB, background, draw_scene, glyph, is_visual, layout


def _np(kind, count=1, det="the", colour=None, size=None):
    return {"kind": kind, "colour": colour, "size": size, "count": count, "definite": det == "the", "det": det}


def _scene(template="locative", obj=None, relation="under", anchor=None, place=None):
    return {"template": template, "objects": [obj or _np("ball", colour="red")],
            "relation": None if template == "existential" else relation,
            "anchor": None if template == "existential" else (anchor or _np("car")),
            "place": place, "time": None, "agent": None, "action": None}


def _px(scene) -> np.ndarray:
    return np.asarray(draw_scene(scene))


def _all_different(images: dict) -> None:
    for (a, x), (b, y) in itertools.combinations(images.items(), 2):
        assert not np.array_equal(x, y), f"{a} and {b} are drawn the same"


def test_visual_templates():
    assert is_visual(_scene("locative")) and is_visual(_scene("predicate")) and is_visual(_scene("existential"))
    rng = random.Random(0)
    for _ in range(300):
        s = sample_scene(rng)
        assert is_visual(s) == (s["template"] in ("locative", "predicate", "existential"))
        if not is_visual(s):
            assert s["agent"] is not None
            with pytest.raises(ValueError, match="not drawn"):
                draw_scene(s)


def test_drawing_is_deterministic_rgb_and_sized():
    s = _scene(obj=_np("cup", 3, "number", "blue", "small"), relation="next_to", anchor=_np("box", colour="green"),
               place="kitchen")
    a, b = draw_scene(s), draw_scene(s)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert a.tobytes() == b.tobytes()
    assert draw_scene(s, 128).size == (128, 128)
    with pytest.raises(ValueError, match="multiple of 8"):
        draw_scene(s, 60)


def test_every_colour_is_drawn_differently_and_visibly():
    images = {c: _px(_scene(obj=_np("ball", colour=c))) for c in [*COLOURS, None]}
    _all_different(images)
    for c, rgb in COLOUR_RGB.items():
        assert (np.abs(images[c].astype(int) - rgb).max(-1) <= 3).sum() >= 8, c  # a card of that colour


def test_every_kind_has_its_own_glyph_and_image():
    assert len({glyph(n.key) for n in OBJECTS}) == len(OBJECTS)
    _all_different({n.key: _px(_scene("existential", obj=_np(n.key))) for n in OBJECTS})


def test_every_size_count_and_place_is_drawn_differently():
    _all_different({s: _px(_scene(obj=_np("ball", colour="red", size=s))) for s in [*SIZES, None]})
    _all_different({n: _px(_scene(obj=_np("ball", n, "number", "red"))) for n in range(1, 13)})
    _all_different({p: _px(_scene(place=p)) for p in [*PLACES, None]})
    assert len({background(p) for p in [*PLACES, None]}) == len(PLACES) + 1


def test_count_draws_that_many_cards():
    for n in range(1, 13):
        for rel in RELATIONS:
            cards = layout(_scene(obj=_np("cup", n, "number"), relation=rel))
            assert sum(g.kind == "cup" for g in cards) == n and sum(g.kind == "car" for g in cards) == 1


def test_every_relation_is_drawn_differently_but_synonyms_alike():
    # "car" is an anchor every relation accepts, so only the relation changes
    images = {r: _px(_scene(relation=r)) for r in RELATIONS}
    assert np.array_equal(images.pop("on_top_of"), images["on"])  # synonyms share a layout
    _all_different(images)


def _boxes(relation, obj=None, anchor=None):
    cards = layout(_scene(obj=obj or _np("ball"), relation=relation, anchor=anchor))
    anc = next(g for g in cards if g.kind == "car")
    grp = [g for g in cards if g.kind != "car"]
    x0 = min(g.box[0] for g in grp)
    y0 = min(g.box[1] for g in grp)
    x1 = max(g.box[0] + g.box[2] for g in grp)
    y1 = max(g.box[1] + g.box[3] for g in grp)
    ax, ay, aw, ah = anc.box
    return cards, anc, (x0, y0, x1, y1), (ax, ay, ax + aw, ay + ah)


def test_relation_geometry():
    _, _, g, a = _boxes("on")
    assert g[3] == a[1]  # touching, on top
    _, _, g, a = _boxes("above")
    assert g[3] == a[1] - 1
    _, _, g, a = _boxes("under")
    assert g[1] == a[3]
    _, _, g, a = _boxes("inside")
    assert a[0] < g[0] and g[2] < a[2] and a[1] < g[1] and g[3] < a[3]
    for rel, gap in (("next_to", 0), ("near", 1)):
        _, _, g, a = _boxes(rel)
        assert g[0] - a[2] == gap and g[3] == a[3]
    _, _, g, a = _boxes("far_from")
    assert g[0] - a[2] >= 2
    cards, anc, g, a = _boxes("behind")
    assert cards[-1] is anc and g[3] < a[3]  # drawn first (hidden by the anchor), raised
    cards, anc, g, a = _boxes("in_front_of")
    assert cards[0] is anc and g[3] > a[3]  # drawn last, lowered


def test_sampled_scenes_fit_the_grid_and_ignore_determiners():
    rng = random.Random(1)
    n = 0
    while n < 1500:
        s = sample_scene(rng)
        if not is_visual(s):
            continue
        n += 1
        for g in layout(s):
            x, y, w, h = g.box
            assert 0 <= x and 0 <= y and x + w <= CELLS and y + h <= CELLS and w >= 1 and h >= 1
    a = _scene(obj=_np("ball", det="the", colour="red"))
    b = _scene(obj=_np("ball", det="a", colour="red"))
    assert render(a)["en"] != render(b)["en"]
    assert np.array_equal(_px(a), _px(b))  # definiteness is not visible


def test_crowded_scenes_shrink_to_fit():
    s = _scene(obj=_np("bus", 12, "number", size="huge"), relation="far_from", anchor=_np("house", size="huge"))
    cards = layout(s)
    assert len(cards) == 13
    xs = [g.box[0] + g.box[2] for g in cards]
    assert max(xs) <= CELLS
    draw_scene(s)


# ------------------------------------------------------------------------------------ prepare

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from dmlm.data.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("mw")
    cfg = PrepareConfig(n_train=24, n_dev=3, n_test=4, seed=0, workers=2)
    return cfg, out, prepare(cfg, out)


def test_prepare_writes_images_and_captions_for_visual_records(prepared):
    from dmlm.data.manifest import read_manifest
    from dmlm.util.images import load_image

    _, out, manifests = prepared
    n_visual = 0
    for split, path in manifests.items():
        for r in read_manifest(path):
            scene = r.custom["scene"]
            assert r.audio and (out / r.audio).is_file()  # speech is unchanged
            if not is_visual(scene):
                assert r.image is None and r.caption is None
                continue
            n_visual += 1
            assert r.caption == r.text  # the English sentence: one vocabulary for all modalities
            assert r.image == f"img/{r.id.removesuffix('-hv')}.png"
            img = load_image(r.image_path(path))
            np.testing.assert_array_equal(img, np.asarray(draw_scene(scene)))
    assert n_visual > 0
    test = read_manifest(manifests["test"])
    hv = [r for r in test if r.custom.get("heldout_voice") and r.image]
    assert hv and all(any(o.id + "-hv" == r.id and o.image == r.image for o in test) for r in hv)
    assert not list(out.glob("img/.*"))  # no temp files left


def test_prepare_rerun_keeps_images(prepared):
    from dmlm.data.prepare import prepare

    cfg, out, manifests = prepared
    before = {p.name: p.stat().st_mtime_ns for p in (out / "img").iterdir()}
    texts = {s: p.read_text() for s, p in manifests.items()}
    assert prepare(cfg, out) == manifests
    assert {p.name: p.stat().st_mtime_ns for p in (out / "img").iterdir()} == before
    assert {s: p.read_text() for s, p in manifests.items()} == texts


def test_prepare_without_images_then_with_them(tmp_path):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(n_train=24, n_dev=3, n_test=4, seed=0, images=False)
    manifests = prepare(cfg, tmp_path)
    assert not (tmp_path / "img").exists()
    assert all(r.image is None for p in manifests.values() for r in read_manifest(p))
    # a folder prepared without images gets them on a run that asks for them: nothing else moves
    wavs = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "wav").iterdir()}
    manifests = prepare(PrepareConfig(n_train=24, n_dev=3, n_test=4, seed=0, images=True), tmp_path)
    with_image = [r for p in manifests.values() for r in read_manifest(p) if r.image]
    assert with_image and all((tmp_path / r.image).is_file() for r in with_image)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "wav").iterdir()} == wavs


def test_prepare_writes_unpaired_text_on_a_later_run(prepared):
    from dmlm.data.manifest import read_manifest
    from dmlm.data.prepare import PrepareConfig, prepare

    cfg, out, manifests = prepared
    more = prepare(PrepareConfig(**{**cfg.__dict__, "n_unpaired": 30}), out)
    assert {k: v for k, v in more.items() if k != "unpaired"} == manifests
    unpaired = read_manifest(more["unpaired"])
    assert len(unpaired) == 30 and all(r.audio is None and r.text and r.translations["es"] for r in unpaired)
    paired = {r.text for p in manifests.values() for r in read_manifest(p)}
    assert not {r.text for r in unpaired} & paired
    with pytest.raises(ValueError, match="mini-world's unpaired audio and scenes"):  # bible has unpaired text only
        prepare(PrepareConfig(corpus="bible", n_unpaired=5, n_unpaired_images=1), out / "bible")
