"""One GRPO iteration split into sampling, reward and training time, plus iteration / sampling ratio.

CPU (default, and `run()` for `make bench`): the ShapesWorld generator (committed weights if present, else the
same architecture with random weights, `build_components()`) at group size 8 without CFG, 10 sampling steps,
PromptEcho reward from the ShapesWorld VLM (committed; a tiny random LLaVA if absent), LoRA r8 on the attention
projections. Variants: Flow-GRPO with the SDE on all 10 steps (10 log-prob recomputations with backward),
Flow-GRPO "fast" (SDE window of 2 steps), and AWM (4 flow-matching noise levels per image). Each variant runs 2
iterations in one session; the second is reported (the first pays one-off allocation costs).
GPU (--sd35): a full-size random-weight SD3.5-Medium transformer at 512 px with LoRA r32 on the attention
projections, precomputed random text embeddings (only the transformer is full size), bf16; time and peak memory.

  python bench/bench_grpo.py                      # the three CPU variants (what make bench runs)
  python bench/bench_grpo.py --algorithm grpo --group 8 --steps 10 --threads 2 [--sde-window 0 2]
  python bench/bench_grpo.py --sd35 --device cuda --group 8 --steps 10 --sde-window 0 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from promptecho.grpo.adapters.base import FlowAdapter  # noqa: E402
from promptecho.grpo.config import GRPOConfig  # noqa: E402
from promptecho.grpo.trainer import GRPOSession  # noqa: E402


class EmbedsAdapter(FlowAdapter):
    """SD3 transformer driven with precomputed (random) text embeddings; latents shown as images directly."""
    name = "sd3-embeds"

    def __init__(self, transformer, device, dtype, latent=64, text_len=333):
        from diffusers import FlowMatchEulerDiscreteScheduler
        self.transformer_ = transformer
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        super().__init__(None, device, dtype)
        self.latent, self.text_len = latent, text_len

    @property
    def transformer(self):
        return self.transformer_

    def sigmas(self, steps):
        self.scheduler.set_timesteps(steps, device="cpu")
        return self.scheduler.sigmas.clone().float()

    def encode(self, prompts, cfg):
        g = torch.Generator().manual_seed(len(prompts))
        c = self.transformer_.config
        return {"embeds": torch.randn(len(prompts), self.text_len, c.joint_attention_dim, generator=g).to(self.device, self.dtype),
                "pooled": torch.randn(len(prompts), c.pooled_projection_dim, generator=g).to(self.device, self.dtype)}

    def initial_noise(self, seeds):
        c = self.transformer_.config
        return torch.stack([torch.randn(c.in_channels, self.latent, self.latent, generator=g) for g in self.generators(seeds)]
                           ).to(self.device, self.dtype)

    def velocity(self, x, sigma, cond, cfg):
        t = (sigma.float() * 1000).to(self.device).expand(x.shape[0])
        return self.transformer_(hidden_states=x, timestep=t, encoder_hidden_states=cond["embeds"],
                                 pooled_projections=cond["pooled"], return_dict=False)[0]

    def decode(self, x):
        return (x[:, :3].float() / 4 + 0.5).clamp(0, 1)


def sd35_medium_transformer(dtype, device):
    from diffusers import SD3Transformer2DModel
    with torch.device(device):
        tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    return tr.to(dtype)


def toy_reward(images, prompts):
    import numpy as np
    return [float(np.asarray(im, dtype=np.float32).mean()) for im in images]


def shapes_pipeline():
    """A fresh ShapesWorld pipeline (each session adds its own LoRA)."""
    from promptecho.shapes import default_generator_path, has_default_generator
    from promptecho.shapes.generator import ShapesWorldPipeline, build_components
    if has_default_generator():
        return ShapesWorldPipeline.from_pretrained(default_generator_path(), local_files_only=True)
    return ShapesWorldPipeline(**build_components())


def shapes_reward():
    from promptecho.shapes import default_vlm_path, has_default_generator, has_default_vlm
    from promptecho.grpo.rewards import build_reward
    vlm_path = default_vlm_path() if has_default_vlm() else None
    if vlm_path is None:
        from promptecho.testing.tiny_vlms import build_tiny_vlm
        vlm_path = build_tiny_vlm("llava", tempfile.mkdtemp(prefix="bench-grpo-vlm-"))
    desc = {"generator": "committed ShapesWorld generator" if has_default_generator()
            else "random ShapesWorld architecture (build_components: width 128, 4 layers)",
            "reward_vlm": "committed ShapesWorld VLM" if has_default_vlm() else "tiny random LLaVA"}
    return build_reward("promptecho", vlm_path), desc


def shapes_setup(threads):
    from promptecho.grpo.adapters import make_adapter
    reward, desc = shapes_reward()
    return make_adapter("shapesworld", shapes_pipeline()), reward, desc


PROMPTS = ["a small red circle in the top left corner", "two blue squares at the bottom",
           "a large green triangle in the center", "a yellow circle to the left of a red square"]


def measure(adapter, reward, algorithm="grpo", group=8, prompts=1, steps=10, sde_window=None, iters=2, device="cpu",
            rank=8, targets=("to_q", "to_k", "to_v", "to_out.0")):
    """Run `iters` GRPO iterations in one session; the last one's time split."""
    cfg = GRPOConfig(adapter="shapesworld", algorithm=algorithm, train_steps=steps, group_size=group,
                     prompts_per_step=prompts, lora_rank=rank, lora_alpha=2.0 * rank, lora_targets=list(targets),
                     clip_range=0.2, noise_level=0.7 if algorithm == "grpo" else 0.0,
                     sde_window=list(sde_window) if sde_window else [], device=device,
                     output_dir=tempfile.mkdtemp(prefix="bench-grpo-"), max_steps=iters, eval_every=0,
                     checkpoint_every=0)
    s = GRPOSession(cfg, adapter, reward, train_prompts=PROMPTS, run_self_checks=False).start()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    m = [s.step() for _ in range(iters)][-1]
    return {"algorithm": algorithm, "group": group, "prompts": prompts, "images": group * prompts,
            "sampling_steps": steps, "sde_window": list(sde_window) if sde_window else "all", "cfg": False,
            "time_sample_s": round(m["time_sample"], 3), "time_reward_s": round(m["time_reward"], 3),
            "time_train_s": round(m["time_train"], 3), "time_iteration_s": round(m["time_total"], 3),
            "iteration_over_sampling": round(m["time_total"] / m["time_sample"], 2)}


