"""ShapesWorld rule-based oracle: recovers rendered objects exactly and checks captions atom by atom."""
import random

import numpy as np
from PIL import Image

from promptecho.shapes.oracle import check, detect, oracle_reward
from promptecho.shapes.render import IMAGE_SIZE, render
from promptecho.shapes.world import (CORRUPTION_KINDS, Obj, Scene, corrupt, describe, sample_scene, sample_split,
                                     scene_description)


def test_oracle_accepts_own_scenes_and_detects_corruptions():
    data = sample_split("train", 300, seed=11)
    own = [check(render(s), c).correct for s, c in data]
    assert np.mean(own) >= 0.99
    rng, detected, total = random.Random(5), 0, 0
    for s, _ in data:
        d, img = scene_description(s), render(s)
        for k in CORRUPTION_KINDS:
            c = corrupt(d, k, rng)
            if c is not None:
                total += 1
                detected += not check(img, describe(c, s.seed)).correct
    assert total > 800 and detected / total >= 0.99


def test_oracle_detects_objects_exactly():
    s = sample_scene(random.Random(7), n_objects=4)
    found = sorted((o.color, o.shape, o.size, o.row, o.col) for o in detect(render(s)))
    assert found == sorted((o.color, o.shape, o.size, o.row, o.col) for o in s.objects)


def test_oracle_on_blank_image_fails_every_object_atom():
    from PIL import Image
    r = check(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)), "The image shows a large red circle on a black background.")
    assert r.objects == [] and not r.correct and r.fraction < 1


def test_known_scene_atom_by_atom():
    # two large red circles (top left, bottom left) and a small blue square at the right
    s = Scene([Obj("red", "circle", "large", 0, 0), Obj("red", "circle", "large", 2, 0),
               Obj("blue", "square", "small", 1, 2)])
    img = render(s)
    ok = check(img, "The image shows two large red circles and a small blue square on a black background. "
                    "The blue square is on the right side.")
    assert ok.correct and ok.fraction == 1.0
    wrong = check(img, "The image shows three large red circles and a small blue square on a black background. "
                       "The blue square is on the left side.")
    # count atom false, blue-square count true, position false, nothing-else true
    assert wrong.satisfied == [False, True, False, True] and wrong.fraction == 0.5
    rel = check(img, "In this image we can see a small blue square and a large green triangle. "
                     "The blue square is to the left of the green triangle.")
    assert rel.satisfied[0] and not rel.satisfied[1] and not rel.satisfied[2]


def test_oracle_works_on_other_image_sizes_and_as_reward_fn():
    s = sample_scene(random.Random(9), n_objects=3)
    cap = describe(scene_description(s), 0)
    assert check(render(s, 96), cap).correct  # upscaled render still reads correctly
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    r = oracle_reward([render(s), blank], [cap, cap])
    assert r[0] == 1.0 and r[1] < 1.0


