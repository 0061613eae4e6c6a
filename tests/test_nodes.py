"""ComfyUI node classes, exercised without ComfyUI (the pack must import and work on its own)."""
import importlib.util
import json
import os
import sys

import pytest
import torch

from fixtures.engine import random_image, tiny_dir, tiny_vlm  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_pack():
    """Import the repository as ComfyUI does: a package named after its folder, from custom_nodes/."""
    name = "promptecho_pack_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def handle(pack, tiny_dir):
    loader = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]()
    (h,) = loader.load("ShapesWorld (built-in)", "fp32", "cpu", True, custom_path=tiny_dir("llava"))
    return h


def comfy_images(n, h=48, w=64):
    import numpy as np
    return torch.from_numpy(np.stack([np.asarray(random_image(i, h, w), dtype="float32") / 255 for i in range(n)]))


def test_pack_exports_the_classic_contract(pack):
    assert pack.WEB_DIRECTORY == "./web" and os.path.isdir(os.path.join(ROOT, "web"))
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        assert "required" in spec
        for key, val in {**spec["required"], **spec.get("optional", {})}.items():
            assert isinstance(val, tuple) and (isinstance(val[0], (str, list))), (name, key)
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY == "PromptEcho" and cls.DESCRIPTION
        if hasattr(cls, "OUTPUT_IS_LIST"):
            assert len(cls.OUTPUT_IS_LIST) == len(cls.RETURN_TYPES)


def test_loader_reuses_the_same_model(pack, tiny_dir, handle):
    (again,) = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]().load("ShapesWorld (built-in)", "fp32", "cpu", True,
                                                                     custom_path=tiny_dir("llava"))
    assert again.vlm is handle.vlm


def test_loader_errors_are_specific(pack, tmp_path):
    loader = pack.NODE_CLASS_MAPPINGS["PromptEchoLoadVLM"]()
    with pytest.raises(ValueError, match="not found"):
        loader.load("ShapesWorld (built-in)", "auto", "cpu", True, custom_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="hub id|not found"):
        loader.load("ShapesWorld (built-in)", "auto", "cpu", True, custom_path="Qwen/Qwen3-VL-8B-Instruct")


def test_score_node_outputs_match_engine(pack, handle, tiny_vlm):
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoScore"]()
    imgs = comfy_images(3)
    prompt = "a small red circle above a large blue square"
    out = node.score(handle, imgs, prompt, "Describe this image in detail.", "mean", 2)
    mean, rewards_json, rewards, heat = out["result"]
    direct = [r.reward for r in tiny_vlm("llava").score(imgs, prompt)]
    assert rewards == pytest.approx(direct, abs=1e-6) and json.loads(rewards_json) == pytest.approx(direct, abs=1e-6)
    assert mean == pytest.approx(sum(direct) / 3, abs=1e-6)
    assert heat.ndim == 4 and heat.shape[0] == 3 and heat.shape[-1] == 3 and 0 <= heat.min() and heat.max() <= 1
    ui = out["ui"]["promptecho"]
    assert len(ui) == 3 and ui[0]["prompt"] == prompt
    assert "".join(prompt[a:b] for a, b in ui[0]["spans"]).replace(" ", "") == prompt.replace(" ", "")
    assert len(ui[0]["word_colors"]) == len(prompt.split())
    json.dumps(out["ui"])  # the payload must be JSON for the websocket


def test_best_of_n_orders_images_latents_and_masks(pack, handle, tiny_vlm):
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoBestOfN"]()
    imgs = comfy_images(4)
    prompt = "two green triangles"
    latent = {"samples": torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 4, 2, 2).clone()}
    mask = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 48, 64).clone()
    out = node.rerank(handle, imgs, prompt, 2, "promptecho", "Describe this image in detail.", latent, mask)
    best, top, scores_json, idx_json, lat, msk = out["result"]
    scores = [r.reward for r in tiny_vlm("llava").score(imgs, prompt)]
    order = sorted(range(4), key=lambda i: (-scores[i], i))
    assert json.loads(idx_json) == order[:2]
    assert json.loads(scores_json) == pytest.approx([scores[i] for i in order[:2]], abs=1e-6)
    assert torch.equal(best, imgs[order[0]:order[0] + 1]) and torch.equal(top, imgs[order[:2]])
    assert lat["samples"][:, 0, 0, 0].tolist() == [float(i) for i in order[:2]]
    assert msk[:, 0, 0].tolist() == [float(i) for i in order[:2]]