VARIANTS = (("grpo", None), ("grpo", (0, 2)), ("awm", None))


def run(threads=2, group=8, steps=10, iters=2) -> dict:
    """`make bench`: the three CPU variants on the ShapesWorld generator + VLM, one session each."""
    from promptecho.grpo.adapters import make_adapter
    torch.set_num_threads(threads)
    reward, desc = shapes_reward()
    out = {"threads": threads, **desc, "variants": []}
    for algorithm, window in VARIANTS:
        out["variants"].append(measure(make_adapter("shapesworld", shapes_pipeline()), reward, algorithm, group,
                                       steps=steps, sde_window=window, iters=iters))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--algorithm", default=None, choices=["grpo", "awm"], help="one variant (default: all three)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sde-window", type=int, nargs=2, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2, help="iterations; the first warms up and is not reported")
    ap.add_argument("--sd35", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.sd35 and a.algorithm is None:
        print(json.dumps(run(a.threads, a.group, a.steps, a.iters), indent=1))
        return
    a.algorithm = a.algorithm or "grpo"
    if a.sd35:
        dtype = torch.bfloat16
        t = time.perf_counter()
        adapter = EmbedsAdapter(sd35_medium_transformer(dtype, a.device), a.device, dtype)
        reward, desc = toy_reward, {"generator": f"SD3.5-Medium-size transformer, random bf16 (built in {time.perf_counter() - t:.0f}s)",
                                    "reward": "toy (no VLM)", "resolution": 512}
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        rank = 32
    else:
        adapter, reward, desc = shapes_setup(a.threads)
        targets, rank = ["to_q", "to_k", "to_v", "to_out.0"], 8
    res = {**measure(adapter, reward, a.algorithm, a.group, a.prompts, a.steps, a.sde_window, a.iters, a.device,
                     rank, targets), **desc, "threads": a.threads}
    if a.device.startswith("cuda"):
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        res["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
