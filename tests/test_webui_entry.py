"""scripts/promptecho_tab.py inside a fake WebUI host: a `modules` package in sys.modules with script_callbacks,
shared.opts / OptionInfo, call_queue.queue_lock and paths, loaded the way A1111 / Forge load extension scripts.
The tab registers, its settings land in shared.opts and steer it, it builds under the installed Gradio with every
API endpoint, and a training session waits for the host's GPU queue lock (and takes it for its steps)."""
import importlib.util
import os
import sys
import threading
import time
import types

import pytest

from ui_fixtures import TINY_TRAIN_TOML, ui_generator_dir, ui_models_dir  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "promptecho_tab.py")


class RecordingLock:
    """A threading.Lock that records which threads entered it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.entered_by = []

    def acquire(self, *a, **kw):
        return self._lock.acquire(*a, **kw)

    def release(self):
        self._lock.release()

    def __enter__(self):
        self._lock.acquire()
        self.entered_by.append(threading.current_thread().name)
        return self

    def __exit__(self, *exc):
        self._lock.release()


@pytest.fixture
def host(tmp_path, monkeypatch, ui_models_dir):
    """A fake host: returns (modules namespace, loaded script module)."""
    tabs, settings = [], []
    mods = {name: types.ModuleType(name) for name in
            ("modules", "modules.script_callbacks", "modules.shared", "modules.call_queue", "modules.paths")}
    mods["modules.script_callbacks"].on_ui_tabs = tabs.append
    mods["modules.script_callbacks"].on_ui_settings = settings.append
    mods["modules.script_callbacks"].tabs, mods["modules.script_callbacks"].settings = tabs, settings

    class OptionInfo:
        def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                     section=None, refresh=None):
            self.default, self.label, self.section = default, label, section

    class Options:
        def __init__(self):
            self.data, self.data_labels = {}, {}

        def add_option(self, key, info):
            self.data_labels[key] = info

    mods["modules.shared"].OptionInfo = OptionInfo
    mods["modules.shared"].opts = Options()
    mods["modules.call_queue"].queue_lock = RecordingLock()
    host_root = tmp_path / "webui"
    (host_root / "models" / "VLM").mkdir(parents=True)
    mods["modules.paths"].models_path = str(host_root / "models")
    mods["modules.paths"].data_path = str(host_root)
    for name, m in mods.items():
        if "." in name:
            setattr(mods["modules"], name.split(".")[1], m)
        monkeypatch.setitem(sys.modules, name, m)
    spec = importlib.util.spec_from_file_location("promptecho_tab", SCRIPT)  # as the host's script loader does
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return types.SimpleNamespace(mods=mods, script=script, tabs=tabs, settings=settings, root=host_root)


def _api_names(demo):
    deps = demo.config["dependencies"]
    return {d.get("api_name") for d in deps if d.get("api_name")}


def test_tab_and_settings_register(host, ui_models_dir):
    import gradio as gr

    assert len(host.tabs) == 1 and len(host.settings) == 1
    host.settings[0]()
    labels = host.mods["modules.shared"].opts.data_labels
    assert {"promptecho_models_dir", "promptecho_allowed_dirs", "promptecho_out_dir", "promptecho_device"} <= set(labels)
    assert all(info.section == ("promptecho", "PromptEcho") for info in labels.values())

    # defaults: <host models>/VLM (empty here), outputs/promptecho under the host's data folder
    [(demo, title, elem_id)] = host.tabs[0]()
    assert isinstance(demo, gr.Blocks) and (title, elem_id) == ("PromptEcho", "promptecho")
    cfg = demo.promptecho_config
    assert cfg.models_dir == str(host.root / "models" / "VLM")
    assert cfg.out_dir == str(host.root / "outputs" / "promptecho") and os.path.isdir(cfg.out_dir)
    assert {"score", "rerank", "train_start", "train_stop", "train_resume", "train_export",
            "train_config_save", "train_config_load", "train_prompts", "train_sessions"} <= _api_names(demo)
    # a host tab keeps the host's page: no title of its own, no launch()/queue() called on it
    assert not getattr(demo, "is_running", False)

    # settings saved in the host's config steer the next build: the VLM list comes from the configured folder
    host.mods["modules.shared"].opts.data["promptecho_models_dir"] = ui_models_dir
    host.mods["modules.shared"].opts.data["promptecho_device"] = "cpu"
    [(demo2, _, _)] = host.tabs[0]()
    from promptecho_webui_ui import core

    assert demo2.promptecho_config.models_dir == ui_models_dir
    assert core.model_choices(demo2.promptecho_config) == [core.BUILTIN, "tiny-llava", core.CUSTOM]
    # the host's models folder is an allowed area (LoRA copies go to <models>/Lora)
    assert str(host.root / "models") in demo2.promptecho_config.allowed_dirs


def test_training_takes_the_host_queue_lock(host, ui_models_dir, ui_generator_dir):
    host.mods["modules.shared"].opts.data.update(promptecho_models_dir=ui_models_dir, promptecho_device="cpu")
    [(demo, _, _)] = host.tabs[0]()
    mgr = demo.promptecho_training
    lock = host.mods["modules.call_queue"].queue_lock
    config = TINY_TRAIN_TOML.replace("eval_every = 1", "eval_every = 0")
    with lock:  # the host is generating: the session must wait
        name = mgr.start(config, None, "a red circle\na blue square", "tiny-llava", "", ui_generator_dir, 1)
        time.sleep(3)
        assert mgr.running and mgr.metrics == [] and mgr.status.startswith("starting")
    mgr.wait(300)
    assert not mgr.running
    assert mgr.status.startswith(f"{name}: finished at step 1"), mgr.status
    assert [m["step"] for m in mgr.metrics if m["kind"] == "train"] == [1]
    # the worker took the lock for start-up and for the step (and the final save)
    assert lock.entered_by.count("promptecho-grpo") >= 2, lock.entered_by
    # and released it: the host can take it again at once
    assert lock.acquire(timeout=1)
    lock.release()
