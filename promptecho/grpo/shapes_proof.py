"""Proof on ShapesWorld that RL with a PromptEcho reward improves a text-to-image model.

Trains a LoRA on the embedded ShapesWorld generator with a reward from the embedded ShapesWorld VLM (PromptEcho,
or VQAScore as the baseline), then lets the rule-based oracle judge the base and the trained model on held-out
prompts with the same seeds: oracle accuracy (all atoms right), atom share, and the pairwise net win rate
(wins - losses, by atom share, over the same (prompt, seed) pairs).

    python -m promptecho.grpo.shapes_proof --algorithm awm --reward promptecho --out out/proof/awm-promptecho
    python -m promptecho.grpo.shapes_proof --table out/proof/*/proof.json      # the README table

The oracle never enters training; train prompts come from the train split and eval prompts from the disjoint
eval split (promptecho.shapes.world.sample_split).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
import torch


def prompt_sets(n_train: int, n_eval: int, seed: int = 0):
    from ..shapes.world import sample_split
    train = [c for _, c in sample_split("train", n_train, seed=seed + 101)]
    evals = [c for _, c in sample_split("eval", n_eval, seed=seed + 202)]
    return train, evals


@torch.no_grad()
def judge(adapter, prompts: Sequence[str], seeds: Sequence[int], steps: int, cfg: float, lora: bool,
          batch: int = 64) -> Dict[str, np.ndarray]:
    """Oracle scores of the pipeline's own output (LoRAs on or off) for each (prompt, seed)."""
    from ..shapes.oracle import check
    images = []
    with contextlib.nullcontext() if lora else adapter.base_model():
        for s in range(0, len(prompts), batch):
            x = adapter.pipeline_images(list(prompts[s:s + batch]), list(seeds[s:s + batch]), steps, cfg)
            images += adapter.to_pil(x)
    res = [check(im, p) for im, p in zip(images, prompts)]
    return {"correct": np.array([r.correct for r in res], dtype=float),
            "atoms": np.array([r.fraction for r in res]), "images": images}


def pairwise(base: np.ndarray, trained: np.ndarray) -> Dict[str, float]:
    """Wins/losses/ties of trained over base on the same pairs; net = wins - losses (fractions)."""
    n = len(base)
    wins, losses = float((trained > base).sum()) / n, float((trained < base).sum()) / n
    return {"wins": wins, "losses": losses, "ties": 1.0 - wins - losses, "net": wins - losses}


Z95 = 1.96  # normal quantile of a two-sided 95 % interval


