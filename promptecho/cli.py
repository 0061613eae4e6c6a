"""Command line: `python -m promptecho <command> ...` (score, rerank, demo; more commands plug in below)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Callable, Dict, List, Optional

EPILOG_SCORE = """examples:
  python -m promptecho score --image cat.png --prompt "a cat on a red sofa"
  python -m promptecho score --model models/LLM/Qwen3-VL-8B --image a.png b.png --prompt "..." --json
  python -m promptecho score --image out.png --prompt-file prompt.txt --heatmap heat.png

The reward is -CE: the negative mean cross-entropy (nats per token) of the prompt as the VLM's answer to
"Describe this image in detail." given the image. Higher is better; it is comparable between images for
the same prompt and model. Per-word losses show which words the image does not support."""

EPILOG_RERANK = """examples:
  python -m promptecho rerank --image cand_*.png --prompt "two red circles above a blue square" --top-k 3
  python -m promptecho rerank --image cand_*.png --prompt "..." --method vqascore --json"""


EPILOG_MAIN = """quick start:
  python -m promptecho demo --out out/demo                     # no model needed: scores a bundled example
  python -m promptecho score --model DIR --image a.png --prompt "a red cube on a table" --heatmap heat.png
  python -m promptecho rerank --model DIR --image cand_*.png --prompt "..." --top-k 1

DIR is a local folder of a Hugging Face image-text-to-text model (e.g. Qwen3-VL, SmolVLM, LLaVA, Gemma 3),
as saved by save_pretrained. Run `python -m promptecho COMMAND --help` for a command's options."""


class CLIError(Exception):
    """An error the user can fix; printed without a traceback."""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _default_model() -> Optional[str]:
    try:
        from .shapes import default_vlm_path, has_default_vlm
        return default_vlm_path() if has_default_vlm() else None
    except ImportError:
        return None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    default = _default_model()
    p.add_argument("--model", default=default, required=default is None, metavar="DIR",
                   help="local folder of an image-text-to-text model (AutoProcessor + AutoModelForImageTextToText)"
                        + (" [default: the built-in ShapesWorld VLM]" if default
                           else " (required: the built-in ShapesWorld VLM is not installed)"))
    p.add_argument("--image", nargs="+", required=True, metavar="PATH", help="one or more image files")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="the prompt the image(s) were generated from")
    g.add_argument("--prompt-file", metavar="PATH", help="read the prompt from a UTF-8 text file")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights/activations precision [default: auto = bf16 on GPUs that support it, else fp32]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps [default: auto]")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                   help="image-prompt pairs per forward pass [default: 8]")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch [default: all cores, at most 8]")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise CLIError(f"cannot read --prompt-file: {e}")


def _images(paths: List[str]):
    from PIL import Image, UnidentifiedImageError
    out = []
    for p in paths:
        if not os.path.isfile(p):
            raise CLIError(f"image not found: {p}")
        try:
            with Image.open(p) as im:
                im.load()
                out.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise CLIError(f"not a readable image: {p} ({e})")
    return out


def _setup_threads(n: Optional[int]) -> None:
    """Deliberate thread count: torch's default can oversubscribe small shared machines badly."""
    import torch
    torch.set_num_threads(n or min(8, os.cpu_count() or 1))
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # no "Loading weights" bars in CLI output
    except ImportError:
        pass


def _load(args):
    from .vlm import load_vlm
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(args.dtype, args.dtype)
    return load_vlm(args.model, dtype=dtype, device=args.device)


def cmd_score(args) -> int:
    from .heatmap import heatmap_json, render_heatmap
    _setup_threads(args.threads)
    images, prompt = _images(args.image), _prompt(args)
    vlm = _load(args)
    results = vlm.score(images, prompt, query=args.query, reduction=args.reduction,
                        include_end_token=args.include_end_token, batch_size=args.batch_size)
    if args.heatmap:
        root, ext = os.path.splitext(args.heatmap)
        for i, r in enumerate(results):
            out = args.heatmap if len(results) == 1 else f"{root}_{i}{ext or '.png'}"
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            render_heatmap(r).save(out)
            print(f"wrote heatmap {out}", file=sys.stderr)  # stderr: --json output on stdout stays parseable
    if args.json:
        print(json.dumps([{"image": p, **heatmap_json(r)} for p, r in zip(args.image, results)], ensure_ascii=False,
                         indent=1))
        return 0
    for p, r in zip(args.image, results):
        print(f"{p}: reward {r.reward:.4f}  ({r.reduction} CE over {r.n_tokens} prompt tokens"
              + (f", {r.truncated_tokens} tokens truncated by the model's length limit" if r.truncated_tokens else "")
              + ")")
        worst = sorted(r.words, key=lambda w: -w.loss)[:args.show_words]
        if worst:
            print("  least supported words: " + ", ".join(f"{w.text!r} {w.loss:.2f}" for w in worst))
    return 0


