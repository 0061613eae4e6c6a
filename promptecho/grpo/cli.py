"""`python -m promptecho train --config FILE` and `python -m promptecho export-lora ...` (registered in promptecho/cli.py)."""
from __future__ import annotations

import os
import signal
import sys
import threading

EPILOG_TRAIN = """examples:
  python -m promptecho train --config examples/configs/shapesworld_quick.toml
  python -m promptecho train --config my.toml --resume latest      # continue from the last checkpoint
  accelerate launch --num_processes 2 -m promptecho train --config my.toml   # data-parallel (see README)
Ctrl-C stops after the current step and writes a checkpoint (press twice to abort at once)."""


def cmd_train(args) -> int:
    from .config import GRPOConfig
    from .trainer import GRPOSession
    cfg = GRPOConfig.load(args.config)
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.threads:
        cfg.threads = args.threads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by `accelerate launch` (or torchrun): data parallel
        try:
            from accelerate import Accelerator
        except ImportError as e:
            raise SystemExit("several processes were launched but `accelerate` is not installed: "
                             "pip install accelerate") from e
        accelerator = Accelerator(cpu=cfg.device == "cpu")
    session = GRPOSession(cfg, run_self_checks=not args.skip_self_check,
                          accelerator=accelerator).start(resume=args.resume)
    main = session.is_main
    stop = threading.Event()

    def on_sigint(sig, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if main:
            print("\nstopping after this step (checkpoint will be written); Ctrl-C again to abort", file=sys.stderr)
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        from tqdm import tqdm
        bar = tqdm(total=cfg.max_steps, initial=session.step_count, desc="GRPO", unit="step") if main else None
    except ImportError:
        bar = None
    try:
        for m in session.iter_run(stop):
            if m.get("kind") == "train":
                if bar:
                    bar.update(1)
                    bar.set_postfix(reward=f"{m['reward_mean']:.4f}", loss=f"{m['loss']:.3g}")
            elif m.get("kind") == "eval":
                msg = "eval step {}: ".format(m["step"]) + ", ".join(
                    f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
                (bar.write if bar else print)(msg)
    finally:
        signal.signal(signal.SIGINT, old)
        if bar:
            bar.close()
    if not main:
        return 0
    ck = session.latest_checkpoint()
    print(f"checkpoint: {ck}")
    if args.export:
        print("LoRA:", session.export_lora(args.export))
    return 0


def cmd_export(args) -> int:
    from .export import export_checkpoint
    ckpt = args.checkpoint
    latest = os.path.join(ckpt, "checkpoints", "latest")
    if os.path.isfile(latest):  # an output_dir was given: use its latest checkpoint
        with open(latest, encoding="utf-8") as f:
            ckpt = os.path.join(ckpt, "checkpoints", f.read().strip())
    import torch
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    print(export_checkpoint(ckpt, args.out, dtype))
    return 0


def build_train(sub) -> None:
    import argparse
    p = sub.add_parser("train", help="LoRA GRPO / AWM training with a PromptEcho reward",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="session config (.toml or .json); may start with preset = \"...\"")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--export", default=None, metavar="FILE", help="also write a diffusers-format LoRA at the end")
    p.add_argument("--skip-self-check", action="store_true", help="skip the start-up invariants (not recommended)")
    p.set_defaults(func=cmd_train)


def build_export(sub) -> None:
    p = sub.add_parser("export-lora", help="convert a GRPO checkpoint to one diffusers/ComfyUI LoRA safetensors file")
    p.add_argument("checkpoint", help="checkpoint folder (…/checkpoints/step-000100) or a training output_dir")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.set_defaults(func=cmd_export)
