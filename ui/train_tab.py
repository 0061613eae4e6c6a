"""Train tab: prompt set, presets + config (TOML/JSON), Start / Stop / Resume, live curves, eval gallery,
past sessions, Export LoRA. The Start/Resume events are generators that poll the background worker, so the
page streams updates while every other event stays responsive."""
from __future__ import annotations

import os
import tempfile
import time

from . import core
from .compat import event_kwargs, file_output, gallery, gr, plot_update, update
from .training import TrainingManager, config_text, default_config_text, parse_config, preview_prompt_set

POLL_S = 1.0


def _df(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["step", "value", "series"])


def build(cfg: core.UIConfig, manager: TrainingManager = None) -> TrainingManager:
    from promptecho.grpo.config import PRESETS

    mgr = manager or TrainingManager(cfg)
    with gr.Row():
        with gr.Column():
            prompt_file = gr.File(label="Prompt set (.txt one per line; .jsonl with a 'prompt' or 'caption' field; "
                                  ".csv with a 'prompt'/'caption' column)", file_types=[".txt", ".jsonl", ".csv"])
            prompts_inline = gr.Textbox(label="…or prompts, one per line", lines=4)
            check_prompts = gr.Button("Check prompt set")
            prompts_info = gr.Markdown(elem_id="pe-prompts-info")
        with gr.Column():
            preset = gr.Dropdown(choices=list(PRESETS), value=next(iter(PRESETS)), label="Preset")
            config = gr.Textbox(label="Config (TOML or JSON; `preset = \"...\"` starts from a preset)", lines=10,
                                value=default_config_text())
            with gr.Row():
                config_file = gr.File(label="Load config (.toml / .json)", file_types=[".toml", ".json"])
                with gr.Column():
                    cfg_format = gr.Radio(["TOML", "JSON"], value="TOML", label="Save as")
                    save_cfg = gr.Button("Save config")
            saved_cfg = file_output("Saved config")
            config_status = gr.Markdown(elem_id="pe-config-status")
    choices = core.model_choices(cfg)
    with gr.Row():
        model = gr.Dropdown(choices=choices, value=choices[0], label="Reward VLM")
        model_path = gr.Textbox(label="Reward VLM folder (for 'Path…')")
        generator = gr.Textbox(label="Generator pipeline folder (empty: the config's, else built-in ShapesWorld)")
        steps = gr.Number(value=0, precision=0, label="Max steps (0: the config's max_steps)")
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id="pe-train-start")
        stop = gr.Button("Stop (saves)", elem_id="pe-train-stop")
        # custom values reach the handler, which answers 'unknown session' instead of a Gradio validation error
        session = gr.Dropdown(choices=mgr.sessions(), label="Past sessions", allow_custom_value=True)
        resume = gr.Button("Resume", elem_id="pe-train-resume")
        watch = gr.Button("Watch / refresh", elem_id="pe-train-watch")
    status = gr.Markdown(elem_id="pe-train-status")
    smoothing = gr.Slider(0.0, 0.95, value=0.6, step=0.05, label="Curve smoothing (EMA)")
    with gr.Row():
        # start from None: Gradio 6 draws stroke-less lines when a colour-split plot begins with an empty frame
        reward_plot = gr.LinePlot(None, x="step", y="value", color="series", title="Reward", elem_id="pe-reward-plot")
        kl_plot = gr.LinePlot(None, x="step", y="value", color="series", title="KL to base", elem_id="pe-kl-plot")
    evals = gallery("Evaluation samples, newest step first (image, then its word heatmap)", columns=4)
    with gr.Row():
        sessions_md = gr.Markdown(mgr.session_summary(), elem_id="pe-sessions")
        refresh = gr.Button("Refresh sessions", elem_id="pe-train-refresh")
    with gr.Row():
        loras_dir = gr.Textbox(label="Copy the LoRA into this models/loras folder (optional; inside the allowed "
                               "folders)")
        export = gr.Button("Export LoRA", elem_id="pe-train-export")
    exported = file_output("Exported LoRA")
    export_status = gr.Markdown(elem_id="pe-export-status")

    def plot(rows):
        # x_lim with every frame makes Gradio 6 re-embed the chart; otherwise a series that first appears in a
        # later frame (the smoothed curve) keeps the first frame's colour domain and is drawn without a stroke
        if not rows:
            return update()
        steps = [r[0] for r in rows]
        lo, hi = min(steps), max(steps)
        return plot_update(_df(rows), x_lim=[lo, hi if hi > lo else lo + 1])

    def views(sm):
        r, k = mgr.curves(float(sm or 0))
        return plot(r), plot(k)

    def current():
        return os.path.basename(mgr.session_dir) if mgr.session_dir else None

    def stream(sm):
        """Yield (status, reward, kl, gallery, sessions dropdown, sessions table) until the worker ends. Curves,
        gallery and sessions are re-sent only when they changed since this stream's previous frame (gr.update()
        otherwise), so a poll stays small under load and a Stop is not queued behind big frames; the first and the
        last frame are complete (what an API client reads as the result)."""
        sent = {}
        while True:
            alive = mgr.running
            full = not alive or not sent
            gen, n_metrics, shown = mgr.view_keys()
            keys = {"curves": (gen, n_metrics, float(sm or 0)), "gallery": (gen, shown),
                    "sessions": (gen, n_metrics, tuple(mgr.sessions()))}
            new = {k: full or sent.get(k) != v for k, v in keys.items()}
            sent = keys
            r, k = views(sm) if new["curves"] else (update(), update())
            g = (list(mgr.gallery) or update()) if new["gallery"] else update()
            if new["sessions"]:
                sess, table = update(choices=mgr.sessions(), value=current()), mgr.session_summary()
            else:
                sess, table = update(), update()
            yield mgr.status, r, k, g, sess, table
            if not alive:
                return
            time.sleep(POLL_S)

    def error_out(e):
        return (f"**Error:** {e}", update(), update(), update(), update(), update())

    def do_start(text, up, inline, choice, mpath, gen, n, sm):
        try:
            mgr.start(text, up, inline, choice, mpath, gen, int(n) if n else None)
        except ValueError as e:
            yield error_out(e)
            return
        yield from stream(sm)

    def do_resume(name, n, sm):
        try:
            mgr.resume(name, int(n) if n else None)
        except ValueError as e:
            yield error_out(e)
            return
        yield from stream(sm)

    def do_export(name, dst):
        try:
            out, copy = mgr.export(name, dst)
        except ValueError as e:
            return f"**Error:** {e}", None
        return f"Exported {os.path.basename(out)}" + (f"; copied to {copy}" if copy else ""), out

    def do_save(text, fmt):
        try:
            c = parse_config(text)
        except ValueError as e:
            return None, f"**Error:** {e}"
        ext = "json" if (fmt or "").upper() == "JSON" else "toml"
        path = os.path.join(tempfile.mkdtemp(dir=cfg.out_dir), f"promptecho_grpo.{ext}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config_text(c, ext))
        return path, f"Config saved as {ext.upper()}."

    def do_load(f):
        p = core._file_path(f) if f is not None else None
        if not p:
            return update(), ""
        if not p.lower().endswith((".toml", ".json")):
            return update(), f"**Error:** config file must be .toml or .json, got {os.path.basename(p)}"
        try:
            with open(p, encoding="utf-8") as fh:
                text = fh.read()
            parse_config(text, "json" if p.lower().endswith(".json") else "")
        except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
            return update(), f"**Error:** {e}"
        return text, f"Loaded {os.path.basename(p)}."

    def do_check(up, inline):
        try:
            return preview_prompt_set(up, inline, os.path.join(cfg.out_dir, "scratch"))
        except (ValueError, OSError) as e:
            return f"**Error:** {e}"

    def do_sessions():
        return update(choices=mgr.sessions()), mgr.session_summary()

    outs = [status, reward_plot, kl_plot, evals, session, sessions_md]
    start.click(do_start, [config, prompt_file, prompts_inline, model, model_path, generator, steps, smoothing],
                outs, **event_kwargs(api_name="train_start"))
    resume.click(do_resume, [session, steps, smoothing], outs, **event_kwargs(api_name="train_resume"))
    watch.click(stream, [smoothing], outs, **event_kwargs(api_name="train_watch"))
    stop.click(lambda: mgr.stop(), None, [export_status], **event_kwargs(api_name="train_stop"))
    smoothing.change(views, [smoothing], [reward_plot, kl_plot],
                     **event_kwargs(api_name="train_curves"))
    preset.change(lambda p: default_config_text(p), [preset], [config], **event_kwargs(api_name="train_preset"))
    save_cfg.click(do_save, [config, cfg_format], [saved_cfg, config_status],
                   **event_kwargs(api_name="train_config_save"))
    config_file.change(do_load, [config_file], [config, config_status], **event_kwargs(api_name="train_config_load"))
    check_prompts.click(do_check, [prompt_file, prompts_inline], [prompts_info],
                        **event_kwargs(api_name="train_prompts"))
    export.click(do_export, [session, loras_dir], [export_status, exported], **event_kwargs(api_name="train_export"))
    refresh.click(do_sessions, None, [session, sessions_md], **event_kwargs(api_name="train_sessions"))
    return mgr
