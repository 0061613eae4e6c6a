"""Heatmap PNG / JSON rendering of per-word losses."""
import json
import math
import os
import random

import pytest

from promptecho.heatmap import (heatmap_json, loss_to_rgb, relative_luminance, render_heatmap,
                                result_from_heatmap_json, word_boxes)
from promptecho.results import ScoreResult, WordScore
from promptecho.scoring import word_scores

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "densealignbench_200.jsonl")


def make_result(prompt, seed=0):
    """A ScoreResult with one token per word and random losses (the engine's word aggregation is reused)."""
    rng = random.Random(seed)
    spans, pos = [], 0
    for w in prompt.split():
        s = prompt.index(w, pos)
        spans.append((s, s + len(w)))
        pos = s + len(w)
    losses = [rng.uniform(0, 6) for _ in spans]
    words = word_scores(prompt, spans, losses)
    return ScoreResult(prompt=prompt, reward=-sum(losses) / len(losses), loss=sum(losses) / len(losses),
                       reduction="mean", token_losses=losses, tokens=[prompt[a:b] for a, b in spans], spans=spans,
                       words=words)


def lightness(rgb):
    y = relative_luminance(rgb)
    return 116 * (y ** (1 / 3) if y > 216 / 24389 else (24389 / 27 * y + 16) / 116) - 16


def test_colour_map_is_perceptually_ordered():
    ls = [lightness(loss_to_rgb(x / 100, 0, 1)) for x in range(101)]
    assert all(a > b for a, b in zip(ls, ls[1:])), "lightness must fall strictly as loss rises"
    assert ls[0] - ls[-1] > 70  # a wide range, light to dark
    assert loss_to_rgb(-3, 0, 1) == loss_to_rgb(0, 0, 1) and loss_to_rgb(9, 0, 1) == loss_to_rgb(1, 0, 1)
    assert loss_to_rgb(float("nan")) == (160, 160, 160)


def test_word_boxes_are_coloured_by_their_loss():
    r = make_result("a large red circle is to the left of a small blue square", seed=3)
    img = render_heatmap(r, width=400)
    hi = max(1.0, max(w.loss for w in r.words))
    for w, (x0, y0, x1, y1) in zip(r.words, word_boxes(r, width=400)):
        # a pixel on the box's left margin, vertically centred, clear of the glyphs
        px = img.getpixel((int(x0) + 1, int((y0 + y1) / 2)))
        want = loss_to_rgb(w.loss, 0.0, hi)
        assert max(abs(a - b) for a, b in zip(px, want)) <= 2, (w.text, px, want)


def test_wrapping_stays_within_width_and_long_prompts_grow():
    short = make_result("one two three")
    long_prompt = " ".join(f"word{i}" for i in range(220))
    long = make_result(long_prompt)
    boxes = word_boxes(long, width=500)
    assert max(b[2] for b in boxes) <= 500
    assert len({b[1] for b in boxes}) > 10  # many lines
    assert render_heatmap(long, width=500).height > render_heatmap(short, width=500).height + 200


def test_newlines_in_the_prompt_start_new_lines():
    r = make_result("first line\nsecond line")
    boxes = word_boxes(r)
    assert boxes[2][1] > boxes[1][1]


def test_non_latin_prompts_render():
    r = make_result("café 東京 の 夜景 🚀 naïve Привет мир")
    img = render_heatmap(r)
    assert img.size[0] == 768 and img.size[1] > 50


@pytest.mark.skipif(not os.path.isfile(SHARED), reason="shared DenseAlignBench sample not present")
def test_densealignbench_captions_render():
    with open(SHARED) as f:
        caps = [json.loads(line)["caption"] for line, _ in zip(f, range(5))]
    for i, c in enumerate(caps):
        img = render_heatmap(make_result(c, seed=i))
        assert img.height > 200


def test_json_round_trip():
    r = make_result("a small cyan diamond in the center", seed=5)
    d = heatmap_json(r)
    back = result_from_heatmap_json(json.loads(json.dumps(d)))
    assert back == r
    assert len(d["word_colors"]) == len(r.words)
    assert d["word_colors"][0] == "#%02x%02x%02x" % loss_to_rgb(r.words[0].loss, d["scale"]["vmin"],
                                                                d["scale"]["vmax"])
    assert "".join(d["token_pieces"]) == r.prompt.replace(" ", "")  # one token per word, spaces not scored
    assert d["token_colors"][2] == "#%02x%02x%02x" % loss_to_rgb(r.token_losses[2], d["scale"]["vmin"],
                                                                 d["scale"]["vmax"])


def test_missing_glyphs_give_a_note_not_a_crash(monkeypatch):
    import promptecho.heatmap as H
    r = make_result("a cat 東京 🚀 naïve")
    # only a Latin font available: CJK and emoji cannot be drawn, accents can
    monkeypatch.setattr(H, "_FONT_CANDIDATES", ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",))
    monkeypatch.delenv("PROMPTECHO_FONT", raising=False)
    font, missing = H.find_font(16, text=r.prompt)
    if os.path.isfile("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        assert set(missing) == {"東", "京", "🚀"}
    note = H.font_note(missing)
    assert note is None or ("U+6771" in note and "fonts-noto-cjk" in note)
    with_note = render_heatmap(r)
    monkeypatch.setattr(H, "find_font", lambda size, path=None, text="": (font, []))
    without = render_heatmap(r)
    assert with_note.height > without.height if missing else with_note.height == without.height


def test_cjk_font_is_preferred_when_installed():
    import promptecho.heatmap as H
    cjk = [p for p in H._FONT_CANDIDATES[:4] if os.path.isfile(p)]
    if not cjk:
        pytest.skip("no CJK font installed (e.g. apt-get install fonts-wqy-zenhei)")
    font, missing = H.find_font(16, text="東京の夜景")
    assert missing == [] and font.path in cjk


def test_overlong_word_stays_inside_the_image():
    r = make_result("short " + "x" * 400 + " tail")
    img = render_heatmap(r, width=300)
    boxes = word_boxes(r, width=300)
    assert all(b[2] <= 300 - 12 for b in boxes) and img.width == 300
    with pytest.raises(ValueError):
        render_heatmap(r, width=50)