def paired_half_width(d: np.ndarray, z: float = Z95) -> float:
    """Half-width of the normal 95 % interval of mean(d) over paired per-(prompt, seed) differences d: how far a
    gain could move with another draw of eval prompts (at 200 prompts a few points either way)."""
    d = np.asarray(d, dtype=float)
    return float(z * d.std() / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def summarize(base, trained) -> Dict[str, float]:
    return {"base_accuracy": float(base["correct"].mean()), "trained_accuracy": float(trained["correct"].mean()),
            "base_atoms": float(base["atoms"].mean()), "trained_atoms": float(trained["atoms"].mean()),
            "delta_accuracy_pp": 100 * float(trained["correct"].mean() - base["correct"].mean()),
            "delta_accuracy_pp_ci95": 100 * paired_half_width(trained["correct"] - base["correct"]),
            **{f"pair_{k}": v for k, v in pairwise(base["atoms"], trained["atoms"]).items()},
            "pair_net_ci95": paired_half_width(np.sign(trained["atoms"] - base["atoms"]))}


PROOF_PRESETS = {"awm": "ShapesWorld proof", "grpo": "ShapesWorld proof Flow-GRPO"}  # the recipe of each algorithm


def build_config(args):
    from .config import preset
    cfg = preset(PROOF_PRESETS[args.algorithm])
    over = dict(reward=args.reward, seed=args.seed, output_dir=args.out,
                threads=args.threads, eval_every=0, checkpoint_every=args.checkpoint_every,
                pipeline=args.pipeline, reward_model=args.reward_model)
    if args.max_steps is not None:
        over["max_steps"] = args.max_steps
    if args.lr is not None:
        over["lr"] = args.lr
    if args.train_cfg is not None:
        over["train_cfg"] = args.train_cfg
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not hasattr(cfg, key):
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY a session-config field")
        try:
            over[key] = json.loads(raw)
        except json.JSONDecodeError:
            over[key] = raw
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg.validate()


def run(args) -> Dict:
    from .trainer import GRPOSession
    os.makedirs(args.out, exist_ok=True)
    cfg = build_config(args)
    train_prompts, eval_prompts = prompt_sets(args.train_prompts, args.eval_prompts, args.seed)
    session = GRPOSession(cfg, train_prompts=train_prompts, eval_prompts=eval_prompts[:4]).start()
    seeds = [5000 + i for i in range(len(eval_prompts))]
    # the training prompts themselves (each with --judge-train-seeds seeds): can the update fit what it trains on?
    fit_prompts = [p for p in train_prompts[:args.judge_train_prompts] for _ in range(args.judge_train_seeds)]
    fit_seeds = [7000 + i for i in range(len(fit_prompts))]
    t0 = time.time()
    base = judge(session.adapter, eval_prompts, seeds, cfg.eval_steps, cfg.eval_cfg, lora=False)
    base_fit = judge(session.adapter, fit_prompts, fit_seeds, cfg.eval_steps, cfg.eval_cfg, lora=False) if fit_prompts else None
    t_judge = time.time() - t0
    t0 = time.time()
    curve = []
    stop_at = t0 + 60 * args.minutes if args.minutes else None
    while session.step_count < cfg.max_steps:
        m = session.step()
        curve.append({"step": m["step"], "reward": m["reward_mean"], "seconds": round(time.time() - t0, 1)})
        if args.verbose:
            print(f"step {m['step']:4d}  reward {m['reward_mean']:.4f}  {time.time() - t0:6.0f}s", file=sys.stderr, flush=True)
        if stop_at and time.time() > stop_at:
            break
    train_seconds = time.time() - t0
    session.save_checkpoint()
    trained = judge(session.adapter, eval_prompts, seeds, cfg.eval_steps, cfg.eval_cfg, lora=True)
    fit = {}
    if fit_prompts:
        trained_fit = judge(session.adapter, fit_prompts, fit_seeds, cfg.eval_steps, cfg.eval_cfg, lora=True)
        fit = {"train_fit": {"prompts": min(len(train_prompts), args.judge_train_prompts), "seeds": args.judge_train_seeds,
                             **summarize(base_fit, trained_fit)}}
    out = {"algorithm": cfg.algorithm, "reward": cfg.reward, "steps": session.step_count, "train_seconds": round(train_seconds),
           "judge_seconds": round(t_judge), "threads": torch.get_num_threads(), "eval_prompts": len(eval_prompts),
           "train_prompts": len(train_prompts), "config": cfg.to_dict(), "curve": curve,
           **summarize(base, trained), **fit,
           # per (prompt, seed) oracle scores, so intervals or other statistics can be recomputed later
           "per_pair": {f"{name}_{k}": [float(v) for v in d[k]] for name, d in (("base", base), ("trained", trained))
                        for k in ("correct", "atoms")}}
    with open(os.path.join(args.out, "proof.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    _save_pairs(args.out, eval_prompts, base["images"], trained["images"], k=8)
    session.export_lora(os.path.join(args.out, "lora.safetensors"))
    return out


def _save_pairs(out_dir: str, prompts, base_imgs, trained_imgs, k: int = 8) -> None:
    """A strip of the first k eval prompts: base on top, trained below (same seed per column)."""
    from PIL import Image
    w, h = base_imgs[0].size
    strip = Image.new("RGB", (k * w, 2 * h), "white")
    for i in range(min(k, len(prompts))):
        strip.paste(base_imgs[i], (i * w, 0))
        strip.paste(trained_imgs[i], (i * w, h))
    strip.save(os.path.join(out_dir, "base_vs_trained.png"))
    with open(os.path.join(out_dir, "base_vs_trained.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(prompts[:k]) + "\n")


def _pm(half_width, scale: float = 1.0) -> str:
    """' ± h' (a 95 % half-width) when a run recorded one (runs before it did not)."""
    return "" if half_width is None else f" ± {scale * half_width:.1f}"


def _net_ci95(r: Dict):
    """The net win's half-width; runs recorded before it was stored get it from their win and loss shares (exact:
    the per-pair signs are +1, -1 or 0, so their variance is wins + losses - net^2)."""
    if "pair_net_ci95" in r:
        return r["pair_net_ci95"]
    n, w, l = r.get("eval_prompts"), r["pair_wins"], r["pair_losses"]
    return None if not n else Z95 * max(w + l - (w - l) ** 2, 0.0) ** 0.5 / n ** 0.5


def format_table(results: List[Dict]) -> str:
    head = ("| algorithm | reward | steps | train time | oracle accuracy base → trained | Δ pp (± 95 %) | atom share base → "
            "trained | pairwise net win (± 95 %; wins/losses) |\n|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['algorithm']} | {r['reward']} | {r['steps']} | {r['train_seconds'] / 60:.1f} min "
            f"| {100 * r['base_accuracy']:.1f} % → {100 * r['trained_accuracy']:.1f} % | {r['delta_accuracy_pp']:+.1f}"
            f"{_pm(r.get('delta_accuracy_pp_ci95'))} | {r['base_atoms']:.3f} → {r['trained_atoms']:.3f} "
            f"| {100 * r['pair_net']:+.1f} pp{_pm(_net_ci95(r), 100)} ({100 * r['pair_wins']:.0f} % / "
            f"{100 * r['pair_losses']:.0f} %) |"
            for r in results]
    return "\n".join([head] + rows)


def arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithm", default="grpo", choices=["grpo", "awm"],
                    help="awm: the 'ShapesWorld proof' preset; grpo: 'ShapesWorld proof Flow-GRPO' (same LoRA and sampler)")
    ap.add_argument("--reward", default="promptecho", help="promptecho | vqascore | a weighted combination")
    ap.add_argument("--out", default="out/proof/run")
    ap.add_argument("--pipeline", default="", help="generator folder [the embedded ShapesWorld generator]")
    ap.add_argument("--reward-model", default="", help="reward VLM folder [the embedded ShapesWorld VLM]")
    ap.add_argument("--max-steps", type=int, default=None, help="training steps [preset]")
    ap.add_argument("--minutes", type=float, default=0, help="also stop training after this many minutes (0 = no cap)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--train-cfg", type=float, default=None, help="CFG while sampling for training [preset]")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="any other session-config field, e.g. --set train_steps=12 awm_negative_weight=0 (values parsed as JSON)")
    ap.add_argument("--train-prompts", type=int, default=2000)
    ap.add_argument("--judge-train-seeds", type=int, default=0,
                    help="also judge base and trained model on training prompts with this many seeds each (0 = off): "
                         "with a few --train-prompts this shows whether the update can fit what it trains on")
    ap.add_argument("--judge-train-prompts", type=int, default=50, help="how many training prompts that judges")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=0)
    ap.add_argument("--table", nargs="*", metavar="JSON", help="print the README table of finished runs and exit")
    ap.add_argument("--verbose", action="store_true")
    return ap


def main(argv=None) -> int:
    ap = arg_parser()
    args = ap.parse_args(argv)
    if args.table is not None:
        results = []
        for p in args.table:
            with open(p, encoding="utf-8") as f:
                results.append(json.load(f))
        print(format_table(results))
        return 0
    if args.judge_train_seeds < 0 or args.judge_train_prompts < 1:
        ap.error("--judge-train-seeds must be >= 0 and --judge-train-prompts >= 1")
    torch.set_num_threads(args.threads)
    r = run(args)
    print(format_table([r]))
    if "train_fit" in r:
        f = r["train_fit"]
        print(f"training prompts ({f['prompts']} x {f['seeds']} seeds): oracle accuracy {100 * f['base_accuracy']:.1f} % -> "
              f"{100 * f['trained_accuracy']:.1f} % ({f['delta_accuracy_pp']:+.1f} ± {f['delta_accuracy_pp_ci95']:.1f} pp), "
              f"net win {100 * f['pair_net']:+.1f} pp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
