"""PromptEcho tab for Stable Diffusion WebUI-style hosts (AUTOMATIC1111 / SD.Next with Gradio 3.41-3.43,
Forge / Forge Neo with Gradio 4.40). Install: clone this repository into the host's `extensions/` folder and
restart; the host loads this file and shows a "PromptEcho" tab (Score, Best-of-N, Train).

Thin on purpose: the tab itself is ui/ (the same Blocks as the standalone app, built with in_host=True so it keeps
the host's theme and never calls launch()/queue()). This file only
- registers the tab through `modules.script_callbacks.on_ui_tabs`,
- adds settings through `on_ui_settings` (Settings -> PromptEcho: VLM models folder, extra allowed folders,
  output folder, device), read from `shared.opts` when the tab is built (restart the UI after changing them),
- makes GPU work (scoring, generation, each training step) take the host's `modules.call_queue.queue_lock`,
  so it never runs at the same time as the host's own generation."""
from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "promptecho_webui_ui"  # ui/ under a unique name: hosts and other extensions may own a module "ui"
TITLE, ELEM_ID, SECTION = "PromptEcho", "promptecho", ("promptecho", "PromptEcho")
DEFAULTS = {"promptecho_models_dir": "", "promptecho_allowed_dirs": "", "promptecho_out_dir": "",
            "promptecho_device": ""}


def load_ui():
    """The repository's ui/ package, imported as PACKAGE (its modules use relative imports only)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    if ROOT not in sys.path:
        sys.path.append(ROOT)  # for the engine package `promptecho`
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(ROOT, "ui", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(ROOT, "ui")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = mod
    spec.loader.exec_module(mod)
    return mod


def _host_paths():
    """(models folder, data folder) of the host, with fallbacks for hosts that lay them out differently."""
    models = data = None
    for name in ("modules.paths_internal", "modules.paths"):
        try:
            m = __import__(name, fromlist=["_"])
        except ImportError:
            continue
        models = models or getattr(m, "models_path", None)
        data = data or getattr(m, "data_path", None)
    return models, data or os.getcwd()


def _opt(shared, key):
    """A setting's saved value (opts.data is filled from config.json before any tab is built), else its default."""
    data = getattr(getattr(shared, "opts", None), "data", None) or {}
    v = data.get(key, DEFAULTS[key])
    return (v or "").strip() if isinstance(v, str) else v


def host_config(shared=None):
    """UIConfig from the host's settings: models folder (default <models>/VLM), allowed folders, output folder
    (default <data>/outputs/promptecho, inside the host's folder so Gradio may serve its files), device, and the
    host's GPU queue lock."""
    core = __import__(PACKAGE + ".core", fromlist=["_"])
    models_root, data = _host_paths()
    models_dir = _opt(shared, "promptecho_models_dir") or (os.path.join(models_root, "VLM") if models_root else None)
    allowed = [p.strip() for p in _opt(shared, "promptecho_allowed_dirs").split(os.pathsep) if p.strip()]
    if models_root:
        allowed.append(models_root)  # generators and models/Lora live there
    out_dir = _opt(shared, "promptecho_out_dir") or os.path.join(data, "outputs", "promptecho")
    device = _opt(shared, "promptecho_device")
    if not device:
        try:
            from modules import devices
            device = str(devices.device)
        except (ImportError, AttributeError):
            device = "cpu"
    return core.UIConfig(models_dir=models_dir, allowed_dirs=allowed, out_dir=out_dir, device=device,
                         dtype="float32" if device == "cpu" else "auto", gpu_lock=host_gpu_lock())


def host_gpu_lock():
    """A callable returning the host's queue_lock (a context manager), or None (UIConfig then uses its own lock)."""
    try:
        from modules.call_queue import queue_lock
    except (ImportError, AttributeError):
        return None
    return lambda: queue_lock


def on_ui_tabs():
    from modules import shared

    load_ui()
    app = __import__(PACKAGE + ".app", fromlist=["_"])
    demo = app.build_blocks(host_config(shared), in_host=True)
    return [(demo, TITLE, ELEM_ID)]


def on_ui_settings():
    from modules import shared

    def add(key, label):
        shared.opts.add_option(key, shared.OptionInfo(DEFAULTS[key], label, section=SECTION))

    add("promptecho_models_dir", "VLM models folder (each subfolder with a config.json is listed; "
        "default: <models>/VLM)")
    add("promptecho_allowed_dirs", f"Extra folders model / generator / LoRA paths may be in ('{os.pathsep}'-separated)")
    add("promptecho_out_dir", "Output folder for heatmaps, samples and training sessions "
        "(default: outputs/promptecho)")
    add("promptecho_device", "Device for PromptEcho (empty: the WebUI's device)")


try:
    from modules import script_callbacks
except ImportError:  # imported outside a WebUI host (e.g. by a linter): nothing to register
    script_callbacks = None
if script_callbacks is not None:
    script_callbacks.on_ui_settings(on_ui_settings)
    script_callbacks.on_ui_tabs(on_ui_tabs)
