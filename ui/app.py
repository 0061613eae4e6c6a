"""Gradio Blocks for PromptEcho: Score, Best-of-N and Train tabs, shared by the standalone app
(`python -m promptecho.ui`) and WebUI hosts (scripts/promptecho_tab.py, which pass in_host=True)."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import core  # noqa: E402
from .compat import gr, blocks, event_kwargs, gallery, image_input, image_output, file_output, files_input, \
    launch_kwargs, queue, update  # noqa: E402

CSS = ".pe-words{font-size:1.05em}"


def _err(e: Exception) -> str:
    return f"**Error:** {e}"


def _model_row(cfg: core.UIConfig):
    choices = core.model_choices(cfg)
    with gr.Row():
        model = gr.Dropdown(choices=choices, value=choices[0], label="Reward VLM")
        path = gr.Textbox(label="Model folder (for 'Path…'; must be inside the models / allowed folders)",
                          placeholder=cfg.models_dir or "")
        query = gr.Textbox(label="Guiding query", value="Describe this image in detail.")
    return model, path, query


def _score_tab(cfg: core.UIConfig):
    with gr.Row():
        img_a = image_input("Image A")
        img_b = image_input("Image B (optional: compare on the same prompt)")
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="the prompt the image was generated from")
    model, path, query = _model_row(cfg)
    with gr.Row():
        example = gr.Button("Use example")
        example_wrong = gr.Button("Example with one relation flipped")
        run = gr.Button("Score", variant="primary", elem_id="pe-score-btn")
    status = gr.Markdown(elem_id="pe-score-status")
    outs = []
    with gr.Row():
        for tag in ("a", "b"):
            with gr.Column():
                outs += [gr.Markdown(elem_id=f"pe-summary-{tag}"), gr.HTML(elem_id=f"pe-words-{tag}"),
                         image_output(f"Heatmap {tag.upper()}")]

    true_cap, wrong_cap = core.example_prompts()
    example.click(lambda: (core.example_image_path(), None, true_cap), None, [img_a, img_b, prompt])
    example_wrong.click(lambda: (core.example_image_path(), None, wrong_cap), None, [img_a, img_b, prompt])

    def score(a, b, text, choice, mpath, q):
        empty = ["", "", None]
        try:
            images = [a] + ([b] if b is not None else [])
            res = core.score_images(cfg, images, text, choice, mpath, q)
        except ValueError as e:
            return [_err(e)] + empty * 2
        flat = []
        for r in res + [None] * (2 - len(res)):
            flat += empty if r is None else [r["summary"], r["html"], r["heatmap"]]
        msg = "Scored." if len(res) == 1 else (
            f"Image {'A' if res[0]['reward'] >= res[1]['reward'] else 'B'} matches the prompt better "
            f"(reward difference {abs(res[0]['reward'] - res[1]['reward']):.4f}).")
        return [msg] + flat

    run.click(score, [img_a, img_b, prompt, model, path, query], [status] + outs,
              **event_kwargs(api_name="score", concurrency_limit=1))


def _best_of_n_tab(cfg: core.UIConfig):
    files = files_input("Candidate images")
    prompt = gr.Textbox(label="Prompt", lines=2)
    model, path, query = _model_row(cfg)
    with gr.Row():
        n = gr.Slider(1, 16, value=4, step=1, label="N to generate")
        steps = gr.Slider(1, 50, value=8, step=1, label="Generator steps")
        seed = gr.Number(value=0, label="Seed", precision=0)
        gen = gr.Button("Generate N with the ShapesWorld generator")
    run = gr.Button("Rank", variant="primary")
    status = gr.Markdown(elem_id="pe-bon-status")
    table = gr.Markdown()
    with gr.Row():
        ranked = gallery("Ranked candidates (best first)")
        heat = gallery("Word heatmaps", columns=2)
    best = file_output("Best image")

    def do_generate(text, k, st, sd):
        try:
            paths = core.generate_images(cfg, text, k, st, sd)
        except ValueError as e:
            return _err(e), update()
        return f"Generated {len(paths)} candidates; click Rank.", paths

    def do_rank(fs, text, choice, mpath, q):
        try:
            g, h, b, t = core.best_of_n(cfg, fs, text, choice, mpath, q)
        except ValueError as e:
            return _err(e), "", [], [], None
        return f"Ranked {len(g)} images.", t, g, h, b

    gen.click(do_generate, [prompt, n, steps, seed], [status, files], **event_kwargs(concurrency_limit=1))
    run.click(do_rank, [files, prompt, model, path, query], [status, table, ranked, heat, best],
              **event_kwargs(api_name="rerank", concurrency_limit=1))


def _train_tab(cfg: core.UIConfig):
    try:
        from . import train_tab
    except ImportError as e:  # the GRPO engine has not landed in this checkout
        gr.Markdown(f"Training is not available in this build: {e}.")
        return None
    return train_tab.build(cfg)


def build_blocks(cfg: Optional[core.UIConfig] = None, in_host: bool = False):
    cfg = cfg or core.UIConfig()
    with blocks("PromptEcho", css=CSS, in_host=in_host) as demo:
        if not in_host:
            gr.Markdown("# PromptEcho\nReward = −CE(prompt | image, query) under a frozen VLM. "
                        "Darker words are the ones the image does not support.")
        with gr.Tab("Score"):
            _score_tab(cfg)
        with gr.Tab("Best-of-N"):
            _best_of_n_tab(cfg)
        with gr.Tab("Train"):
            mgr = _train_tab(cfg)
    demo.promptecho_config = cfg
    demo.promptecho_training = mgr  # the Train tab's TrainingManager (None when the GRPO engine is absent)
    return demo


def launch(cfg: Optional[core.UIConfig] = None, host: str = "127.0.0.1", port: Optional[int] = None,
           block: bool = True):
    demo = queue(build_blocks(cfg))
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True,
                allowed_paths=[demo.promptecho_config.out_dir, core.EXAMPLES], **launch_kwargs(css=CSS))
    return demo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m promptecho.ui", description="PromptEcho Gradio app")
    p.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free)")
    p.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (reachable from other machines)")
    p.add_argument("--models-dir", default=None, help="folder whose model subfolders appear in the VLM list "
                   "(default: $PROMPTECHO_MODELS_DIR)")
    p.add_argument("--allowed-dir", action="append", default=[], help="extra folder free model paths may be in")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    args = p.parse_args(argv)
    host = "127.0.0.1"
    if args.listen:
        host = "0.0.0.0"
        warnings.warn("--listen: the app is reachable from other machines, with no authentication", stacklevel=1)
        print("WARNING: listening on 0.0.0.0 — anyone who can reach this port can use the app", file=sys.stderr)
    cfg = core.UIConfig(models_dir=args.models_dir, allowed_dirs=args.allowed_dir, device=args.device,
                        dtype="float32" if args.device == "cpu" else "auto")
    launch(cfg, host=host, port=args.port, block=True)
    return 0
