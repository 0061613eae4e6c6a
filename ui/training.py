"""Background GRPO training for the Train tab (no gradio here): one worker thread at a time, a cooperative
stop flag (Gradio's cancel does not stop server-side work on 4.40), metrics kept for polling, Stop always
saves (GRPOSession.iter_run saves a checkpoint in its finally block), eval images + word heatmaps as files."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import traceback
from typing import Dict, List, Optional

from . import core

N_EVAL_PROMPTS = 4
MAX_GALLERY = 64  # images + heatmaps kept in the gallery (newest steps first)
EVAL_CAPTIONS = "captions.json"  # beside each step's eval images: {file name: gallery caption}


class TrainingError(core.UIInputError):
    pass


# fields the tab fills in itself (session folder, prompt files, chosen models): not part of a saved config
TAB_FIELDS = ("prompts", "eval_prompts", "output_dir", "pipeline", "reward_model")


def config_text(cfg, fmt: str = "toml") -> str:
    """The config as TOML or JSON text, without the fields the tab sets."""
    from promptecho.grpo.config import to_toml

    d = cfg.to_dict()
    for k in TAB_FIELDS:
        d.pop(k, None)
    return json.dumps(d, indent=2) + "\n" if fmt.lower() == "json" else to_toml(d)


def default_config_text(preset_name: Optional[str] = None) -> str:
    from promptecho.grpo.config import PRESETS, preset

    return config_text(preset(preset_name or next(iter(PRESETS))))


def parse_config(text: str, fmt_hint: str = ""):
    """GRPOConfig from TOML or JSON text; ConfigError (a ValueError) names the problem."""
    import tomllib

    from promptecho.grpo.config import ConfigError, GRPOConfig, preset

    text = (text or "").strip()
    if not text:
        raise ConfigError("the config is empty: pick a preset")
    try:
        d = json.loads(text) if (fmt_hint == "json" or text.startswith("{")) else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot parse the config: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError("the config must be a table / object")
    base = d.pop("preset", None)
    if base is not None:
        merged = preset(base).to_dict()
        merged.update(d)
        d = merged
    return GRPOConfig.from_dict(d)


def read_prompt_set(upload, inline: str, dest_dir: str) -> str:
    """Write the prompt set into the session folder (uploaded .txt/.jsonl/.csv kept as is, inline text as .txt),
    validate it with the engine's loader and return its path."""
    from promptecho.grpo.prompts import load_prompts

    os.makedirs(dest_dir, exist_ok=True)
    src = core._file_path(upload) if upload is not None else None
    if src:
        ext = os.path.splitext(src)[1].lower()
        if ext not in (".txt", ".jsonl", ".csv"):
            raise TrainingError(f"prompt file must be .txt, .jsonl or .csv, got {os.path.basename(src)}")
        dst = os.path.join(dest_dir, "prompts" + ext)
        shutil.copyfile(src, dst)
    else:
        lines = [ln.strip() for ln in (inline or "").splitlines() if ln.strip()]
        if not lines:
            raise TrainingError("no prompts: upload a prompt file or type prompts, one per line")
        dst = os.path.join(dest_dir, "prompts.txt")
        with open(dst, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    shown = os.path.basename(src) if src else "the typed prompts"
    try:
        load_prompts(dst)  # PromptSetError (ValueError) lists every bad line
    except UnicodeDecodeError:
        raise TrainingError(f"prompt file {shown} is not UTF-8 text") from None
    except ValueError as e:  # name the user's file, not the copy in the session folder
        raise TrainingError(str(e).replace(dst, shown)) from None
    return dst


def preview_prompt_set(upload, inline: str, scratch_dir: str) -> str:
    """Markdown summary of a prompt set (count, first prompts) or a TrainingError naming the bad lines."""
    import tempfile

    from promptecho.grpo.prompts import load_prompts

    os.makedirs(scratch_dir, exist_ok=True)
    d = tempfile.mkdtemp(dir=scratch_dir, prefix="prompts-")
    try:
        prompts = load_prompts(read_prompt_set(upload, inline, d))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lines = "\n".join(f"{i + 1}. {p[:120]}{'…' if len(p) > 120 else ''}" for i, p in enumerate(prompts[:3]))
    return f"**{len(prompts)} prompts** (the first {min(N_EVAL_PROMPTS, len(prompts))} are also the evaluation " \
           f"prompts):\n\n{lines}"


class TrainingManager:
    def __init__(self, ui_cfg: core.UIConfig, root: Optional[str] = None):
        self.ui = ui_cfg
        self.root = root or os.environ.get("PROMPTECHO_UI_SESSIONS") or os.path.join(ui_cfg.out_dir, "sessions")
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.metrics: List[Dict] = []
        self.gallery: List[tuple] = []
        self.status = "idle"
        self.session_dir: Optional[str] = None
        self.generation = 0  # bumps per start, so pollers know the run changed

    # ------------------------------------------------------------------ sessions
    def sessions(self) -> List[str]:
        out = []
        for d in sorted(os.listdir(self.root)):
            if os.path.isfile(os.path.join(self.root, d, "config.toml")):
                out.append(d)
        return out

    def session_summary(self) -> str:
        rows = []
        for d in self.sessions():
            ms = _read_metrics(os.path.join(self.root, d))
            train = [m for m in ms if m.get("kind") == "train"]
            last = f"{train[-1]['reward_mean']:.4f}" if train else "–"
            rows.append(f"| {d} | {train[-1]['step'] if train else 0} | {last} |")
        return "| session | steps | last reward |\n|---|---|---|\n" + "\n".join(rows) if rows else "No sessions yet."

    def _session_path(self, name: str) -> str:
        name = (name or "").strip()
        if not name or not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
            raise TrainingError(f"unknown session {name!r}: pick one from the list")
        p = os.path.join(self.root, name)
        if not os.path.isfile(os.path.join(p, "config.toml")):
            raise TrainingError(f"unknown session {name!r}: pick one from the list")
        return p

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ start / resume / stop
    def start(self, config_text: str, upload, inline: str, model_choice: str, model_path: str = "",
              generator_path: str = "", max_steps: Optional[int] = None) -> str:
        if self.running:
            raise TrainingError("a session is already running: stop it first")
        cfg = parse_config(config_text)
        reward_model = core.resolve_model(self.ui, model_choice, model_path)
        pipeline = self._allowed_generator(generator_path.strip()) if generator_path and generator_path.strip() \
            else cfg.pipeline
        name = time.strftime("session-%Y%m%d-%H%M%S")
        sdir = os.path.join(self.root, name)
        k = 1
        while os.path.exists(sdir):
            k += 1
            sdir = os.path.join(self.root, f"{name}-{k}")
        try:
            prompts_file = read_prompt_set(upload, inline, sdir)
            from promptecho.grpo.prompts import load_prompts
            evals = load_prompts(prompts_file)[:N_EVAL_PROMPTS]
            eval_file = os.path.join(sdir, "eval_prompts.txt")
            with open(eval_file, "w", encoding="utf-8") as f:
                f.write("\n".join(evals) + "\n")
        except ValueError:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        cfg.prompts, cfg.eval_prompts, cfg.output_dir, cfg.reward_model = prompts_file, eval_file, sdir, reward_model
        cfg.pipeline = pipeline
        if max_steps:
            cfg.max_steps = int(max_steps)
        cfg.validate()
        self._launch(cfg, sdir, resume=None)
        return os.path.basename(sdir)

    def resume(self, name: str, max_steps: Optional[int] = None) -> str:
        if self.running:
            raise TrainingError("a session is already running: stop it first")
        from promptecho.grpo.config import GRPOConfig

        sdir = self._session_path(name)
        cfg = GRPOConfig.load(os.path.join(sdir, "config.toml"))
        if max_steps:
            cfg.max_steps = int(max_steps)
        self._launch(cfg, sdir, resume="latest")
        return name

    def _allowed_generator(self, p: str) -> str:
        p = os.path.expanduser(p)
        roots = [r for r in [self.ui.models_dir, *self.ui.allowed_dirs] if r]
        if not any(core._within(p, r) for r in roots):
            shown = ", ".join(roots) or "none configured (set PROMPTECHO_MODELS_DIR)"
            raise TrainingError(f"generator path {p} is outside the allowed folders ({shown})")
        if not os.path.isfile(os.path.join(p, "model_index.json")):
            raise TrainingError(f"no diffusers pipeline at {p} (needs model_index.json)")
        return p

    def _launch(self, cfg, sdir: str, resume: Optional[str]):
        self._stop = threading.Event()
        # a resumed session keeps its curves and its earlier evaluation samples (files on disk, named by step)
        self.metrics = _read_metrics(sdir) if resume else []
        self.gallery = _saved_gallery(sdir) if resume else []
        self.session_dir = sdir
        self.status = f"starting {os.path.basename(sdir)}…"
        self.generation += 1
        self._thread = threading.Thread(target=self._work, args=(cfg, sdir, resume, self._stop), daemon=True,
                                        name="promptecho-grpo")
        self._thread.start()

    def stop(self) -> str:
        if not self.running:
            return "nothing is running"
        self._stop.set()
        return "stopping after the current step (a checkpoint is saved)…"

    def wait(self, timeout: float = None):
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self, cfg, sdir, resume, stop):
        from promptecho.grpo.trainer import GRPOSession

        name = os.path.basename(sdir)
        try:
            with self.ui.gpu_lock():
                session = GRPOSession(cfg).start(resume=resume)
            it = session.iter_run(stop_event=stop)
            while True:
                with self.ui.gpu_lock():  # the host's GPU lock only around actual compute
                    m = next(it, None)
                if m is None:
                    break
                items = self._eval_items(session, cfg, m["step"]) if m.get("kind") == "eval" else []
                with self._lock:
                    self.metrics.append(m)
                    # newest evaluation first, grouped by step; images are files (never re-yielded PIL images)
                    paths = {p for p, _ in items}
                    self.gallery = (items + [it for it in self.gallery if it[0] not in paths])[:MAX_GALLERY]
                self.status = f"{name}: step {session.step_count}/{cfg.max_steps}" + (
                    f", reward {m['reward_mean']:.4f}" if "reward_mean" in m else "")
            ck = session.latest_checkpoint()
            verb = "stopped" if stop.is_set() else "finished"
            self.status = f"{name}: {verb} at step {session.step_count}; saved {os.path.basename(ck or '')}"
        except Exception as e:  # noqa: BLE001 - any failure becomes a status line; the app keeps running
            kind = "Error" if isinstance(e, ValueError) else f"Error ({type(e).__name__})"
            self.status = f"**{kind}:** {e}"
            if not isinstance(e, ValueError):
                traceback.print_exc()

    def _eval_items(self, session, cfg, step: int) -> List[tuple]:
        """Each eval image and its word heatmap (reward VLM) as files, grouped by step and prompt."""
        images = getattr(session, "last_eval_images", None) or []
        d = os.path.join(session.out, "ui_eval", f"step-{step:06d}")
        os.makedirs(d, exist_ok=True)
        prompts = [p for p in session.eval_prompts for _ in range(cfg.eval_seeds)]
        results = None
        try:
            from promptecho.vlm import load_vlm
            vlm = load_vlm(cfg.reward_model, dtype="float32" if self.ui.device == "cpu" else "auto",
                           device=self.ui.device)
            with self.ui.gpu_lock():
                results = vlm.score(images, prompts)
        except (ValueError, OSError):
            results = None  # reward is not a PromptEcho VLM: images only
        from promptecho.heatmap import render_heatmap
        items = []
        for i, (im, p) in enumerate(zip(images, prompts)):
            ip = os.path.join(d, f"step{step:06d}_prompt{i:02d}.png")  # unique names: clients may flatten them
            im.save(ip)
            items.append((ip, f"step {step} · prompt {i + 1}: {p[:60]}"))
            if results is not None:
                hp = os.path.join(d, f"step{step:06d}_prompt{i:02d}_heatmap.png")
                render_heatmap(results[i], width=512).save(hp)
                items.append((hp, f"step {step} · prompt {i + 1} · reward {results[i].reward:.3f}"))
        # the captions beside the files, so a resumed session shows its earlier samples as they were
        with open(os.path.join(d, EVAL_CAPTIONS), "w", encoding="utf-8") as f:
            json.dump({os.path.basename(p): c for p, c in items}, f, ensure_ascii=False, indent=0)
        return items

    # ------------------------------------------------------------------ views
    def view_keys(self) -> tuple:
        """(generation, metrics count, gallery files): what a poller compares to skip unchanged views."""
        with self._lock:
            return self.generation, len(self.metrics), tuple(p for p, _ in self.gallery)

    def curves(self, smoothing: float = 0.6):
        """(reward rows, KL rows): [step, value, series] with raw and EMA-smoothed series; None when empty."""
        with self._lock:
            ms = list({(m.get("kind"), m.get("step")): m for m in self.metrics}.values())
        ms.sort(key=lambda m: m.get("step", 0))
        train = [m for m in ms if m.get("kind") == "train"]
        reward = _series(train, "reward_mean", "train reward", smoothing)
        reward += [[m["step"], m["reward_mean"], "eval reward"] for m in ms if m.get("kind") == "eval"
                   and "reward_mean" in m]
        kl = _series(train, "kl", "train KL", smoothing) + [[m["step"], m["kl"], "eval KL"] for m in ms
                                                             if m.get("kind") == "eval" and "kl" in m]
        return reward or None, kl or None

    def export(self, name: str, loras_dir: str = "") -> tuple:
        """(exported file, copy path or None). Exports the latest checkpoint of a session that is not running."""
        from promptecho.grpo.export import export_checkpoint

        sdir = self._session_path(name)
        if self.running and self.session_dir and os.path.samefile(sdir, self.session_dir):
            raise TrainingError("this session is still running: stop it first (Stop saves a checkpoint)")
        latest = os.path.join(sdir, "checkpoints", "latest")
        if not os.path.isfile(latest):
            raise TrainingError(f"session {name} has no checkpoint yet")
        with open(latest, encoding="utf-8") as f:
            ck = os.path.join(sdir, "checkpoints", f.read().strip())
        dst = os.path.expanduser(loras_dir.strip()) if loras_dir and loras_dir.strip() else None
        if dst is not None:
            roots = [r for r in [self.ui.models_dir, *self.ui.allowed_dirs] if r]
            if not any(core._within(dst, r) for r in roots):
                shown = ", ".join(roots) or "none configured (set PROMPTECHO_MODELS_DIR)"
                raise TrainingError(f"LoRA folder {dst} is outside the allowed folders ({shown})")
        out = os.path.join(sdir, "export", f"{name}-{os.path.basename(ck)}.safetensors")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        export_checkpoint(ck, out)
        copy = None
        if dst is not None:
            os.makedirs(dst, exist_ok=True)
            copy = os.path.join(dst, os.path.basename(out))
            shutil.copyfile(out, copy)
        return out, copy


