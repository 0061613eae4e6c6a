"""ShapesWorld scene grammar: scenes, atoms (checkable facts), dense captions, corruptions, splits.

A scene is 1-4 objects placed in distinct cells of a 3x3 grid. Captions are generated from *atoms*
(object counts, absolute positions, pairwise relations) so that every caption can be parsed back
(`atoms_from_caption`) and checked against pixels by the rule-based oracle.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

COLORS = {  # name -> RGB; far apart in RGB and hue so a rule-based oracle can segment them
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 220, 50),
    "green": (40, 180, 60),
    "cyan": (40, 205, 215),
    "blue": (50, 90, 235),
    "purple": (150, 60, 205),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
GRID = 3
REGIONS = {  # (row, col) -> name
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
REGION_CELL = {v: k for k, v in REGIONS.items()}
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
NUMBER_WORDS = {v: k for k, v in NUMBERS.items()}
CORRUPTION_KINDS = ("colour", "shape", "size", "relation", "position", "count")


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    row: int
    col: int
    dx: float = 0.0  # jitter inside the cell, in pixels at 48 px
    dy: float = 0.0


@dataclass
class Scene:
    objects: List[Obj]
    seed: int = 0


# ----------------------------------------------------------------------------------------- atoms
@dataclass(frozen=True)
class CountAtom:
    """Exactly `count` objects of this colour, shape and size."""
    color: str
    shape: str
    size: str
    count: int


@dataclass(frozen=True)
class PositionAtom:
    """The (unique) colour+shape object lies in this 3x3 region."""
    color: str
    shape: str
    region: str


@dataclass(frozen=True)
class RelationAtom:
    """The unique colour+shape object `a` is <relation> the unique object `b` (by grid cell)."""
    a: Tuple[str, str]
    relation: str
    b: Tuple[str, str]


Atom = object  # CountAtom | PositionAtom | RelationAtom


@dataclass
class Description:
    groups: List[CountAtom]
    positions: List[PositionAtom] = field(default_factory=list)
    relations: List[RelationAtom] = field(default_factory=list)

    @property
    def atoms(self) -> list:
        return [*self.groups, *self.positions, *self.relations]


# ------------------------------------------------------------------------------------ sampling
def sample_scene(rng: random.Random, n_objects: Optional[int] = None, seed: int = 0) -> Scene:
    n = n_objects or rng.randint(1, 4)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    objs = []
    # sometimes repeat an object kind so counts ("two red circles") occur
    base = None
    for r, c in cells:
        if base is not None and rng.random() < 0.3:
            color, shape, size = base
        else:
            color, shape, size = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES)
        base = (color, shape, size)
        objs.append(Obj(color, shape, size, r, c, rng.uniform(-1, 1), rng.uniform(-1, 1)))
    return Scene(objs, seed)


def relation_between(a: Obj, b: Obj) -> str:
    """The relation of a to b used in captions: horizontal if columns differ, else vertical."""
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


def scene_description(scene: Scene) -> Description:
    """All atoms a caption states about a scene (counts, positions of unique kinds, chained relations)."""
    kinds = {}
    for o in scene.objects:
        kinds.setdefault((o.color, o.shape, o.size), []).append(o)
    groups = [CountAtom(c, s, z, len(v)) for (c, s, z), v in kinds.items()]
    # an object can be referred to as "the <colour> <shape>" only if no other object shares colour+shape
    by_cs = {}
    for o in scene.objects:
        by_cs.setdefault((o.color, o.shape), []).append(o)
    unique = [v[0] for v in by_cs.values() if len(v) == 1]
    positions = [PositionAtom(o.color, o.shape, REGIONS[(o.row, o.col)]) for o in unique]
    relations = [RelationAtom((a.color, a.shape), relation_between(a, b), (b.color, b.shape))
                 for a, b in zip(unique, unique[1:])]
    return Description(groups, positions, relations)


# ------------------------------------------------------------------------------------- captions
def _np(count: int, size: str, color: str, shape: str, rng: random.Random) -> str:
    if count == 1:
        return f"{'an' if size[0] in 'aeiou' else 'a'} {size} {color} {shape}"
    return f"{NUMBERS[count]} {size} {color} {shape}s"


def _the(cs: Tuple[str, str]) -> str:
    return f"the {cs[0]} {cs[1]}"


_OPENINGS = [
    "The image shows {objs} on a black background.",
    "This picture contains {objs}, drawn on a plain black background.",
    "On a black background there {be} {objs}.",
    "A simple scene with {objs} against a dark background.",
    "In this image we can see {objs}.",
]
_POSITIONS = {  # region phrases; every template must contain {the} and {region}
    "corner": ["{The} is in the {region} corner.", "{The} sits in the {region} corner of the image."],
    "side": ["{The} is on the {region} side.", "{The} appears on the {region} side of the picture."],
    "edge": ["{The} is at the {region} of the image.", "{The} is placed at the {region}."],
    "center": ["{The} is in the center.", "{The} sits right in the center of the image."],
}
_RELATIONS = [
    "{A} is {rel} {B}.",
    "{A} is located {rel} {B}.",
    "{A} appears {rel} {B}.",
]


def _region_kind(region: str) -> str:
    if region == "center":
        return "center"
    if " " in region:
        return "corner"
    return "side" if region in ("left", "right") else "edge"


def _join(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _rel_phrase(rel: str) -> str:
    return {"left of": "to the left of", "right of": "to the right of"}.get(rel, rel)


def position_sentence(p: PositionAtom, rng: random.Random) -> str:
    """"The red circle sits in the top left corner of the image." (template drawn from rng by region kind)."""
    t = rng.choice(_POSITIONS[_region_kind(p.region)])
    the = _the((p.color, p.shape))
    return t.format(The=the[0].upper() + the[1:], region=p.region)


def describe(desc: Description, seed: int) -> str:
    """Dense caption of a description; the wording is a function of `seed` only, so a corrupted
    description described with the same seed differs exactly where the corruption is."""
    rng = random.Random(seed)
    nps = [_np(g.count, g.size, g.color, g.shape, rng) for g in desc.groups]
    total = sum(g.count for g in desc.groups)
    opening = rng.choice(_OPENINGS)
    s = [opening.format(objs=_join(nps), be="is" if total == 1 else "are")]
    s += [position_sentence(p, rng) for p in desc.positions]
    for r in desc.relations:
        t = rng.choice(_RELATIONS)
        a = _the(r.a)
        s.append(t.format(A=a[0].upper() + a[1:], rel=_rel_phrase(r.relation), B=_the(r.b)))
    return " ".join(s)


def caption(scene: Scene, seed: Optional[int] = None) -> str:
    return describe(scene_description(scene), scene.seed if seed is None else seed)


# -------------------------------------------------------------------------------------- parsing
_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_NP_RE = re.compile(rf"\b(a|an|one|two|three|four) (small|large) ({_C}) ({_S})s?\b")
_THE = rf"[Tt]he ({_C}) ({_S})"
_POS_RE = re.compile(
    rf"{_THE} (?:is|sits|appears|is placed) (?:right )?(?:in|on|at) the "
    rf"(top left|top right|bottom left|bottom right|center|left|right|top|bottom)\b")
_REL_RE = re.compile(
    rf"{_THE} (?:is located |is |appears )(to the left of|to the right of|above|below) the ({_C}) ({_S})\b")


def parse_positions(text: str) -> List[PositionAtom]:
    """The position sentences of a text, in order (position_sentence's inverse)."""
    return [PositionAtom(m.group(1), m.group(2), m.group(3)) for m in _POS_RE.finditer(text)]


def atoms_from_caption(text: str) -> Description:
    """Parse a caption produced by `describe` back into its atoms (raises ValueError if none found)."""
    groups = []
    for m in _NP_RE.finditer(text):
        n = 1 if m.group(1) in ("a", "an") else NUMBER_WORDS[m.group(1)]
        groups.append(CountAtom(m.group(3), m.group(4), m.group(2), n))
    positions = parse_positions(text)
    relations = []
    for m in _REL_RE.finditer(text):
        rel = {"to the left of": "left of", "to the right of": "right of"}.get(m.group(3), m.group(3))
        relations.append(RelationAtom((m.group(1), m.group(2)), rel, (m.group(4), m.group(5))))
    if not groups:
        raise ValueError(f"no ShapesWorld objects found in caption: {text[:80]!r}")
    return Description(groups, positions, relations)


def atom_word_spans(text: str, position: str = "predicate") -> dict:
    """Character spans of the words that carry a relation ("to the left of", "above", ...), an absolute position
    and a size ("small", "large") in a caption from `describe`: the few tokens a one-atom relation, position or
    size corruption changes (the VLM trainer can weight them). For a position, `position="region"` gives the
    region words only ("top left"); "predicate" (default) the whole rest of its sentence ("sits in the top left
    corner of the image"), because the template's verb and preposition already depend on the kind of region
    (corner / side / edge / centre), so a position corruption changes them too; measured, they were where a
    patch-16 VLM lost most of its failed position pairs."""
    if position not in ("region", "predicate"):
        raise ValueError(f"position must be 'region' or 'predicate', not {position!r}")
    def predicate(m):  # from the verb after "The <colour> <shape>" to the sentence's full stop
        end = text.find(".", m.end())
        return m.end(2) + 1, len(text) if end < 0 else end
    pos = [m.span(3) if position == "region" else predicate(m) for m in _POS_RE.finditer(text)]
    return {"relation": [m.span(3) for m in _REL_RE.finditer(text)],
            "position": pos,
            "size": [m.span(2) for m in _NP_RE.finditer(text)]}


# ----------------------------------------------------------------------------------- corruption
def moved(desc: Description, i: int, region: str) -> Description:
    """`desc` with its i-th stated position moved to `region` (a position corruption; every other atom kept)."""
    positions = list(desc.positions)
    positions[i] = replace(positions[i], region=region)
    return Description(list(desc.groups), positions, list(desc.relations))


def corrupt(desc: Description, kind: str, rng: random.Random) -> Optional[Description]:
    """Change exactly one fact of `desc` (kind in CORRUPTION_KINDS); None if the kind does not apply.
    Colour/shape changes rename the object everywhere it is mentioned, so the caption stays coherent."""
    groups, positions, relations = list(desc.groups), list(desc.positions), list(desc.relations)
    kinds_present = {(g.color, g.shape) for g in groups}
    if kind in ("colour", "shape"):
        i = rng.randrange(len(groups))
        g = groups[i]
        if kind == "colour":
            choices = [c for c in COLORS if c != g.color and (c, g.shape) not in kinds_present]
        else:
            choices = [s for s in SHAPES if s != g.shape and (g.color, s) not in kinds_present]
        if not choices:
            return None
        new = rng.choice(choices)
        old_cs = (g.color, g.shape)
        new_cs = (new, g.shape) if kind == "colour" else (g.color, new)
        groups[i] = replace(g, color=new_cs[0], shape=new_cs[1])
        positions = [replace(p, color=new_cs[0], shape=new_cs[1]) if (p.color, p.shape) == old_cs else p
                     for p in positions]
        relations = [RelationAtom(new_cs if r.a == old_cs else r.a, r.relation, new_cs if r.b == old_cs else r.b)
                      for r in relations]
    elif kind == "size":
        i = rng.randrange(len(groups))
        g = groups[i]
        flipped = "large" if g.size == "small" else "small"
        if any((h.color, h.shape, h.size) == (g.color, g.shape, flipped) for h in groups):
            return None
        groups[i] = replace(g, size=flipped)
    elif kind == "count":
        i = rng.randrange(len(groups))
        g = groups[i]
        options = [n for n in (g.count - 1, g.count + 1) if 1 <= n <= 4]
        groups[i] = replace(g, count=rng.choice(options))
    elif kind == "relation":
        if not relations:
            return None
        i = rng.randrange(len(relations))
        r = relations[i]
        relations[i] = RelationAtom(r.a, OPPOSITE[r.relation], r.b)
    elif kind == "position":
        if not positions:
            return None
        i = rng.randrange(len(positions))
        return moved(desc, i, rng.choice([r for r in REGION_CELL if r != positions[i].region]))
    else:
        raise ValueError(f"unknown corruption kind {kind!r}; expected one of {CORRUPTION_KINDS}")
    return Description(groups, positions, relations)


# --------------------------------------------------------------------------------------- splits
EVAL_BUCKET = 0  # 1 in 10 descriptions (by content hash) is reserved for evaluation


def description_key(desc: Description) -> str:
    return repr(sorted(map(repr, desc.atoms)))


def is_eval(desc: Description) -> bool:
    """Split by *content*, so no eval caption (of any wording) can appear in training."""
    h = int(hashlib.sha256(description_key(desc).encode()).hexdigest()[:8], 16)
    return h % 10 == EVAL_BUCKET


def sample_split(split: str, n: int, seed: int = 0) -> List[Tuple[Scene, str]]:
    """n (scene, caption) pairs of 'train' or 'eval', deterministic in seed."""
    if split not in ("train", "eval"):
        raise ValueError("split must be 'train' or 'eval'")
    rng = random.Random(f"{split}-{seed}")
    out = []
    while len(out) < n:
        s = rng.randrange(2 ** 31)
        scene = sample_scene(random.Random(s), seed=s)
        desc = scene_description(scene)
        if is_eval(desc) == (split == "eval"):
            out.append((scene, describe(desc, s)))
    return out
