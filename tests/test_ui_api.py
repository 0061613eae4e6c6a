"""The running app through gradio_client: score, compare, rerank, bad input leaves the app working."""
import os
import re

import pytest
from PIL import Image

from ui import core
from ui_fixtures import make_client, ui_app, ui_models_dir  # noqa: F401

gradio_client = pytest.importorskip("gradio_client")


def _file(p):
    return gradio_client.handle_file(p) if hasattr(gradio_client, "handle_file") else p


@pytest.fixture(scope="module")
def client(ui_app):
    return make_client(ui_app[0])


@pytest.fixture(scope="module")
def vlm(ui_models_dir):
    from promptecho.vlm import load_vlm
    return load_vlm(os.path.join(ui_models_dir, "tiny-llava"), dtype="float32", device="cpu")


def _gallery_len(g):
    """gradio_client 0.5 (Gradio 3.x) returns a gallery as a folder (images + captions.json); later: a list."""
    if isinstance(g, str) and os.path.isdir(g):
        return len([f for f in os.listdir(g) if not f.endswith(".json")])
    return len(g)


def _reward(md):
    return float(re.search(r"reward (-?[0-9.]+)", md).group(1))


def test_score_and_compare(client, vlm):
    true_cap, wrong_cap = core.example_prompts()
    ex = core.example_image_path()
    out = client.predict(_file(ex), None, true_cap, "tiny-llava", "", "Describe this image in detail.",
                         api_name="/score")
    status, summ_a, html_a, heat_a = out[:4]
    assert status == "Scored."
    img = Image.open(ex).convert("RGB")
    [ref], [vqa] = vlm.score_and_vqa([img], [true_cap])
    assert _reward(summ_a) == pytest.approx(ref.reward, abs=1e-4)
    assert f"P(yes) {vqa.p_yes:.4f}" in summ_a
    assert html_a.count('class="pe-word"') == len(true_cap.split())
    assert os.path.isfile(heat_a if isinstance(heat_a, str) else heat_a["path"])
    # compare: the same image twice on the same prompt -> equal rewards, A reported (ties go to A)
    other = os.path.join(core.EXAMPLES, "candidate_1.png")
    out = client.predict(_file(ex), _file(other), wrong_cap, "tiny-llava", "", "Describe this image in detail.",
                         api_name="/score")
    refs = vlm.score([img, Image.open(other).convert("RGB")], wrong_cap)
    better = "A" if refs[0].reward >= refs[1].reward else "B"
    assert out[0].startswith(f"Image {better} matches")
    assert _reward(out[1]) == pytest.approx(refs[0].reward, abs=1e-4)
    assert _reward(out[4]) == pytest.approx(refs[1].reward, abs=1e-4)


def test_rerank(client, vlm):
    paths = [os.path.join(core.EXAMPLES, f"candidate_{i}.png") for i in range(4)]
    prompt = core.example_prompts()[0]
    status, table, ranked, heat, best = client.predict([_file(p) for p in paths], prompt, "tiny-llava", "",
                                                       "Describe this image in detail.", api_name="/rerank")
    assert status == "Ranked 4 images."
    ref = vlm.rerank([Image.open(p).convert("RGB") for p in paths], prompt)
    names = re.findall(r"\| \d+ \| (candidate_\d)\S*", table)
    assert len(names) == 4 and _gallery_len(ranked) == 4 and _gallery_len(heat) == 4
    assert [n.split("_")[1] for n in names] == [str(i) for i in ref.order]
    best_path = best if isinstance(best, str) else best["path"]
    assert Image.open(best_path).tobytes() == Image.open(paths[ref.best]).convert("RGB").tobytes()


def test_bad_input_then_still_works(client, ui_models_dir):
    cap = core.example_prompts()[0]
    ex = _file(core.example_image_path())
    q = "Describe this image in detail."
    cases = [((None, None, cap, "tiny-llava", "", q), "no image"),
             ((ex, None, "  ", "tiny-llava", "", q), "prompt is empty"),
             ((ex, None, cap, core.CUSTOM, "/definitely/not/here", q), "outside the allowed folders"),
             ((ex, None, cap, core.CUSTOM, os.path.join(ui_models_dir, "gone"), q), "no model found"),
             ((ex, None, cap, core.CUSTOM, "/tmp", q), "outside the allowed folders")]
    for args, msg in cases:
        out = client.predict(*args, api_name="/score")
        assert out[0].startswith("**Error:**") and msg in out[0], out[0]
    out = client.predict([], cap, "tiny-llava", "", q, api_name="/rerank")
    assert "no images" in out[0]
    assert client.predict(ex, None, cap, "tiny-llava", "", q, api_name="/score")[0] == "Scored."
