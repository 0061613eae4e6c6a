"""ShapesWorld grammar, renderer and splits (the oracle: test_shapes_oracle.py)."""
import random

import numpy as np
import pytest

from promptecho.shapes.render import IMAGE_SIZE, render
from promptecho.shapes.world import (COLORS, CORRUPTION_KINDS, SHAPES, SIZES, atoms_from_caption, corrupt,
                                     describe, sample_scene, sample_split, scene_description)


def test_grammar_covers_required_vocabulary():
    assert len(COLORS) >= 8 and len(SHAPES) >= 4 and len(SIZES) >= 2
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(500)]
    counts = {len(s.objects) for s in scenes}
    assert counts == {1, 2, 3, 4}
    caps = [describe(scene_description(s), i) for i, s in enumerate(scenes)]
    joined = " ".join(caps)
    for phrase in ("to the left of", "to the right of", "above", "below", "two ", "corner", "center"):
        assert phrase in joined, phrase
    # several wordings: the first four words of captions vary
    assert len({" ".join(c.split()[:4]) for c in caps}) >= 5


def test_caption_parses_back_to_its_atoms():
    rng = random.Random(1)
    for i in range(300):
        s = sample_scene(rng)
        d = scene_description(s)
        assert atoms_from_caption(describe(d, i)).atoms == d.atoms


def test_corruption_changes_exactly_one_fact():
    rng = random.Random(2)
    for i in range(200):
        d = scene_description(sample_scene(rng))
        for k in CORRUPTION_KINDS:
            c = corrupt(d, k, rng)
            if c is None:
                continue
            assert describe(c, i) != describe(d, i)
            # the corrupted caption parses to the corrupted atoms (so the oracle checks what the text says)
            assert atoms_from_caption(describe(c, i)).atoms == c.atoms


def test_position_spans_cover_everything_a_position_corruption_changes():
    """atom_word_spans: "region" gives the region words; "predicate" the rest of the position sentence, which holds
    every character a one-position corruption changes (verb and preposition depend on the kind of region)."""
    from promptecho.shapes.world import REGIONS, CountAtom, Description, PositionAtom, atom_word_spans

    d = Description([CountAtom("red", "circle", "small", 1), CountAtom("blue", "square", "large", 1)],
                    [PositionAtom("red", "circle", "top left"), PositionAtom("blue", "square", "bottom")], [])
    for seed in range(8):
        cap = describe(d, seed)
        region = atom_word_spans(cap, "region")["position"]
        assert [cap[a:b] for a, b in region] == ["top left", "bottom"]
        pred = atom_word_spans(cap)["position"]
        for (a, b), (ra, rb) in zip(pred, region):
            assert a < ra and rb <= b and cap[b] == "." and cap[:a].endswith(("red circle ", "blue square "))
        for other in set(REGIONS.values()) - {"top left"}:
            bad = describe(Description(d.groups, [PositionAtom("red", "circle", other), d.positions[1]], []), seed)
            (a, b) = pred[0]
            assert bad.startswith(cap[:a]) and bad.endswith(cap[b:]), (cap, bad)  # only the predicate differs
    with pytest.raises(ValueError, match="region"):
        atom_word_spans(cap, "words")


def test_render_is_deterministic_and_antialiased():
    s = sample_scene(random.Random(3), n_objects=3)
    a, b = np.asarray(render(s)), np.asarray(render(s))
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and (a == b).all()
    # anti-aliasing: edge pixels take intermediate values, not only background or pure palette colours
    palette = {tuple(c) for c in COLORS.values()} | {(0, 0, 0)}
    assert any(tuple(p) not in palette for p in a.reshape(-1, 3))


def test_splits_are_disjoint_by_content():
    train = {c for _, c in sample_split("train", 3000, seed=0)}
    evals = [c for _, c in sample_split("eval", 300, seed=0)]
    assert not train.intersection(evals)
    # and the split is by content: no eval *description* can be drawn in training under any wording
    from promptecho.shapes.world import is_eval
    assert all(is_eval(atoms_from_caption(c)) for c in evals)
    assert not any(is_eval(atoms_from_caption(c)) for c in list(train)[:500])


def test_bad_caption_is_rejected():
    with pytest.raises(ValueError, match="no ShapesWorld objects"):
        atoms_from_caption("a photo of a cat")
