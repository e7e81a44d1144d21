"""Draw mini-world scenes as small RGB images, the image side of the corpus.

A mini-world sentence is sampled as a structured scene (`dmlm.data.miniworld`); this module
draws the same scene, so an image, its English caption (the record's `text`), its speech and
its translations all describe one thing by construction.

Design decisions:
- **Only the "visual" templates get images**: `locative`, `predicate` and `existential` (an
  object group, maybe an anchor and a place). Templates with an agent and an action would
  need people and verbs drawn; they stay text/speech only. `is_visual` is the one test.
- **A pure function of the scene, no randomness**: two scenes that differ in one attribute
  differ only where that attribute is drawn. Determiners (the/a), tense-free times and the
  sentence template carry nothing visual and are ignored, so sentences that differ only in
  them share an image (as `on` and `on top of`, synonyms, share a layout).
- **Objects are cards**: a rectangle in the object's colour, with a dark border, carrying
  the kind's symbol in black or white ink (whichever contrasts): one of 7 shapes with one of
  6 marks cut out of it (`glyph(kind)`), distinct for each of the 42 kinds. Symbols, not
  icons. An object whose colour the sentence does not say is a teal card (`UNSAID`), a colour
  no word names, so the image never shows a colour word the caption lacks.
- **The canvas is a grid of 8 x 8 cells** and every card covers whole cells: at 64 px a cell
  is 8 px, the default image codebook's patch (`dmlm.tokenizers.image`), so a patch holds one
  part of one card (or background), never a card at an arbitrary offset, and a card's colour
  fills its patches, hiding the background. Measured with patch codes fitted on training
  scenes (k=1024), the code at a held-out card's centre names its colour 78 % of the time
  (chance 8 %) and its kind 20 % (chance 2 %). Coloured shapes placed freely on the
  background kept colours far worse (under 40 % of named-colour pixels at any k up to 2048):
  the codebook spent its codes on background/shape/offset combinations instead.
- **Sizes are cells** (`SINGLE`, for one object or an anchor: unsized 2x2, big 3x3, huge 4x4,
  long 4x1, fat 3x2, small and tiny 1x1 at 75 % and 50 %; `GROUP`, per copy when the count
  is >= 2: unsized 1x1, big 2x2, huge 3x3, ...). A count of n draws n cards in a grid
  (partial rows left-aligned). When a scene does not fit, the larger part shrinks a cell per
  side until it does, so big groups and huge anchors can lose their size contrast.
- **The relation is the layout** of the object group against the anchor: touching on top
  (on, on top of), above with a one-cell gap (above), touching below (under), within an
  anchor grown to enclose it (inside), beside it with a gap of 0, 1 or >= 2 cells (next to,
  near, far from), overlapping its right side, raised and drawn first (behind) or lowered
  and drawn last (in front of). The composition is centred on whole cells.
- **The place is the background**: one of 5 pastel tints times one of 6 patterns (plain,
  stripes, dots, checks, ...), repeating once per cell, so a background patch is the same
  tokens everywhere. No place: plain grey.
- Drawing happens at 4x the output size and is box-downsampled: smooth edges, still
  deterministic (Pillow's rasteriser has no randomness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from dmlm.data.miniworld_lexicon import COLOURS, OBJECTS, PLACES, RELATIONS, SIZES
from dmlm.util.errors import UserError

VISUAL_TEMPLATES = ("locative", "predicate", "existential")
SUPERSAMPLE = 4

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50), "yellow": (245, 220, 30),
    "black": (20, 20, 20), "white": (250, 250, 250), "brown": (125, 75, 30), "pink": (245, 140, 195),
    "purple": (130, 45, 175), "orange": (250, 130, 15), "grey": (130, 130, 130), "golden": (185, 145, 20),
}
UNSAID = (0, 140, 140)  # teal: an object whose colour the sentence leaves out
OUTLINE = (25, 25, 25)
LIGHT_OUTLINE = (150, 150, 150)

SHAPES = ("circle", "square", "triangle", "inverted_triangle", "diamond", "hexagon", "plus")
MARKS = ("none", "dot", "ring", "hbar", "vbar", "cross")

# Sizes in cells: (columns, rows, share of the width, share of the height the card covers).
# A single object (and every anchor) takes SINGLE; each copy in a group of two or more, GROUP.
SINGLE: dict[str | None, tuple[int, int, float, float]] = {
    None: (2, 2, 1.0, 1.0), "small": (1, 1, 0.75, 0.75), "tiny": (1, 1, 0.5, 0.5), "big": (3, 3, 1.0, 1.0),
    "huge": (4, 4, 1.0, 1.0), "long": (4, 1, 1.0, 1.0), "fat": (3, 2, 1.0, 1.0),
}
GROUP: dict[str | None, tuple[int, int, float, float]] = {
    None: (1, 1, 1.0, 1.0), "small": (1, 1, 0.75, 0.75), "tiny": (1, 1, 0.5, 0.5), "big": (2, 2, 1.0, 1.0),
    "huge": (3, 3, 1.0, 1.0), "long": (2, 1, 1.0, 1.0), "fat": (2, 2, 1.0, 0.75),
}

TINTS = ((200, 235, 205), (240, 225, 185), (195, 220, 245), (228, 205, 240), (250, 210, 190))
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots", "diagonal")
NO_PLACE = (228, 228, 228)
CELLS = 8  # the canvas is CELLS x CELLS cells; at 64 px a cell is 8 px, the default image-codebook patch

_KIND_INDEX = {n.key: i for i, n in enumerate(OBJECTS)}
_PLACE_INDEX = {k: i for i, k in enumerate(PLACES)}
assert len(SHAPES) * len(MARKS) >= len(OBJECTS), "not enough glyphs for every object kind"
assert len(TINTS) * len(PATTERNS) >= len(PLACES), "not enough backgrounds for every place"
assert set(COLOUR_RGB) == set(COLOURS) and set(SINGLE) - {None} == set(GROUP) - {None} == set(SIZES)


def is_visual(scene: dict[str, Any]) -> bool:
    """Whether `draw_scene` can draw this scene (an object group, no agent or action)."""
    return scene.get("template") in VISUAL_TEMPLATES and bool(scene.get("objects"))


def glyph(kind: str) -> tuple[str, str]:
    """(shape, mark) of an object kind; distinct for every kind."""
    if kind not in _KIND_INDEX:
        raise UserError(f"unknown object kind {kind!r}")
    i = _KIND_INDEX[kind]
    return SHAPES[i % len(SHAPES)], MARKS[i // len(SHAPES)]


def background(place: str | None) -> tuple[tuple[int, int, int], str]:
    """(tint, pattern) of a place; distinct for every place and for no place."""
    if place is None:
        return NO_PLACE, "plain"
    if place not in _PLACE_INDEX:
        raise UserError(f"unknown place {place!r}")
    i = _PLACE_INDEX[place]
    return TINTS[i % len(TINTS)], PATTERNS[i // len(TINTS)]


def colour_rgb(colour: str | None) -> tuple[int, int, int]:
    if colour is None:
        return UNSAID
    if colour not in COLOUR_RGB:
        raise UserError(f"unknown colour {colour!r}")
    return COLOUR_RGB[colour]


# ----------------------------------------------------------------------------------- layout
# Boxes are whole cells, (x, y, w, h), y downwards: every glyph covers whole codebook patches,
# so a patch holds one part of one glyph (or background), never a glyph at a random offset.

@dataclass(frozen=True)
class Glyph:
    kind: str
    colour: str | None
    box: tuple[int, int, int, int]  # cells: x, y, width, height
    fill: tuple[float, float]  # share of the box the card covers, horizontally and vertically


def _grid(count: int) -> tuple[int, int]:
    """(columns, rows) of a group of `count` copies; partial last rows are left-aligned."""
    if count <= 4:
        return (count, 1) if count <= 3 else (2, 2)
    if count <= 6:
        return 3, 2
    if count <= 8:
        return 4, 2
    return (3, 3) if count == 9 else (4, 3)


def _np_glyphs(np_: dict[str, Any], cap: int) -> list[Glyph]:
    """Glyphs of a noun phrase laid out from (0, 0), each at most `cap` cells a side."""
    count = max(1, int(np_.get("count") or 1))
    w, h, fx, fy = (SINGLE if count == 1 else GROUP)[np_.get("size")]
    w, h = min(w, cap), min(h, cap)
    cols = _grid(count)[0]
    return [Glyph(np_["kind"], np_.get("colour"), ((i % cols) * w, (i // cols) * h, w, h), (fx, fy))
            for i in range(count)]


def _extent(glyphs: list[Glyph]) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) in cells."""
    return (min(g.box[0] for g in glyphs), min(g.box[1] for g in glyphs),
            max(g.box[0] + g.box[2] for g in glyphs), max(g.box[1] + g.box[3] for g in glyphs))