def _saved_gallery(sdir: str) -> List[tuple]:
    """The session's evaluation samples on disk (ui_eval/step-NNNNNN/*.png), newest step first, each step's files in
    prompt order (image, then its heatmap), captions from the step's captions file (else made from the name)."""
    root = os.path.join(sdir, "ui_eval")
    if not os.path.isdir(root):
        return []
    steps = sorted((d for d in os.listdir(root) if re.fullmatch(r"step-\d+", d)), key=lambda d: int(d[5:]),
                   reverse=True)
    items: List[tuple] = []
    for d in steps:
        folder = os.path.join(root, d)
        caps = {}
        try:
            with open(os.path.join(folder, EVAL_CAPTIONS), encoding="utf-8") as f:
                caps = json.load(f)
        except (OSError, ValueError):
            pass
        for name in sorted(os.listdir(folder)):
            m = re.fullmatch(r"step(\d+)_prompt(\d+)(_heatmap)?\.png", name)
            if not m:
                continue
            cap = caps.get(name) if isinstance(caps, dict) else None
            if not isinstance(cap, str):
                cap = f"step {int(m.group(1))} · prompt {int(m.group(2)) + 1}" + (" · heatmap" if m.group(3) else "")
            items.append((os.path.join(folder, name), cap))
            if len(items) >= MAX_GALLERY:
                return items
    return items


def _read_metrics(sdir: str) -> List[Dict]:
    p = os.path.join(sdir, "metrics.jsonl")
    if not os.path.isfile(p):
        return []
    out = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _series(rows, key, label, smoothing):
    out, ema = [], None
    pts = [(m["step"], float(m[key])) for m in rows if key in m]
    for s, v in pts:
        out.append([s, v, label])
    if len(pts) > 1 and smoothing > 0:
        for s, v in pts:
            ema = v if ema is None else smoothing * ema + (1 - smoothing) * v
            out.append([s, ema, f"{label} (smoothed)"])
    return out
