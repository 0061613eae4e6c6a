"""Gradio-free logic behind the tabs: model choice, scoring, best-of-N. Handlers return plain values
(file paths, HTML strings, Markdown) so the same code serves Gradio 3.41, 4.40 and 6.x and is testable
without a browser. User mistakes raise UIInputError (a ValueError) with a message meant for the UI."""
from __future__ import annotations

import contextlib
import html
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO_ROOT, "examples", "images")
BUILTIN = "ShapesWorld (built-in)"
CUSTOM = "Path…"


class UIInputError(ValueError):
    """A mistake the user can fix (shown in the tab's status box)."""


@dataclass
class UIConfig:
    """Where models may come from. `allowed_dirs` bounds free-typed model paths (models_dir is always allowed)."""
    models_dir: Optional[str] = None
    allowed_dirs: List[str] = field(default_factory=list)
    out_dir: Optional[str] = None
    device: str = "cpu"
    dtype: str = "float32"
    # host GPU lock (WebUI's queue_lock); a plain lock standalone
    gpu_lock: Callable[[], contextlib.AbstractContextManager] = None

    def __post_init__(self):
        if self.models_dir is None:
            self.models_dir = os.environ.get("PROMPTECHO_MODELS_DIR") or None
        if not self.allowed_dirs and os.environ.get("PROMPTECHO_ALLOWED_DIRS"):
            self.allowed_dirs = [p for p in os.environ["PROMPTECHO_ALLOWED_DIRS"].split(os.pathsep) if p]
        if self.out_dir is None:
            self.out_dir = tempfile.mkdtemp(prefix="promptecho-ui-")
        os.makedirs(self.out_dir, exist_ok=True)
        if self.gpu_lock is None:
            lock = threading.Lock()
            self.gpu_lock = lambda: lock


def example_image_path() -> str:
    return os.path.join(EXAMPLES, "shapes_example.png")


def example_prompts() -> Tuple[str, str]:
    """(true caption, caption with one relation flipped) of the bundled example."""
    def read(name):
        with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
            return f.read().strip()
    return read("shapes_example.txt"), read("shapes_example_wrong.txt")


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def model_choices(cfg: UIConfig) -> List[str]:
    """Built-in ShapesWorld, each model folder directly under models_dir, and a free path."""
    out = [BUILTIN]
    if cfg.models_dir and os.path.isdir(cfg.models_dir):
        out += sorted(d for d in os.listdir(cfg.models_dir) if _is_model_dir(os.path.join(cfg.models_dir, d)))
    return out + [CUSTOM]


