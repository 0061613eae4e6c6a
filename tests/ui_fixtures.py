"""Shared fixtures for the UI tests: a models folder with a tiny LLaVA and a running app (port auto)."""
import os
import socket

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_client(url: str, download_files: bool = True):
    """A gradio_client.Client for `url`, quiet where the client allows it. download_files=False (gradio_client 1+)
    hands back the server's file paths instead of downloading every file of every streamed frame: a client in the
    test process that downloads a 64-image gallery per frame falls minutes behind a fast training stream on a
    loaded machine (the server then has long stopped). gradio_client 0.5 (Gradio 3.41's) opens
    every File input as a path before sending and so cannot send None ("no file"), which the browser sends and
    the app handles; its upload step is wrapped to skip None (sent as null, as the browser does)."""
    import gradio_client
    from gradio_client.client import Endpoint

    if getattr(Endpoint, "_upload", None) is not None and not getattr(Endpoint._upload, "_pe_skips_none", False) \
            and gradio_client.__version__.startswith("0."):
        upload = Endpoint._upload

        def _upload(self, file_paths):
            keep = [i for i, f in enumerate(file_paths) if f is not None]
            sent = upload(self, [file_paths[i] for i in keep]) if keep else []
            out = [None] * len(file_paths)
            for i, u in zip(keep, sent):
                out[i] = u
            return out

        _upload._pe_skips_none = True
        Endpoint._upload = _upload
    params = gradio_client.Client.__init__.__code__.co_varnames
    kw = {"verbose": False} if "verbose" in params else {}
    if not download_files and "download_files" in params:
        kw["download_files"] = False
    return gradio_client.Client(url, **kw)


@pytest.fixture(scope="session")
def ui_models_dir(tmp_path_factory):
    from promptecho.testing.tiny_vlms import build_tiny_vlm

    root = tmp_path_factory.mktemp("ui_models")
    build_tiny_vlm("llava", str(root / "tiny-llava"))
    return str(root)


@pytest.fixture(scope="session")
def ui_app(ui_models_dir, tmp_path_factory):
    """(url, config) of a launched standalone app; closed at the end of the session."""
    import anyio

    from ui import core
    from ui.app import launch

    # anyio is a pytest plugin, so pytest's assertion rewriter compiles its lazily imported submodules; the first
    # file download would import anyio._core._fileio on a server thread while the test thread compiles too, which
    # trips a CPython 3.11 ast bug ("AST constructor recursion depth mismatch"). Import it here, before the server.
    anyio.open_file  # noqa: B018

    cfg = core.UIConfig(models_dir=ui_models_dir, out_dir=str(tmp_path_factory.mktemp("ui_out")))
    for attempt in range(3):  # Gradio's start-up probe (3 s HEAD) can miss on a machine loaded by other jobs
        port = free_port()
        try:
            demo = launch(cfg, port=port, block=False)
            break
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == 2:
                raise
    yield f"http://127.0.0.1:{port}/", cfg
    demo.close()


@pytest.fixture(scope="session")
def ui_generator_dir(ui_models_dir):
    """A tiny random ShapesWorld pipeline saved inside the models folder (the allowed area)."""
    from promptecho.shapes.generator import ShapesWorldPipeline, build_components

    path = os.path.join(ui_models_dir, "gen", "tiny-shapes")
    pipe = ShapesWorldPipeline(**build_components(seed=0, width=32, layers=1))
    pipe.save_pretrained(path, safe_serialization=True)
    return path


TINY_TRAIN_TOML = """preset = "ShapesWorld quick"
train_steps = 2
eval_steps = 2
group_size = 2
prompts_per_step = 1
eval_every = 1
checkpoint_every = 0
threads = 1
"""
