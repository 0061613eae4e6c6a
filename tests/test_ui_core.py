"""UI logic without Gradio: model choice restrictions, coloured words, bad input messages."""
import os
import subprocess
import sys

import pytest
from PIL import Image

from ui import core
from ui_fixtures import ui_models_dir  # noqa: F401


def test_engine_never_imports_gradio():
    code = ("import sys, promptecho, promptecho.vlm, promptecho.images, promptecho.heatmap, promptecho.results, "
            "promptecho.scoring, promptecho.shapes, promptecho.ui, ui, ui.core\n"
            "import importlib.util\n"
            "for m in ('promptecho.grpo', 'promptecho.shapes.generator'):\n"
            "    if importlib.util.find_spec(m): __import__(m)\n"
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=core.REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_launcher_help():
    out = subprocess.run([sys.executable, "-m", "promptecho.ui", "--help"], capture_output=True, text=True,
                         cwd=core.REPO_ROOT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": ""})
    assert out.returncode == 0, out.stderr
    assert "--listen" in out.stdout and "--port" in out.stdout


def test_model_choices_and_paths(ui_models_dir, tmp_path):
    cfg = core.UIConfig(models_dir=ui_models_dir, out_dir=str(tmp_path / "o"))
    assert core.model_choices(cfg) == [core.BUILTIN, "tiny-llava", core.CUSTOM]
    inside = os.path.join(ui_models_dir, "tiny-llava")
    assert core.resolve_model(cfg, "tiny-llava") == inside
    assert core.resolve_model(cfg, core.CUSTOM, inside) == inside
    with pytest.raises(core.UIInputError, match="outside the allowed folders"):
        core.resolve_model(cfg, core.CUSTOM, str(tmp_path))
    link = os.path.join(ui_models_dir, "escape")  # a symlink inside the models dir pointing out of it
    os.symlink(str(tmp_path), link)
    try:
        with pytest.raises(core.UIInputError, match="outside the allowed folders"):
            core.resolve_model(cfg, core.CUSTOM, link)
    finally:
        os.remove(link)
    with pytest.raises(core.UIInputError, match="no model found"):
        core.resolve_model(cfg, core.CUSTOM, os.path.join(ui_models_dir, "missing"))
    with pytest.raises(core.UIInputError, match="unknown model"):
        core.resolve_model(cfg, "../tiny-llava")
    with pytest.raises(core.UIInputError, match="type a model folder"):
        core.resolve_model(cfg, core.CUSTOM, "  ")
    allowed = core.UIConfig(models_dir=None, allowed_dirs=[ui_models_dir], out_dir=str(tmp_path / "o"))
    assert core.resolve_model(allowed, core.CUSTOM, inside) == inside


def test_bad_inputs(ui_models_dir, tmp_path):
    cfg = core.UIConfig(models_dir=ui_models_dir, out_dir=str(tmp_path / "o"))
    with pytest.raises(core.UIInputError, match="no image"):
        core.score_images(cfg, [None], "a red circle", "tiny-llava")
    with pytest.raises(core.UIInputError, match="prompt is empty"):
        core.score_images(cfg, [core.example_image_path()], "   ", "tiny-llava")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(core.UIInputError, match="cannot read image"):
        core.score_images(cfg, [str(bad)], "a red circle", "tiny-llava")
    with pytest.raises(core.UIInputError, match="no images"):
        core.best_of_n(cfg, [], "a red circle", "tiny-llava")
    with pytest.raises(core.UIInputError, match="N must be"):
        core.generate_images(cfg, "a red circle", 0)


def test_words_html_matches_losses(ui_models_dir, tmp_path):
    from promptecho.vlm import load_vlm

    cfg = core.UIConfig(models_dir=ui_models_dir, out_dir=str(tmp_path / "o"))
    prompt = "a red circle <b>left</b> of a blue square"
    [r] = core.score_images(cfg, [core.example_image_path()], prompt, "tiny-llava", with_vqa=False)
    vlm = load_vlm(os.path.join(ui_models_dir, "tiny-llava"), dtype="float32", device="cpu")
    [ref] = vlm.score([Image.open(core.example_image_path()).convert("RGB")], prompt)
    assert r["reward"] == pytest.approx(ref.reward, abs=1e-6)
    html = r["html"]
    assert html.count('class="pe-word"') == len(ref.words) == len(prompt.split())
    assert "<b>" not in html and "&lt;b&gt;left&lt;/b&gt;" in html  # prompt text is escaped
    for w in ref.words:
        assert f'data-loss="{w.loss:.6f}"' in html
    assert Image.open(r["heatmap"]).size[0] == 768