def _within(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_model(cfg: UIConfig, choice: str, path: str = "") -> str:
    """Folder of the chosen model; free paths must lie inside models_dir or an allowed folder."""
    from promptecho.shapes import default_vlm_path

    choice = (choice or "").strip()
    if choice == BUILTIN or not choice:
        p = default_vlm_path()
        if not _is_model_dir(p):
            raise UIInputError("the built-in ShapesWorld VLM is not present in this checkout; "
                               "choose a model folder instead")
        return p
    if choice == CUSTOM:
        p = os.path.expanduser((path or "").strip())
        if not p:
            raise UIInputError("type a model folder path (or pick a model from the list)")
        roots = [r for r in [cfg.models_dir, *cfg.allowed_dirs] if r]
        if not any(_within(p, r) for r in roots):
            shown = ", ".join(roots) or "none configured (set PROMPTECHO_MODELS_DIR)"
            raise UIInputError(f"model path {p} is outside the allowed folders ({shown})")
    else:
        if not cfg.models_dir or os.sep in choice or choice in ("..", "."):
            raise UIInputError(f"unknown model {choice!r}")
        p = os.path.join(cfg.models_dir, choice)
    if not _is_model_dir(p):
        raise UIInputError(f"no model found at {p} (a model folder has a config.json)")
    return p


def load_model(cfg: UIConfig, choice: str, path: str = ""):
    from promptecho.vlm import load_vlm

    return load_vlm(resolve_model(cfg, choice, path), dtype=cfg.dtype, device=cfg.device)


def open_image(image, what: str = "image"):
    """PIL image from a PIL image, numpy array or file path; UIInputError when missing or unreadable."""
    from PIL import Image

    if image is None or (isinstance(image, str) and not image.strip()):
        raise UIInputError(f"no {what}: upload one or click 'Use example'")
    if isinstance(image, dict):  # some Gradio versions pass {"path": ...} / {"name": ...}
        image = image.get("path") or image.get("name")
    if isinstance(image, str):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except OSError as e:
            raise UIInputError(f"cannot read {what} {os.path.basename(image)}: {e}") from None
    from promptecho.images import to_pil_list

    return to_pil_list(image)[0]


def _file_path(f) -> str:
    """Path of an uploaded file as given by Gradio 3 (tempfile wrapper), 4 and 6 (str / dict)."""
    if isinstance(f, str):
        return f
    if isinstance(f, dict):
        return f.get("path") or f.get("name")
    return getattr(f, "name", None) or getattr(f, "path", None)


def _check_prompt(prompt: str) -> str:
    prompt = (prompt or "").strip()
    if not prompt:
        raise UIInputError("the prompt is empty: type the prompt the image was generated from")
    return prompt


def words_html(result) -> str:
    """The prompt as coloured words (same ramp as the heatmap PNG), each followed by its exact loss."""
    from promptecho.heatmap import color_range, loss_to_rgb, text_color_for

    lo, hi = color_range(result)
    parts = []
    for w in result.words:
        bg = loss_to_rgb(w.loss, lo, hi)
        fg = text_color_for(bg)
        parts.append(
            f'<span class="pe-word" data-loss="{w.loss:.6f}" title="loss {w.loss:.4f} nats ({w.n_tokens} tok)" '
            f'style="background-color:rgb{bg};color:rgb{fg};padding:1px 4px;margin:1px;border-radius:4px;'
            f'display:inline-block">{html.escape(w.text)}<sub style="font-size:0.7em;opacity:0.8"> '
            f'{w.loss:.2f}</sub></span>')
    return f'<div class="pe-words" style="line-height:1.9">{" ".join(parts)}</div>'


def _new_path(cfg: UIConfig, stem: str, ext: str = ".png") -> str:
    return os.path.join(cfg.out_dir, f"{stem}-{uuid.uuid4().hex[:10]}{ext}")


def _summary(res, vqa) -> str:
    s = f"**PromptEcho reward {res.reward:.4f}** (mean CE {res.loss:.4f} over {res.n_tokens} tokens)"
    if res.truncated_tokens:
        s += f", {res.truncated_tokens} tokens truncated"
    if vqa is not None:
        s += f"  \nVQAScore baseline P(yes) {vqa.p_yes:.4f} (normalised {vqa.p_yes_norm:.4f})"
    return s


def score_images(cfg: UIConfig, images: Sequence, prompt: str, choice: str, path: str = "",
                 query: str = "", with_vqa: bool = True) -> List[dict]:
    """Score each image against the prompt: [{reward, summary, html, heatmap (png path), words, vqa}]."""
    from promptecho.heatmap import render_heatmap
    from promptecho.vlm import DEFAULT_QUERY

    prompt = _check_prompt(prompt)
    pils = [open_image(im, "image" if len(images) == 1 else f"image {i + 1}") for i, im in enumerate(images)]
    with cfg.gpu_lock():
        vlm = load_model(cfg, choice, path)
        kw = {"query": query.strip()} if query and query.strip() else {"query": DEFAULT_QUERY}
        if with_vqa:
            results, vqas = vlm.score_and_vqa(pils, [prompt] * len(pils), **kw)
        else:
            results, vqas = vlm.score(pils, [prompt] * len(pils), **kw), [None] * len(pils)
    out = []
    for res, vqa in zip(results, vqas):
        hp = _new_path(cfg, "heatmap")
        render_heatmap(res).save(hp)
        out.append({"reward": res.reward, "summary": _summary(res, vqa), "html": words_html(res),
                    "heatmap": hp, "words": [(w.text, w.loss) for w in res.words],
                    "vqa": None if vqa is None else vqa.p_yes})
    return out


def generate_images(cfg: UIConfig, prompt: str, n: int, steps: int = 8, seed: int = 0) -> List[str]:
    """N candidates from the ShapesWorld generator, written to PNG files (paths returned)."""
    from promptecho.shapes import default_generator_path, has_default_generator

    prompt = _check_prompt(prompt)
    n = int(n)
    if not 1 <= n <= 16:
        raise UIInputError("N must be between 1 and 16")
    if not has_default_generator():
        raise UIInputError("the built-in ShapesWorld generator is not present in this checkout; upload images")
    import torch
    from promptecho.shapes.generator import load_generator

    with cfg.gpu_lock():
        pipe = load_generator(default_generator_path())
        imgs = pipe(prompt=[prompt] * n, num_inference_steps=int(steps), guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(int(seed)), output_type="pil").images
    paths = []
    for im in imgs:
        p = _new_path(cfg, "candidate")
        im.save(p)
        paths.append(p)
    return paths


def best_of_n(cfg: UIConfig, files: Sequence, prompt: str, choice: str, path: str = "", query: str = ""):
    """Rank candidate image files by reward: (ranked [(image path, caption)], [(heatmap path, caption)],
    best image path, Markdown table)."""
    paths = [_file_path(f) for f in (files or []) if f is not None]
    if not paths:
        raise UIInputError("no images: upload at least one candidate (or generate N)")
    scored = score_images(cfg, paths, prompt, choice, path, query, with_vqa=False)
    order = sorted(range(len(paths)), key=lambda i: (-scored[i]["reward"], i))
    gallery = [(paths[i], f"#{r + 1}  reward {scored[i]['reward']:.4f}  ({os.path.basename(paths[i])})")
               for r, i in enumerate(order)]
    heat = [(scored[i]["heatmap"], f"#{r + 1}  reward {scored[i]['reward']:.4f}") for r, i in enumerate(order)]
    rows = "\n".join(f"| {r + 1} | {os.path.basename(paths[i])} | {scored[i]['reward']:.4f} |"
                     for r, i in enumerate(order))
    table = "| rank | image | reward |\n|---|---|---|\n" + rows
    return gallery, heat, paths[order[0]], table
