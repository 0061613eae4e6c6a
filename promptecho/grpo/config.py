"""GRPO session configuration: one dataclass, saved/loaded as TOML or JSON, plus named presets."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """A session configuration that cannot run; the message names the field."""


@dataclass
class GRPOConfig:
    # what to train
    adapter: str = "shapesworld"            # sd3 | shapesworld | zimage | flux | qwenimage
    pipeline: str = ""                      # local diffusers folder ("" = the adapter's default)
    dtype: str = "fp32"                     # fp32 | bf16 | fp16
    device: str = "cpu"
    resolution: int = 0                     # 0 = the pipeline's native size
    # data
    prompts: str = ""                       # train prompt file (.txt/.jsonl/.csv)
    eval_prompts: str = ""                  # held-out prompt file ("" = none)
    max_prompt_chars: int = 4000
    # reward
    reward: str = "promptecho"              # registry name or "name:weight+name:weight"
    reward_model: str = ""                  # VLM folder ("" = ShapesWorld VLM)
    eval_reward: str = ""                   # extra held-out reward for eval (e.g. "shapes_oracle")
    # sampling
    train_steps: int = 10
    eval_steps: int = 12
    train_cfg: float = 1.0                  # CFG scale w, v = vu + w (vc - vu); <= 1 = off (Z-Image: guidance_scale w-1)
    eval_cfg: float = 1.0
    guidance: float = 3.5                   # embedded guidance of guidance-distilled models (FLUX.1-dev); others ignore it
    group_size: int = 8
    prompts_per_step: int = 2
    # algorithm
    algorithm: str = "grpo"                 # grpo | awm
    noise_level: float = 0.7
    sde_window: List[int] = field(default_factory=list)  # [start, end) step indices with SDE; [] = all
    clip_range: float = 1e-4
    kl_beta: float = 0.0
    adv_mode: str = "mean_std"              # mean | mean_std
    adv_scope: str = "prompt"               # prompt | global
    adv_clip: float = 5.0
    awm_timesteps: int = 4                  # noise levels sampled per image for AWM
    awm_negative_weight: float = 1.0        # AWM: scale of negative advantages (0 = only pull toward better samples)
    # AWM: every image of a prompt's group gets the same noise levels and noise (common random numbers); advantages sum
    # to zero within a group, so the part of the loss gradient that does not depend on the sample cancels
    awm_group_noise: bool = False
    # AWM: noise levels drawn uniformly in [low, high], e.g. to train only at high noise, where composition (which
    # object where, how many) is decided; [0.5, 0.99] measured worse on ShapesWorld (README), hence the full range
    awm_sigma_range: List[float] = field(default_factory=lambda: [0.01, 0.99])
    # AWM trust region: beta * ||v - v_ema||^2, a velocity distance to an exponential moving average of the LoRA
    # weights (decay ema_decay per update), so the policy cannot run far from where it has recently been (0 = off)
    ema_kl_beta: float = 0.0
    ema_decay: float = 0.9
    inner_epochs: int = 1
    # draw each image's layout from the layout encoder (shapesworld) so a group holds different layouts; the draw's
    # log-prob gets the same clipped-ratio update as the SDE steps (needs lora_extra = ["layout_encoder"])
    layout_sampling: bool = False
    layout_temperature: float = 1.0
    # LoRA / optimiser
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    lora_extra: List[str] = field(default_factory=list)  # more components to adapt (shapesworld: layout_encoder)
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # schedule
    seed: int = 0
    max_steps: int = 100
    eval_every: int = 10
    eval_seeds: int = 1                     # images per eval prompt (fixed seeds 0..n-1)
    checkpoint_every: int = 10
    keep_last: int = 2
    output_dir: str = "out/grpo"
    threads: int = 0                        # 0 = leave torch's default

    def validate(self) -> "GRPOConfig":
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)
        need(self.algorithm in ("grpo", "awm"), f"algorithm must be 'grpo' or 'awm', got {self.algorithm!r}")
        need(self.group_size >= 2, f"group_size must be >= 2 (GRPO compares images of one prompt), got {self.group_size}")
        need(self.prompts_per_step >= 1, "prompts_per_step must be >= 1")
        need(self.train_steps >= 1 and self.eval_steps >= 1, "train_steps and eval_steps must be >= 1")
        need(self.noise_level >= 0, "noise_level must be >= 0")
        need(self.guidance >= 0, "guidance must be >= 0")
        need(self.algorithm != "grpo" or self.noise_level > 0, "Flow-GRPO needs noise_level > 0 (log-probs of SDE steps)")
        need(0 < self.clip_range < 1, "clip_range must be in (0, 1)")
        need(self.adv_mode in ("mean", "mean_std"), "adv_mode must be 'mean' or 'mean_std'")
        need(self.adv_scope in ("prompt", "global"), "adv_scope must be 'prompt' or 'global'")
        need(self.lora_rank >= 1 and self.lora_alpha > 0, "lora_rank must be >= 1 and lora_alpha > 0")
        need(self.lr > 0, "lr must be > 0")
        need(0 <= self.awm_negative_weight <= 1, "awm_negative_weight must be in [0, 1]")
        need(self.dtype in ("fp32", "bf16", "fp16"), "dtype must be fp32, bf16 or fp16")
        need(len(self.sde_window) in (0, 2), "sde_window must be [] or [start, end)")
        if self.sde_window:
            a, b = self.sde_window
            need(0 <= a < b <= self.train_steps, f"sde_window {self.sde_window} must satisfy 0 <= start < end <= train_steps")
        need(self.max_steps >= 0 and self.eval_every >= 0 and self.checkpoint_every >= 0, "step counts must be >= 0")
        need(self.keep_last >= 1, "keep_last must be >= 1")
        need(isinstance(self.lora_extra, list) and all(isinstance(n, str) and n for n in self.lora_extra)
             and len(set(self.lora_extra)) == len(self.lora_extra),
             f"lora_extra must be a list of distinct component names, got {self.lora_extra!r}")
        r = self.awm_sigma_range
        need(isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
             and 0 < r[0] < r[1] <= 1,
             f"awm_sigma_range must be [low, high] with 0 < low < high <= 1, got {self.awm_sigma_range}")
        need(self.ema_kl_beta >= 0 and 0 <= self.ema_decay < 1, "ema_kl_beta must be >= 0 and ema_decay in [0, 1)")
        need(self.ema_kl_beta == 0 or self.algorithm == "awm", "ema_kl_beta is an AWM option (algorithm = \"awm\")")
        need(self.layout_temperature > 0, "layout_temperature must be > 0")
        need(not self.layout_sampling or "layout_encoder" in self.lora_extra,
             "layout_sampling trains the layout encoder's choice: add \"layout_encoder\" to lora_extra")
        return self

    # ------------------------------------------------------------------------------------------ I/O
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GRPOConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d).validate()

    def save(self, path: str) -> None:
        text = json.dumps(self.to_dict(), indent=2) if path.endswith(".json") else to_toml(self.to_dict())
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "GRPOConfig":
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, "rb") as f:
            raw = f.read()
        try:
            if path.endswith(".json"):
                d = json.loads(raw.decode("utf-8"))
            else:
                import tomllib
                d = tomllib.loads(raw.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 - parse errors of either format become one clear message
            raise ConfigError(f"cannot parse {path}: {e}") from None
        base = d.pop("preset", None)
        if base is not None:
            merged = preset(base).to_dict()
            merged.update(d)
            d = merged
        return cls.from_dict(d)


def to_toml(d: Dict[str, Any]) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise ConfigError(f"cannot write {type(v).__name__} to TOML")
    return "".join(f"{k} = {val(v)}\n" for k, v in d.items() if v is not None)


_SHAPES_PROOF = dict(adapter="shapesworld", train_steps=8, eval_steps=12, train_cfg=1.0, eval_cfg=2.5, group_size=8,
                     prompts_per_step=4, lora_rank=16, lora_alpha=16.0, lr=5e-4, clip_range=0.2, noise_level=0.7,
                     max_steps=60, eval_every=0, checkpoint_every=0, awm_timesteps=4, threads=2,
                     lora_targets=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out"])
PRESETS: Dict[str, Dict[str, Any]] = {
    "ShapesWorld quick": dict(adapter="shapesworld", algorithm="grpo", train_steps=8, eval_steps=12, group_size=8,
                              prompts_per_step=2, lora_rank=8, lora_alpha=16.0, lr=1e-3, clip_range=0.2,
                              noise_level=0.7, max_steps=40, eval_every=10, checkpoint_every=10, threads=2),
    # the README's RL proof (promptecho.grpo.shapes_proof): eval with the deployed sampler (12 steps, CFG 2.5);
    # training samples 8 steps without CFG so a step costs ~1/3 as much on CPU. LoRA on attention, image MLPs and
    # proj_out; AWM with a trust region to an EMA of the LoRA (without it this LoRA collapsed), Flow-GRPO with a KL to
    # the base (without it, it reward-hacked the VLM): README, "Trust region and wide LoRA"
    "ShapesWorld proof": dict(**_SHAPES_PROOF, algorithm="awm", ema_kl_beta=10.0),
    "ShapesWorld proof Flow-GRPO": dict(**_SHAPES_PROOF, algorithm="grpo", kl_beta=0.04, sde_window=[0, 5]),
    "SD3.5 24 GB": dict(adapter="sd3", dtype="bf16", device="cuda", resolution=512, train_steps=10, eval_steps=40,
                        train_cfg=4.5, eval_cfg=4.5, group_size=8, prompts_per_step=2, lora_rank=32, lora_alpha=64.0,
                        lr=3e-4, clip_range=1e-4, kl_beta=0.04, sde_window=[0, 2], max_steps=500,
                        lora_targets=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                      "to_add_out"]),
    "Z-Image 24 GB": dict(adapter="zimage", dtype="bf16", device="cuda", resolution=512, train_steps=8, eval_steps=8,
                          train_cfg=1.0, eval_cfg=1.0, group_size=8, prompts_per_step=2, algorithm="awm",
                          lora_rank=64, lora_alpha=128.0, lr=1e-4, max_steps=500,
                          lora_targets=["to_q", "to_k", "to_v", "to_out.0"]),
    # FLUX.1-dev: 12B transformer (24 GB in bf16) + T5-XXL (9.5 GB): weights alone exceed a 24 GB card, and the
    # GRPO update backpropagates a whole group at once, so this is sized for an 80 GB card (not measured here).
    # Embedded guidance 3.5 as in the pipeline's default; no true CFG. Flow-GRPO-Fast style SDE window.
    "FLUX.1-dev 80 GB": dict(adapter="flux", dtype="bf16", device="cuda", resolution=512, train_steps=10,
                             eval_steps=28, train_cfg=1.0, eval_cfg=1.0, guidance=3.5, group_size=8, prompts_per_step=2,
                             lora_rank=32, lora_alpha=64.0, lr=3e-4, clip_range=1e-4, kl_beta=0.04, sde_window=[0, 2],
                             max_steps=500,
                             lora_targets=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                           "add_v_proj", "to_add_out"]),
    # Qwen-Image: 20B transformer (41 GB in bf16) + Qwen2.5-VL-7B text encoder (16 GB): an 80 GB card (not measured
    # here). The paper's recipe: AWM, LoRA rank 64 / alpha 128; true CFG 4 as in the pipeline's default.
    "Qwen-Image 80 GB": dict(adapter="qwenimage", dtype="bf16", device="cuda", resolution=512, algorithm="awm",
                             train_steps=10, eval_steps=20, train_cfg=4.0, eval_cfg=4.0, group_size=8,
                             prompts_per_step=2, lora_rank=64, lora_alpha=128.0, lr=1e-4, max_steps=500,
                             lora_targets=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                           "add_v_proj", "to_add_out"]),
}


def preset(name: str) -> GRPOConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return GRPOConfig(**copy.deepcopy(PRESETS[name])).validate()  # a copy: editing a session's lists never edits a preset