def cmd_rerank(args) -> int:
    _setup_threads(args.threads)
    images, prompt = _images(args.image), _prompt(args)
    vlm = _load(args)
    kw = {"batch_size": args.batch_size}
    if args.method == "promptecho":
        kw["query"] = args.query
    res = vlm.rerank(images, prompt, method=args.method, **kw)
    k = min(args.top_k or len(images), len(images))
    ranked = [{"rank": i + 1, "index": j, "image": args.image[j], "score": res.scores[j]}
              for i, j in enumerate(res.order[:k])]
    if args.json:
        print(json.dumps({"method": args.method, "prompt": prompt, "ranking": ranked}, ensure_ascii=False, indent=1))
    else:
        label = "reward" if args.method == "promptecho" else "P(yes)"
        for r in ranked:
            print(f"{r['rank']:3d}. {r['image']}  {label} {r['score']:.4f}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    _setup_threads(args.threads)
    return run_demo(args.out)


def _build_score(sub) -> None:
    from . import DEFAULT_QUERY
    p = sub.add_parser("score", help="PromptEcho reward and per-word heatmap of image(s) for one prompt",
                       description="Score how well each image 'echoes' the prompt under a frozen VLM.",
                       epilog=EPILOG_SCORE, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    p.add_argument("--query", default=DEFAULT_QUERY, help="guiding query [default: %(default)r]")
    p.add_argument("--reduction", default="mean", choices=["mean", "sum"])
    p.add_argument("--include-end-token", action="store_true", help="count the end-of-turn token in the reward")
    p.add_argument("--heatmap", metavar="OUT.png", help="write the word heatmap (OUT_i.png for several images)")
    p.add_argument("--show-words", type=int, default=5, metavar="N",
                   help="how many least-supported words to print [default: 5]")
    p.set_defaults(func=cmd_score)


def _build_rerank(sub) -> None:
    from . import DEFAULT_QUERY
    p = sub.add_parser("rerank", help="best-of-N: order candidate images for one prompt",
                       description="Rank candidate images by PromptEcho reward (or the VQAScore baseline).",
                       epilog=EPILOG_RERANK, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    p.add_argument("--method", default="promptecho", choices=["promptecho", "vqascore"])
    p.add_argument("--query", default=DEFAULT_QUERY, help="guiding query for promptecho [default: %(default)r]")
    p.add_argument("--top-k", type=_positive_int, default=None, metavar="K", help="print only the best K")
    p.set_defaults(func=cmd_rerank)


def _build_demo(sub) -> None:
    p = sub.add_parser("demo", help="score the bundled example with the built-in model (what `make demo` runs)",
                       description="Score the bundled ShapesWorld example image against its true caption and a "
                                   "caption with one relation flipped, print rewards and per-word losses, and "
                                   "write heatmap.png, heatmap_wrong.png and score.json. Uses the embedded "
                                   "ShapesWorld VLM; without it, builds a tiny random-weight LLaVA as a clearly "
                                   "labelled stand-in.")
    p.add_argument("--out", default="out/demo", help="folder for heatmap.png and score.json")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N")
    p.set_defaults(func=cmd_demo)


# command name -> "module:function" that adds its subparser; other parts register theirs here
COMMANDS: Dict[str, str] = {
    "score": "promptecho.cli:_build_score",
    "rerank": "promptecho.cli:_build_rerank",
    "demo": "promptecho.cli:_build_demo",
    "train": "promptecho.grpo.cli:build_train",
    "export-lora": "promptecho.grpo.cli:build_export",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m promptecho",
        description="PromptEcho: image-text alignment reward from a frozen vision-language model. "
                    "reward = -CE(prompt | image, 'Describe this image in detail.'); per-word losses show which "
                    "words the image does not support. Nothing is downloaded: models are local folders.",
        epilog=EPILOG_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        mod, fn = target.split(":")
        try:
            builder: Callable = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError):
            continue  # optional command whose module is not installed
        builder(sub)
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # VLMLoadError, ScoreInputError, ImageInputError: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
