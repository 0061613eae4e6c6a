"""`python -m promptecho score|rerank|demo`: output equals the engine; bad input exits cleanly."""
import json
import os
import subprocess
import sys

import pytest

from fixtures.engine import random_image, tiny_dir, tiny_vlm  # noqa: F401
from promptecho.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_images")
    paths = []
    for i in range(3):
        p = str(d / f"img{i}.png")
        random_image(i).save(p)
        paths.append(p)
    return paths


def test_score_json_equals_engine(tiny_dir, tiny_vlm, images, capsys, tmp_path):
    prompt = "a red circle left of a blue square"
    heat = str(tmp_path / "heat.png")
    assert main(["score", "--model", tiny_dir("llava"), "--image", *images[:2], "--prompt", prompt, "--json",
                 "--dtype", "fp32", "--device", "cpu", "--heatmap", heat]) == 0
    out = json.loads(capsys.readouterr().out)
    direct = tiny_vlm("llava").score([random_image(0), random_image(1)], prompt)
    assert [o["image"] for o in out] == images[:2]
    for o, r in zip(out, direct):
        assert o["reward"] == pytest.approx(r.reward, abs=1e-6)
        assert o["token_losses"] == pytest.approx(r.token_losses, abs=1e-6)
    assert os.path.getsize(str(tmp_path / "heat_0.png")) > 0 and os.path.getsize(str(tmp_path / "heat_1.png")) > 0


def test_rerank_orders_by_engine_scores(tiny_dir, tiny_vlm, images, capsys):
    prompt = "two small green triangles"
    assert main(["rerank", "--model", tiny_dir("llava"), "--image", *images, "--prompt", prompt, "--json",
                 "--dtype", "fp32", "--device", "cpu", "--top-k", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    scores = [r.reward for r in tiny_vlm("llava").score([random_image(i) for i in range(3)], prompt)]
    best = sorted(range(3), key=lambda i: (-scores[i], i))[:2]
    assert [r["index"] for r in out["ranking"]] == best
    assert [r["score"] for r in out["ranking"]] == pytest.approx([scores[i] for i in best], abs=1e-6)


@pytest.mark.parametrize("argv_tail, message", [
    (["--image", "/nonexistent/x.png", "--prompt", "a cat"], "image not found"),
    (["--image", "{img}", "--prompt", "   "], "empty"),
])
def test_bad_input_exits_with_message(tiny_dir, images, capsys, argv_tail, message):
    argv = ["score", "--model", tiny_dir("llava"), "--dtype", "fp32", "--device", "cpu"]
    argv += [a.replace("{img}", images[0]) for a in argv_tail]
    assert main(argv) == 2
    assert message in capsys.readouterr().err.lower()


def test_missing_model_folder_and_unreadable_image(images, tmp_path, capsys):
    assert main(["score", "--model", str(tmp_path / "nope"), "--image", images[0], "--prompt", "x"]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["score", "--model", str(tmp_path), "--image", str(bad), "--prompt", "x"]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_help_is_descriptive():
    text = build_parser().format_help()
    for cmd in ("score", "rerank", "demo"):
        assert cmd in text
    sub = subprocess.run([sys.executable, "-m", "promptecho", "score", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert sub.returncode == 0 and "examples:" in sub.stdout and "--heatmap" in sub.stdout
