"""The one place that knows Gradio 3.41 / 4.40 / 6.x differences (host pins: A1111/SD.Next 3.41-3.43,
Forge 4.40; standalone 6.x). Everything else uses only the common subset: gr.update(), Blocks, Row, Column,
Tab, Image, File, Gallery, HTML, Markdown, Textbox, Dropdown, Slider, Button, LinePlot."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402

MAJOR = int(gr.__version__.split(".")[0])


def update(**kw):
    return gr.update(**kw)


def plot_update(value, x_lim=None):
    """A LinePlot data update. `x_lim` with each frame makes Gradio 6 re-embed the chart (see train_tab.py); 3.x's
    LinePlot.update rebuilds the chart from the update's own x / y and raises when x_lim comes without them, so
    3.x gets the value only (its component keeps x, y, color and title)."""
    if MAJOR < 4 or x_lim is None:
        return gr.update(value=value)
    return gr.update(value=value, x_lim=x_lim)


def event_kwargs(api_name=None, js=None, concurrency_limit=None) -> dict:
    """Keyword arguments for .click()/.change(): `_js` in 3.x, `js` from 4; concurrency_limit from 4."""
    kw = {}
    if api_name is not None:
        kw["api_name"] = api_name
    if js is not None:
        kw["_js" if MAJOR < 4 else "js"] = js
    if concurrency_limit is not None and MAJOR >= 4:
        kw["concurrency_limit"] = concurrency_limit
    return kw


def blocks(title: str, css: str = "", theme=None, in_host: bool = False):
    """gr.Blocks: theme/css go to launch() in 6, to Blocks() before; a host tab keeps the host's theme."""
    kw = {"title": title} if not in_host else {}
    if MAJOR < 6:
        kw["css"] = css
        if theme is not None and not in_host:
            kw["theme"] = theme
    return gr.Blocks(analytics_enabled=False, **kw)


def launch_kwargs(css: str = "", theme=None) -> dict:
    kw = {}
    if MAJOR >= 6:
        kw["css"] = css
        if theme is not None:
            kw["theme"] = theme
    return kw


def queue(demo, max_size: int = 32):
    """Standalone only (a host tab never calls queue()); concurrency_count is 3.x only."""
    if MAJOR < 4:
        return demo.queue(concurrency_count=2, max_size=max_size)
    return demo.queue(max_size=max_size, default_concurrency_limit=2)


def gallery(label: str, columns: int = 4, **kw):
    """`columns` is a constructor argument from 4; 3.x used .style(grid=...), which we avoid."""
    if MAJOR >= 4:
        kw["columns"] = columns
    return gr.Gallery(label=label, **kw)


def image_input(label: str):
    return gr.Image(label=label, type="filepath", **({"sources": ["upload", "clipboard"]} if MAJOR >= 4 else {}))


def image_output(label: str):
    return gr.Image(label=label, type="filepath", interactive=False)


def file_output(label: str):
    return gr.File(label=label, interactive=False)


def files_input(label: str):
    return gr.File(label=label, file_count="multiple", file_types=["image"])