def test_best_of_n_rejects_mismatched_latent_before_scoring(pack, handle):
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoBestOfN"]()
    with pytest.raises(ValueError, match="latent: has 3 samples but 4"):
        node.rerank(handle, comfy_images(4), "a cat", 1, "promptecho", "q", {"samples": torch.zeros(3, 4, 2, 2)})


def test_vqascore_node(pack, handle, tiny_vlm):
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoVQAScore"]()
    imgs = comfy_images(2)
    out = node.score(handle, imgs, "a red square", 4)
    direct = [r.p_yes for r in tiny_vlm("llava").vqascore(imgs, "a red square")]
    assert out["result"][2] == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("prompt, images, message", [
    ("   ", "ok", "prompt is empty"),
    ("a cat", "nan", "nan"),
])
def test_bad_input_gives_specific_errors(pack, handle, prompt, images, message):
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoScore"]()
    imgs = comfy_images(1)
    if images == "nan":
        imgs[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"(?i){message}"):
        node.score(handle, imgs, prompt, "Describe this image in detail.", "mean", 8)
    with pytest.raises(ValueError, match="Load VLM"):
        node.score("not a vlm", imgs, "a cat", "q", "mean", 8)


def test_progress_and_interrupt_hooks_are_used(pack, handle, monkeypatch):
    """With ComfyUI present, every batch updates the bar and checks for interruption."""
    common = sys.modules["promptecho_pack_under_test.nodes.common"]
    calls = []

    class Bar:
        def __init__(self, total):
            calls.append(("bar", total))

        def update_absolute(self, done, total=None):
            calls.append(("update", done))

    class MM:
        class InterruptProcessingException(Exception):
            pass

        @staticmethod
        def throw_exception_if_processing_interrupted():
            calls.append(("check",))
            if sum(c[0] == "check" for c in calls) >= 2:
                raise MM.InterruptProcessingException()

        @staticmethod
        def get_torch_device():
            return torch.device("cpu")

    monkeypatch.setattr(common, "_cu", type("CU", (), {"ProgressBar": Bar}))
    monkeypatch.setattr(common, "_mm", MM)
    node = pack.NODE_CLASS_MAPPINGS["PromptEchoScore"]()
    with pytest.raises(MM.InterruptProcessingException):
        node.score(handle, comfy_images(4), "a cat", "Describe this image in detail.", "mean", 1)
    assert ("bar", 4) in calls and ("update", 1) in calls


def test_example_api_workflows_are_consistent(pack):
    """Every PromptEcho node in the API examples gets all its required inputs; links point at real outputs."""
    from examples_check import api_workflows
    for name, wf in api_workflows():
        for nid, node in wf.items():
            cls = pack.NODE_CLASS_MAPPINGS.get(node["class_type"])
            for key, val in node["inputs"].items():
                if isinstance(val, list):
                    src = wf[val[0]]
                    src_cls = pack.NODE_CLASS_MAPPINGS.get(src["class_type"])
                    if src_cls is not None:
                        assert val[1] < len(src_cls.RETURN_TYPES), (name, nid, key)
            if cls is not None:
                assert set(cls.INPUT_TYPES()["required"]) <= set(node["inputs"]), (name, nid)


def test_example_ui_workflows_have_valid_widget_values(pack):
    """UI-format examples: every PromptEcho widget has a value of its type (a null combo value is sent as-is when
    the user queues the loaded graph, and ComfyUI rejects it), in the order of INPUT_TYPES."""
    import glob
    paths = [p for p in glob.glob(os.path.join(ROOT, "examples", "workflows", "*.json")) if not p.endswith("_api.json")]
    assert len(paths) >= 3
    checked = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            ui = json.load(f)
        for node in ui["nodes"]:
            cls = pack.NODE_CLASS_MAPPINGS.get(node["type"])
            if cls is None:
                continue
            spec = cls.INPUT_TYPES()
            widgets = [(n, v) for sec in ("required", "optional") for n, v in spec.get(sec, {}).items()
                       if isinstance(v[0], list) or v[0] in ("STRING", "INT", "FLOAT", "BOOLEAN")]
            assert len(node["widgets_values"]) == len(widgets), (path, node["type"])
            for (name, (kind, *_)), value in zip(widgets, node["widgets_values"]):
                if isinstance(kind, list):
                    # the model list depends on the user's models/ folders; the built-in is always there
                    assert value in kind or (name == "model" and value.startswith("LLM/")), (path, name, value)
                else:
                    assert isinstance(value, {"STRING": str, "INT": int, "FLOAT": (int, float),
                                              "BOOLEAN": bool}[kind]), (path, name, value)
                checked += 1
    assert checked > 20
