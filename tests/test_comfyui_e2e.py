"""End-to-end: a real ComfyUI runs the example workflows with this pack in custom_nodes/.

Runs only when COMFYUI_DIR points at a ComfyUI checkout whose Python environment works
(COMFYUI_PYTHON: that environment's python, default: this one). See README "ComfyUI" for set-up.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from examples_check import ROOT, api_workflows

COMFY = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFY, reason="COMFYUI_DIR is not set: the ComfyUI end-to-end harness needs a "
                                                  "ComfyUI checkout (see README, 'ComfyUI end-to-end test')")
RUNNABLE = ("score_shapesworld_api.json", "best_of_n_shapesworld_api.json")  # the recipe needs SDXL weights
# the examples use the built-in ShapesWorld VLM; PROMPTECHO_E2E_VLM swaps in another local VLM folder
VLM_OVERRIDE = os.environ.get("PROMPTECHO_E2E_VLM", "")


def _vlm_path():
    sys.path.insert(0, ROOT)
    from promptecho.shapes import default_vlm_path, has_default_vlm
    if VLM_OVERRIDE:
        return VLM_OVERRIDE
    if not has_default_vlm():
        pytest.skip("the built-in ShapesWorld VLM is not in promptecho/shapes/models/vlm (and PROMPTECHO_E2E_VLM "
                    "is not set)")
    return default_vlm_path()

# For CPU-only machines whose torchvision wheel cannot load its native ops (test environments only; never part
# of the pack): define the two operator schemas torchvision registers fake kernels for, before it is imported.
SHIM = '''import importlib.util, os, torch
spec = importlib.util.find_spec("torchvision")
if spec is not None:
    try:
        torch.ops.load_library(os.path.join(list(spec.submodule_search_locations)[0], "_C.so"))
    except Exception:
        _lib = torch.library.Library("torchvision", "DEF")
        _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        torch._cpu_torchvision_shim = _lib  # ComfyUI drops this module after running it; the schemas must live on
'''


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url, data):
    req = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def prepare_comfyui(comfy):
    """Link the pack into custom_nodes/, add the CPU torchvision shim, copy the example images to input/."""
    nodes_dir = os.path.join(comfy, "custom_nodes")
    link = os.path.join(nodes_dir, "promptecho")
    if not os.path.exists(link):
        os.symlink(ROOT, link)
    shim_dir = os.path.join(nodes_dir, "zz_cpu_torchvision_shim")
    os.makedirs(shim_dir, exist_ok=True)
    with open(os.path.join(shim_dir, "prestartup_script.py"), "w") as f:
        f.write(SHIM)
    with open(os.path.join(shim_dir, "__init__.py"), "w") as f:
        f.write("NODE_CLASS_MAPPINGS = {}\n")
    for name in os.listdir(os.path.join(ROOT, "examples", "images")):
        if name.endswith(".png"):
            shutil.copy(os.path.join(ROOT, "examples", "images", name), os.path.join(comfy, "input", name))


@pytest.fixture(scope="module")
def comfy():
    prepare_comfyui(COMFY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(COMFY, "promptecho_e2e.log"), "w")
    proc = subprocess.Popen([os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen",
                             "127.0.0.1", "--port", str(port), "--disable-auto-launch"], cwd=COMFY, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                info = _get(f"{base}/object_info/PromptEchoScore", timeout=5)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start; see {log.name}")
                time.sleep(2)
        assert "PromptEchoScore" in info
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run(base, workflow):
    pid = _post(f"{base}/prompt", {"prompt": workflow})["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        hist = _get(f"{base}/history/{pid}")
        if pid in hist:
            entry = hist[pid]
            errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            assert entry["status"]["status_str"] == "success", [(e.get("node_type"), e.get("exception_message"))
                                                                for e in errors] or entry["status"]
            return entry["outputs"]
        time.sleep(1)
    raise TimeoutError("workflow did not finish")


def test_all_nodes_load(comfy):
    info = _get(f"{comfy}/object_info")
    for name in ("PromptEchoLoadVLM", "PromptEchoScore", "PromptEchoBestOfN", "PromptEchoVQAScore"):
        assert name in info and info[name]["category"] == "PromptEcho"


@pytest.mark.parametrize("name", RUNNABLE)
def test_example_workflow_runs(comfy, name):
    wf = dict(api_workflows())[name]
    vlm_path = _vlm_path()
    if VLM_OVERRIDE:
        for node in wf.values():
            if node["class_type"] == "PromptEchoLoadVLM":
                node["inputs"]["custom_path"] = VLM_OVERRIDE
    outputs = _run(comfy, wf)
    pe_nodes = [k for k, v in wf.items() if v["class_type"] in ("PromptEchoScore", "PromptEchoBestOfN")]
    payload = outputs[pe_nodes[0]]["promptecho"]
    assert payload and all(math.isfinite(r["reward"]) for r in payload)
    if "BestOfN" in wf[pe_nodes[0]]["class_type"]:
        from PIL import Image
        from promptecho.vlm import load_vlm
        node = wf[pe_nodes[0]]["inputs"]
        imgs = [Image.open(os.path.join(ROOT, "examples", "images", f"candidate_{i}.png")).convert("RGB")
                for i in range(4)]
        direct = load_vlm(vlm_path, dtype="fp32", device="cpu").rerank(imgs, node["prompt"])
        assert [r["index"] for r in outputs[pe_nodes[0]]["ranking"]] == direct.order
