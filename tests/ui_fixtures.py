"""Shared fixtures for the UI tests: a models folder with a tiny LLaVA and a running app (port auto)."""
import os
import socket

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ui_models_dir(tmp_path_factory):
    from promptecho.testing.tiny_vlms import build_tiny_vlm

    root = tmp_path_factory.mktemp("ui_models")
    build_tiny_vlm("llava", str(root / "tiny-llava"))
    return str(root)


@pytest.fixture(scope="session")
def ui_app(ui_models_dir, tmp_path_factory):
    """(url, config) of a launched standalone app; closed at the end of the session."""
    from ui import core
    from ui.app import launch

    cfg = core.UIConfig(models_dir=ui_models_dir, out_dir=str(tmp_path_factory.mktemp("ui_out")))
    port = free_port()
    demo = launch(cfg, port=port, block=False)
    yield f"http://127.0.0.1:{port}/", cfg
    demo.close()