def _shift(glyphs: list[Glyph], dx: int, dy: int) -> list[Glyph]:
    return [Glyph(g.kind, g.colour, (g.box[0] + dx, g.box[1] + dy, g.box[2], g.box[3]), g.fill) for g in glyphs]


def _arrange(relation: str, anchor: Glyph, group: list[Glyph]) -> list[Glyph]:
    """The anchor at (0, 0) and the group placed by the relation, in drawing order."""
    _, _, gw, gh = _extent(group)
    aw, ah = anchor.box[2:]
    if relation in ("on", "on_top_of"):  # touching, on top
        return [anchor, *_shift(group, (aw - gw) // 2, -gh)]
    if relation == "above":  # a one-cell gap
        return [anchor, *_shift(group, (aw - gw) // 2, -gh - 1)]
    if relation == "under":  # touching, underneath
        return [anchor, *_shift(group, (aw - gw) // 2, ah)]
    if relation == "inside":  # the anchor grows to enclose the group with a cell to spare
        aw, ah = max(aw, gw + 2), max(ah, gh + 2)
        big = Glyph(anchor.kind, anchor.colour, (0, 0, aw, ah), anchor.fill)
        return [big, *_shift(group, (aw - gw) // 2, (ah - gh) // 2)]
    if relation in ("next_to", "near", "far_from"):  # bottoms aligned; gap 0, 1, or the rest (>= 2)
        gap = {"next_to": 0, "near": 1}.get(relation, max(2, CELLS - aw - gw))
        return [anchor, *_shift(group, aw + gap, ah - gh)]
    overlap = gw // 2  # behind / in front of: the group overlaps the anchor's right side
    if relation == "behind":  # raised a cell and drawn first: the anchor hides its left part
        return [*_shift(group, aw - overlap, ah - gh - 1), anchor]
    if relation == "in_front_of":  # lowered a cell and drawn last: it hides part of the anchor
        return [anchor, *_shift(group, aw - overlap, ah - gh + 1)]
    raise UserError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")


def _fits(glyphs: list[Glyph], relation: str | None) -> bool:
    x0, y0, x1, y1 = _extent(glyphs)
    if relation == "far_from" and x1 - x0 > CELLS:
        return False  # the gap had to stay >= 2 cells, so it did not shrink to fit
    return x1 - x0 <= CELLS and y1 - y0 <= CELLS


def layout(scene: dict[str, Any]) -> list[Glyph]:
    """Every glyph of the scene, in drawing order (later ones occlude earlier ones), centred.

    Parts start at their natural sizes; while the scene does not fit the grid, the part with
    the larger box (the object group or the anchor) gets one cell smaller per side, so a
    scene keeps as much of its size contrast as the canvas allows.
    """
    obj, anchor_np, rel = scene["objects"][0], scene.get("anchor"), scene.get("relation")
    obj_cap = anc_cap = CELLS
    while True:
        group = _np_glyphs(obj, obj_cap)
        anchor = _np_glyphs(anchor_np, anc_cap)[0] if anchor_np else None
        glyphs = _arrange(rel, anchor, group) if anchor else group
        if _fits(glyphs, rel if anchor else None):
            break
        gx0, gy0, gx1, gy1 = _extent(group)
        g_side = max(group[0].box[2:])  # side of one copy
        a_side, a_area = (max(anchor.box[2:]), anchor.box[2] * anchor.box[3]) if anchor else (0, 0)
        if g_side > 1 and ((gx1 - gx0) * (gy1 - gy0) >= a_area or a_side <= 1):
            obj_cap = g_side - 1
        elif a_side > 1:
            anc_cap = a_side - 1
        else:
            raise UserError(f"scene does not fit {CELLS}x{CELLS} cells: {scene}")
    x0, y0, x1, y1 = _extent(glyphs)
    return _shift(glyphs, (CELLS - (x1 - x0)) // 2 - x0, (CELLS - (y1 - y0)) // 2 - y0)


# ---------------------------------------------------------------------------------- drawing

def _draw_background(d: ImageDraw.ImageDraw, n: int, place: str | None) -> None:
    tint, pattern = background(place)
    d.rectangle((0, 0, n, n), fill=tint)
    ink = tuple(int(c * 0.86) for c in tint)
    p = n // CELLS  # one period per cell: a background patch is the same everywhere
    half = p // 2
    for a in range(0, n, p):
        if pattern == "hstripes":
            d.rectangle((0, a, n, a + half - 1), fill=ink)
        elif pattern == "vstripes":
            d.rectangle((a, 0, a + half - 1, n), fill=ink)
        elif pattern == "checks":
            for b in range(0, n, p):
                d.rectangle((a, b, a + half - 1, b + half - 1), fill=ink)
                d.rectangle((a + half, b + half, a + p - 1, b + p - 1), fill=ink)
        elif pattern == "dots":
            for b in range(0, n, p):
                d.ellipse((a + p // 4, b + p // 4, a + 3 * p // 4, b + 3 * p // 4), fill=ink)
        elif pattern == "diagonal":
            for b in range(0, n, p):  # one stroke per cell keeps the period exact
                d.line((a, b + p, a + p, b), fill=ink, width=max(1, p // 5))


def _shape_points(shape: str, x0: float, y0: float, w: float, h: float) -> list[tuple[float, float]]:
    rel = {
        "square": [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95)],
        "triangle": [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)],
        "inverted_triangle": [(0.0, 0.0), (1.0, 0.0), (0.5, 1.0)],
        "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
        "hexagon": [(0.25, 0.0), (0.75, 0.0), (1.0, 0.5), (0.75, 1.0), (0.25, 1.0), (0.0, 0.5)],
        "plus": [(0.33, 0.0), (0.67, 0.0), (0.67, 0.33), (1.0, 0.33), (1.0, 0.67), (0.67, 0.67), (0.67, 1.0),
                 (0.33, 1.0), (0.33, 0.67), (0.0, 0.67), (0.0, 0.33), (0.33, 0.33)],
    }[shape]
    return [(x0 + u * w, y0 + v * h) for u, v in rel]


def _draw_item(d: ImageDraw.ImageDraw, it: Glyph, n: int) -> None:
    """A card in the object's colour over its box, a dark border, the kind's symbol in ink."""
    c = n / CELLS  # pixels per cell
    bx, by, bw, bh = it.box
    w, h = bw * c * it.fill[0], bh * c * it.fill[1]
    x0, y0 = (bx + bw / 2) * c - w / 2, (by + bh / 2) * c - h / 2
    fill = colour_rgb(it.colour)
    lum = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    border = SUPERSAMPLE  # one output pixel; light on dark cards, so adjacent black cards stay apart
    d.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=fill, outline=OUTLINE if lum > 60 else LIGHT_OUTLINE,
                width=border)
    ink = (0, 0, 0) if lum > 110 else (255, 255, 255)
    # the symbol: the kind's shape in ink, its mark cut out in the card colour
    sw, sh = (w - 2 * border) * 0.72, (h - 2 * border) * 0.72
    sx0, sy0 = x0 + (w - sw) / 2, y0 + (h - sh) / 2
    shape, mark = glyph(it.kind)
    if shape == "circle":
        d.ellipse((sx0, sy0, sx0 + sw, sy0 + sh), fill=ink)
    else:
        d.polygon(_shape_points(shape, sx0, sy0, sw, sh), fill=ink)
    if mark == "none":
        return
    cy = sy0 + sh * {"triangle": 0.64, "inverted_triangle": 0.36}.get(shape, 0.5)
    cx = sx0 + sw / 2
    m = 0.5 * min(sw, sh)  # half-extent budget of the mark
    t = max(1, round(0.16 * min(sw, sh)))  # mark stroke
    if mark == "dot":
        r = 0.35 * m
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif mark == "ring":
        r = 0.5 * m
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=t)
    elif mark == "hbar":
        d.rectangle((cx - 0.55 * m, cy - t / 2, cx + 0.55 * m, cy + t / 2), fill=fill)
    elif mark == "vbar":
        d.rectangle((cx - t / 2, cy - 0.55 * m, cx + t / 2, cy + 0.55 * m), fill=fill)
    elif mark == "cross":
        r = 0.42 * m
        d.line((cx - r, cy - r, cx + r, cy + r), fill=fill, width=t)
        d.line((cx - r, cy + r, cx + r, cy - r), fill=fill, width=t)


def draw_scene(scene: dict[str, Any], size: int = 64) -> Image.Image:
    """The scene as a (size x size) RGB image; raises ValueError for a non-visual scene."""
    if not is_visual(scene):
        raise UserError(f"scene template {scene.get('template')!r} is not drawn; "
                         f"only {', '.join(VISUAL_TEMPLATES)} scenes have images")
    if size <= 0 or size % CELLS:
        raise UserError(f"image size must be a positive multiple of {CELLS} (whole cells), got {size}")
    n = size * SUPERSAMPLE
    img = Image.new("RGB", (n, n))
    d = ImageDraw.Draw(img)
    _draw_background(d, n, scene.get("place"))
    for it in layout(scene):
        _draw_item(d, it, n)
    return img.reduce(SUPERSAMPLE)  # box filter: each output pixel averages a 4x4 block
