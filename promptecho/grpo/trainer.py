"""GRPO training session: start, step, stop (always saves), resume; evaluation; self-checks.

Every random draw of step s (prompt choice, initial noise seeds, SDE noise, AWM noise levels) comes from
generators seeded by (config.seed, s), so a run resumed from a checkpoint continues bit-identically: the
checkpoint only needs the LoRA, the optimiser state and the step (RNG states and history are saved too).

Data parallel (`accelerate launch`, see README "Multi-GPU"): pass an `accelerate.Accelerator`. Every process
draws the same global batch, samples and rewards its contiguous slice of rows (SDE/AWM noise is drawn for the
global batch and sliced, so each image gets the noise it would get in one process), rewards are gathered so
advantages use whole groups, gradients are averaged with `accelerator.reduce` before each optimiser step, and
only the main process writes files. The adapters call the pipeline's transformer directly (and read its
config), so the gradients are reduced explicitly instead of routing every call through a DDP wrapper; the math
is DDP's (mean of per-process gradients of equal-sized shards).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import sde
from .awm import awm_loss, noisy_sample, sample_weight, velocity_distance
from .config import GRPOConfig

log = logging.getLogger("promptecho.grpo")


class SelfCheckError(RuntimeError):
    """A start-up invariant failed (sampler != pipeline, ratio != 1, KL != 0): training would be wrong."""


def _gen(*parts) -> torch.Generator:
    """A CPU generator whose seed is a deterministic function of the parts (seed, step, purpose, ...)."""
    h = 1469598103934665603
    for p in parts:
        for ch in str(p).encode() + b"|":
            h = ((h ^ ch) * 1099511628211) % (1 << 63)
    return torch.Generator("cpu").manual_seed(h)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler.step's own arithmetic, so that noise level 0 == the pipeline in every dtype:
    x in float32, (sigma_next - sigma) * v in v's dtype (a 0-d float32 tensor does not promote a bf16 tensor), the
    result cast to v's dtype. Upcasting v first (float32 product) differs from the pipeline by ~1e-2 in bf16."""
    return (x.float() + (sigma_next - sigma) * v).to(v.dtype)


@dataclass
class Trajectory:
    x0: torch.Tensor                       # final latents [B, ...]
    xs: List[torch.Tensor] = field(default_factory=list)       # x_t at SDE steps
    x_nexts: List[torch.Tensor] = field(default_factory=list)
    old_logps: List[torch.Tensor] = field(default_factory=list)
    step_idx: List[int] = field(default_factory=list)


class GRPOSession:
    def __init__(self, cfg: GRPOConfig, adapter=None, reward_fn: Optional[Callable] = None,
                 eval_rewards: Optional[Dict[str, Callable]] = None, train_prompts: Optional[List[str]] = None,
                 eval_prompts: Optional[List[str]] = None, run_self_checks: bool = True, accelerator=None):
        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.acc = accelerator
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.is_main = self.rank == 0
        n = cfg.group_size * cfg.prompts_per_step
        if n % self.world:
            from .config import ConfigError
            raise ConfigError(f"group_size x prompts_per_step (= {n} images per step) must be divisible by the "
                              f"number of processes ({self.world})")
        # each process uses the device accelerate gives it (cuda:<local rank> on a multi-GPU machine)
        device = str(accelerator.device) if accelerator is not None else cfg.device
        from .adapters import load_pipeline, make_adapter
        if adapter is None:
            adapter = make_adapter(cfg.adapter, load_pipeline(cfg.adapter, cfg.pipeline, cfg.dtype, device),
                                   device, cfg.dtype, cfg.resolution, guidance=cfg.guidance)
        self.adapter = adapter
        if cfg.layout_sampling and not adapter.samples_layout:
            from .config import ConfigError
            raise ConfigError(f"layout_sampling: the {adapter.label} pipeline has no layout to sample "
                              "(only the ShapesWorld generator with a layout encoder has one)")
        from .prompts import load_prompts
        self.train_prompts = train_prompts if train_prompts is not None else load_prompts(cfg.prompts, cfg.max_prompt_chars)
        self.eval_prompts = eval_prompts if eval_prompts is not None else (
            load_prompts(cfg.eval_prompts, cfg.max_prompt_chars) if cfg.eval_prompts else [])
        if reward_fn is None:
            from .rewards import build_reward
            reward_fn = build_reward(cfg.reward, cfg.reward_model or None, device if device != "auto" else "cpu")
        self.reward_fn = reward_fn
        self.eval_rewards = dict(eval_rewards or {})
        if cfg.eval_reward and not eval_rewards:
            from .rewards import build_reward
            for name in cfg.eval_reward.split(","):
                self.eval_rewards[name.strip()] = build_reward(name.strip(), cfg.reward_model or None)
        self.step_count = 0
        self.history: List[Dict] = []
        self.run_self_checks = run_self_checks
        self.self_check_report: Dict[str, float] = {}
        self._started = False
        self.out = cfg.output_dir

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self, resume: Optional[str] = None) -> "GRPOSession":
        """Add the LoRA, build the optimiser, optionally resume ("latest" or a checkpoint folder), self-check."""
        from peft import LoraConfig
        mods = self.adapter.lora_modules(self.cfg.lora_targets, self.cfg.lora_extra)
        self.lora_modules = {k: m for k, (m, _) in mods.items()}  # key prefix -> adapted module
        torch.manual_seed(self.cfg.seed)  # LoRA A init
        self.params = []
        for module, targets in mods.values():
            module.requires_grad_(False)
            module.add_adapter(LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha,
                                          target_modules=targets, init_lora_weights=True))
            self.params += [p for p in module.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        # moving average of the LoRA weights (ema_kl_beta); starts at the initial weights, saved in checkpoints
        self.ema = [p.detach().clone() for p in self.params] if self.cfg.ema_kl_beta > 0 else None
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
            self.cfg.save(os.path.join(self.out, "config.toml"))
        if resume:
            path = self.latest_checkpoint() if resume == "latest" else resume
            if path:
                self.load_checkpoint(path)
        if self.run_self_checks and self.step_count == 0:
            self.self_check()
        self.check_ranks_in_sync()
        self._started = True
        return self

    def stop(self) -> str:
        """Always saves a checkpoint of the current state; returns its folder."""
        return self.save_checkpoint()

    # ------------------------------------------------------------------------------------ sampling
    def _sde_indices(self, steps: int) -> set:
        if self.cfg.noise_level <= 0:
            return set()
        a, b = self.cfg.sde_window or (0, steps)
        return set(range(a, min(b, steps)))

    @torch.no_grad()
    def sample(self, cond, seeds: Sequence[int], steps: int, cfg_scale: float, noise_level: float,
               sde_steps: set, noise_gen: Optional[torch.Generator] = None, record: bool = False,
               rows: Optional[tuple] = None) -> Trajectory:
        """rows = (lo, hi, n): this call samples rows lo:hi of an n-image batch; SDE noise is drawn for all n rows
        and sliced, so every image gets the same noise as in a single-process run."""
        ad = self.adapter
        x = ad.initial_noise(seeds)
        sig = ad.sigmas(steps)
        finite = float(sig[1]) if float(sig[0]) >= 1.0 else float(sig[0])
        traj = Trajectory(x0=x)
        for i in range(steps):
            v = ad.velocity(x, sig[i], cond, cfg_scale)
            if i in sde_steps and noise_level > 0:
                std = sde.sde_std(float(sig[i]), finite, noise_level)
                scale = sde.step_scale(float(sig[i]), float(sig[i + 1]), std)
                lo, hi, n = rows or (0, x.shape[0], x.shape[0])
                noise = torch.randn((n, *x.shape[1:]), generator=noise_gen, dtype=torch.float32)[lo:hi]
                noise = noise.to(x.device, x.dtype)
                x_next, mean = sde.sde_step(x, v, float(sig[i]), float(sig[i + 1]), std, noise=noise)
                if record:
                    traj.xs.append(x)
                    traj.x_nexts.append(x_next)
                    traj.old_logps.append(sde.gaussian_log_prob(x_next, mean, scale))
                    traj.step_idx.append(i)
            else:
                x_next = euler_step(x, v, sig[i], sig[i + 1])
            x = x_next
        traj.x0 = x
        return traj

    def _logp(self, x, x_next, i, sig, cond, cfg_scale):
        finite = float(sig[1]) if float(sig[0]) >= 1.0 else float(sig[0])
        std = sde.sde_std(float(sig[i]), finite, self.cfg.noise_level)
        scale = sde.step_scale(float(sig[i]), float(sig[i + 1]), std)
        v = self.adapter.velocity(x, sig[i], cond, cfg_scale)
        mean = sde.sde_mean(x, v, float(sig[i]), float(sig[i + 1]), std)
        return sde.gaussian_log_prob(x_next, mean, scale), mean, scale

    def _ref_mean(self, x, i, sig, cond, cfg_scale):
        with self.base_model(), torch.no_grad():
            _, mean, _ = self._logp(x, x, i, sig, cond, cfg_scale)
        return mean

    def base_model(self):
        """Every LoRA of the session switched off inside the block (the frozen base model, for KL and judging)."""
        return self.adapter.base_model()

    @contextlib.contextmanager
    def ema_weights(self):
        """The LoRA weights replaced by their moving average inside the block (ema_kl_beta > 0)."""
        saved = [p.data for p in self.params]
        try:
            for p, e in zip(self.params, self.ema):
                p.data = e
            yield
        finally:
            for p, d in zip(self.params, saved):
                p.data = d

    # ---------------------------------------------------------------------------------- self-checks
    def self_check(self, tol: float = 1e-5) -> Dict[str, float]:
        """Sampler at noise 0 == pipeline output; ratio == 1 exactly before any update; KL == 0 at init."""
        ad, cfg = self.adapter, self.cfg
        prompts = [(self.eval_prompts or self.train_prompts)[0]] * 2
        seeds = [11, 12]
        steps = min(cfg.eval_steps, 4)
        cond = ad.encode(prompts, cfg.train_cfg)
        ours = ad.decode(self.sample(cond, seeds, steps, cfg.train_cfg, 0.0, set()).x0)
        ref = ad.pipeline_images(prompts, seeds, steps, cfg.train_cfg)
        diff = float((ours.detach() - ref.to(ours.device)).abs().max())
        rep = {"pipeline_max_abs_diff": diff}
        if diff > tol:
            raise SelfCheckError(f"sampler at noise level 0 differs from the pipeline's output by {diff:.3g} (> {tol})")
        if cfg.noise_level > 0:
            sig = ad.sigmas(cfg.train_steps)
            idx = sorted(self._sde_indices(cfg.train_steps))[:1]
            traj = self.sample(cond, seeds, cfg.train_steps, cfg.train_cfg, cfg.noise_level, set(idx),
                               _gen(cfg.seed, "selfcheck"), record=True)
            with torch.enable_grad():
                logp, mean, scale = self._logp(traj.xs[0], traj.x_nexts[0], idx[0], sig, cond, cfg.train_cfg)
            ratio = torch.exp(logp.detach() - traj.old_logps[0])
            kl = sde.kl_gaussian_same_std(mean.detach(), self._ref_mean(traj.xs[0], idx[0], sig, cond, cfg.train_cfg), scale)
            rep.update(ratio_max_dev=float((ratio.detach() - 1).abs().max()), kl_init=float(kl.abs().max()))
            if rep["ratio_max_dev"] != 0.0:
                raise SelfCheckError(f"probability ratio before the first update is not exactly 1 (max |r-1| = {rep['ratio_max_dev']:.3g})")
            if rep["kl_init"] != 0.0:
                raise SelfCheckError(f"KL to the base at initialisation is {rep['kl_init']:.3g}, expected 0")
        if cfg.layout_sampling:
            t = cfg.layout_temperature
            drawn, old = ad.sample_layout(cond, ad.layout_uniforms(len(prompts), _gen(cfg.seed, "selfcheck-layout")), t)
            with torch.enable_grad():
                new = ad.layout_log_prob(drawn, t)
            rep["layout_ratio_max_dev"] = float((torch.exp(new.detach() - old) - 1).abs().max())
            if rep["layout_ratio_max_dev"] != 0.0:
                raise SelfCheckError("layout probability ratio before the first update is not exactly 1 "
                                     f"(max |r-1| = {rep['layout_ratio_max_dev']:.3g})")
        self.self_check_report = rep
        log.info("self-check passed: %s", rep)
        return rep

    # ------------------------------------------------------------------------------------- training
    def _batch(self, step: int):
        cfg = self.cfg
        g = _gen(cfg.seed, step, "batch")
        k = min(cfg.prompts_per_step, len(self.train_prompts))
        idx = torch.randperm(len(self.train_prompts), generator=g)[:k].tolist()
        prompts = [self.train_prompts[i] for i in idx for _ in range(cfg.group_size)]
        groups = torch.tensor([j for j in range(k) for _ in range(cfg.group_size)])
        seeds = torch.randint(0, 2 ** 31 - 1, (len(prompts),), generator=g).tolist()
        return prompts, groups, seeds

    def _rows(self, n: int) -> tuple:
        """(lo, hi, n): this process's contiguous slice of an n-row global batch (all rows in one process)."""
        k = n // self.world
        return self.rank * k, (self.rank + 1) * k, n

    def step(self) -> Dict:
        """One GRPO iteration: sample a group per prompt, reward, advantages, update. Returns its metrics."""
        if not self._started:
            raise RuntimeError("call start() before step()")
        cfg, ad = self.cfg, self.adapter
        t0 = time.perf_counter()
        prompts, groups, seeds = self._batch(self.step_count)
        rows = self._rows(len(prompts))
        lo, hi, _ = rows
        cond = ad.encode(prompts[lo:hi], cfg.train_cfg)
        old_layout = None
        if cfg.layout_sampling:  # one layout per image, drawn for the global batch and sliced (as the SDE noise)
            u = ad.layout_uniforms(len(prompts), _gen(cfg.seed, self.step_count, "layout"))[lo:hi]
            cond, old_layout = ad.sample_layout(cond, u, cfg.layout_temperature)
        sde_steps = self._sde_indices(cfg.train_steps) if cfg.algorithm == "grpo" else set()
        traj = self.sample(cond, seeds[lo:hi], cfg.train_steps, cfg.train_cfg,
                           cfg.noise_level if cfg.algorithm == "grpo" else 0.0, sde_steps,
                           _gen(cfg.seed, self.step_count, "sde"), record=cfg.algorithm == "grpo", rows=rows)
        with torch.no_grad():
            images = ad.to_pil(ad.decode(traj.x0))
        t1 = time.perf_counter()
        rewards = torch.tensor([float(r) for r in self.reward_fn(images, prompts[lo:hi])])
        if self.world > 1:  # whole groups are needed for the advantages: gather all rows (in rank = row order)
            rewards = self.acc.gather(rewards.to(self.acc.device)).cpu()
        t2 = time.perf_counter()
        adv = sde.advantages(rewards, groups, cfg.adv_mode, cfg.adv_scope, cfg.adv_clip)[lo:hi].to(ad.device)
        spread = sde.group_reward_spread(rewards, groups)
        n_flat = int((spread < 1e-8).sum())
        if n_flat:
            log.warning("step %d: rewards do not vary within %d of %d prompt groups (no learning signal there)",
                        self.step_count, n_flat, len(spread))
        m = (self._update_grpo(traj, cond, adv, old_layout) if cfg.algorithm == "grpo"
             else self._update_awm(traj, cond, adv, rows, old_layout))
        if self.world > 1:  # global means of the per-process losses (shards are equal-sized); ratio_dev stays local
            keys = [k for k in ("loss", "kl", "clip_frac", "layout_loss") if k in m]
            red = self.acc.reduce(torch.tensor([m[k] for k in keys], device=self.acc.device), reduction="mean")
            m.update({k: float(v) for k, v in zip(keys, red.cpu())})
        t3 = time.perf_counter()
        self.step_count += 1
        m.update(step=self.step_count, kind="train", reward_mean=float(rewards.mean()), reward_std=float(rewards.std()),
                 flat_groups=n_flat, time_sample=t1 - t0, time_reward=t2 - t1, time_train=t3 - t2, time_total=t3 - t0)
        self._record(m)
        return m

    def _layout_update(self, cond, old_layout, adv, stats: Dict) -> None:
        """The sampled layouts' clipped-ratio loss (one action per image, before denoising): gradients reach only the
        layout encoder's LoRA, as the SDE steps were conditioned on the drawn layout, not on the encoder."""
        cfg = self.cfg
        logp = self.adapter.layout_log_prob(cond, cfg.layout_temperature)
        loss, ratio = sde.clipped_ratio_loss(logp, old_layout, adv, cfg.clip_range)
        loss.backward()
        stats["layout_loss"] = stats.get("layout_loss", 0.0) + float(loss.detach()) / cfg.inner_epochs
        stats["layout_ratio_dev"] = max(stats.get("layout_ratio_dev", 0.0), float((ratio.detach() - 1).abs().max()))

    def _update_grpo(self, traj: Trajectory, cond, adv, old_layout=None) -> Dict:
        cfg, ad = self.cfg, self.adapter
        sig = ad.sigmas(cfg.train_steps)
        n = len(traj.step_idx)
        stats = {"loss": 0.0, "kl": 0.0, "ratio_dev": 0.0, "clip_frac": 0.0}
        for _ in range(cfg.inner_epochs):
            self.opt.zero_grad(set_to_none=True)
            for j, i in enumerate(traj.step_idx):
                logp, mean, scale = self._logp(traj.xs[j], traj.x_nexts[j], i, sig, cond, cfg.train_cfg)
                loss, ratio = sde.clipped_ratio_loss(logp, traj.old_logps[j], adv, cfg.clip_range)
                if cfg.kl_beta > 0:
                    kl = sde.kl_gaussian_same_std(mean, self._ref_mean(traj.xs[j], i, sig, cond, cfg.train_cfg), scale)
                    loss = loss + cfg.kl_beta * kl.mean()
                    stats["kl"] += float(kl.detach().mean()) / n
                (loss / n).backward()
                stats["loss"] += float(loss.detach()) / n
                stats["ratio_dev"] = max(stats["ratio_dev"], float((ratio.detach() - 1).abs().max()))
                stats["clip_frac"] += float(((ratio.detach() - 1).abs() > cfg.clip_range).float().mean()) / n
            if old_layout is not None:
                self._layout_update(cond, old_layout, adv, stats)
            self._optim_step()
        return stats

    def _update_awm(self, traj: Trajectory, cond, adv, rows: Optional[tuple] = None, old_layout=None) -> Dict:
        cfg, ad = self.cfg, self.adapter
        g = _gen(cfg.seed, self.step_count, "awm")
        x0 = traj.x0.detach()
        lo, hi, n = rows or (0, x0.shape[0], x0.shape[0])  # noise drawn for the global batch, sliced
        # pushing the velocity away from worse-than-average samples has no bound; scaling those terms down keeps
        # the update near the pull toward better samples (awm_negative_weight = 0: reward-weighted regression)
        adv_layout = adv  # the layout's policy gradient takes the plain advantages
        adv = torch.where(adv < 0, adv * cfg.awm_negative_weight, adv)
        stats = {"loss": 0.0, "kl": 0.0}
        k = cfg.awm_timesteps
        m = n // cfg.group_size if cfg.awm_group_noise else n  # noise draws: one per group, or one per row
        s_lo, s_hi = cfg.awm_sigma_range
        for _ in range(cfg.inner_epochs):
            self.opt.zero_grad(set_to_none=True)
            for _ in range(k):
                sigma = torch.rand(m, generator=g).mul(s_hi - s_lo).add(s_lo)
                noise = torch.randn((m, *x0.shape[1:]), generator=g, dtype=torch.float32)
                if cfg.awm_group_noise:  # rows are grouped contiguously (_batch): repeat each group's draw
                    sigma, noise = (t.repeat_interleave(cfg.group_size, 0) for t in (sigma, noise))
                sigma, noise = sigma[lo:hi], noise[lo:hi].to(x0.device, x0.dtype)
                xt, target = noisy_sample(x0, noise, sigma.to(x0.device))
                v = ad.velocity(xt, sigma, cond, 1.0)
                v_ref = None
                if cfg.kl_beta > 0:
                    with self.base_model(), torch.no_grad():
                        v_ref = ad.velocity(xt, sigma, cond, 1.0)
                w = ad.fm_weight(sigma)
                loss, kl = awm_loss(v, target, adv, v_ref, cfg.kl_beta, weight=w)
                if self.ema is not None:
                    with self.ema_weights(), torch.no_grad():
                        v_ema = ad.velocity(xt, sigma, cond, 1.0)
                    ema_kl = velocity_distance(v, v_ema)
                    loss = loss + cfg.ema_kl_beta * (sample_weight(w, ema_kl) * ema_kl).mean()
                    stats["ema_kl"] = stats.get("ema_kl", 0.0) + float(ema_kl.detach().mean()) / k
                (loss / k).backward()
                stats["loss"] += float(loss.detach()) / k
                stats["kl"] += float(kl.detach().mean()) / k
            if old_layout is not None:
                self._layout_update(cond, old_layout, adv_layout, stats)
            self._optim_step()
        return stats

    def _optim_step(self):
        if self.world > 1:  # data parallel: every process steps with the mean of all processes' gradients
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = self.acc.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
            for p, g in zip(self.params, flat.split([q.numel() for q in self.params])):
                p.grad = g.view_as(p).clone()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - self.cfg.ema_decay)

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, save_grid: bool = True) -> Dict:
        """Held-out prompts, fixed seeds, ODE sampling: rewards, KL to the base, a sample grid PNG."""
        cfg, ad = self.cfg, self.adapter
        if not self.eval_prompts:
            return {}
        prompts = [p for p in self.eval_prompts for _ in range(cfg.eval_seeds)]
        seeds = [1000 + j for _ in self.eval_prompts for j in range(cfg.eval_seeds)]
        images: List = []
        kls = []
        bs = max(1, cfg.group_size * cfg.prompts_per_step)
        for s in range(0, len(prompts), bs):
            p, sd = prompts[s:s + bs], seeds[s:s + bs]
            cond = ad.encode(p, cfg.eval_cfg)
            x = ad.initial_noise(sd)
            sig = ad.sigmas(cfg.eval_steps)
            finite = float(sig[1]) if float(sig[0]) >= 1.0 else float(sig[0])
            kl = torch.zeros(len(p))
            for i in range(cfg.eval_steps):
                v = ad.velocity(x, sig[i], cond, cfg.eval_cfg)
                if cfg.noise_level > 0:
                    std = sde.sde_std(float(sig[i]), finite, cfg.noise_level)
                    scale = sde.step_scale(float(sig[i]), float(sig[i + 1]), std)
                    with self.base_model():
                        vr = ad.velocity(x, sig[i], cond, cfg.eval_cfg)
                    f = float(sig[i]), float(sig[i + 1])
                    kl += sde.kl_gaussian_same_std(sde.sde_mean(x, v, *f, std), sde.sde_mean(x, vr, *f, std), scale).cpu()
                x = euler_step(x, v, sig[i], sig[i + 1])
            images += ad.to_pil(ad.decode(x))
            kls.append(kl)
        m = {"step": self.step_count, "kind": "eval", "kl": float(torch.cat(kls).mean())}
        m["reward_mean"] = float(np.mean(self.reward_fn(images, prompts)))
        for name, fn in self.eval_rewards.items():
            m[f"{name}_mean"] = float(np.mean(fn(images, prompts)))
        if save_grid:
            m["grid"] = self._save_grid(images, len(self.eval_prompts), cfg.eval_seeds)
        self._record(m)
        self.last_eval_images = images
        return m

    def _save_grid(self, images, rows, cols) -> str:
        from PIL import Image
        w, h = images[0].size
        grid = Image.new("RGB", (cols * w, rows * h))
        for k, im in enumerate(images):
            grid.paste(im, ((k % cols) * w, (k // cols) * h))
        d = os.path.join(self.out, "samples")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"eval-step{self.step_count:06d}.png")
        grid.save(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)
        return path

    def _record(self, m: Dict):
        self.history.append(m)
        if not self.is_main:
            return
        with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")

    # ------------------------------------------------------------------------------------ main loop
    def iter_run(self, stop_event: Optional[threading.Event] = None, max_steps: Optional[int] = None) -> Iterator[Dict]:
        """Yield metrics after each step (and each evaluation) until max_steps or stop_event; always saves at the end.
        For UIs: run this in a background worker and set stop_event to stop cooperatively."""
        cfg = self.cfg
        total = cfg.max_steps if max_steps is None else max_steps
        try:
            evals = cfg.eval_every and self.eval_prompts and self.is_main  # evaluation: main process only
            if self.step_count == 0 and evals:
                yield self.evaluate()
            while self.step_count < total:
                if self._should_stop(stop_event):
                    break
                yield self.step()
                if evals and self.step_count % cfg.eval_every == 0:
                    yield self.evaluate()
                if cfg.checkpoint_every and self.step_count % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            self.save_checkpoint()

    def _should_stop(self, stop_event) -> bool:
        stop = stop_event is not None and stop_event.is_set()
        if self.world > 1:  # all processes stop at the same step (a Ctrl-C reaches them at different moments)
            stop = bool(self.acc.reduce(torch.tensor([float(stop)], device=self.acc.device), reduction="max").item())
        return stop

    def check_ranks_in_sync(self) -> List[str]:
        """Data parallel: SHA-256 of the LoRA weights on every process (gathered); raises if they differ.
        Returns the per-process digests (one in a single process)."""
        import hashlib
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
        if self.world == 1:
            return [digest]
        local = torch.tensor([int(digest[i:i + 15], 16) for i in range(0, 60, 15)], dtype=torch.int64,
                             device=self.acc.device)
        allv = self.acc.gather(local).cpu().view(self.world, -1)
        digests = ["".join(f"{int(v):015x}" for v in row) for row in allv]
        if len(set(digests)) != 1:
            raise RuntimeError(f"LoRA weights differ across the {self.world} processes at step {self.step_count} "
                               f"(digest prefixes {[d[:12] for d in digests]}): the data-parallel run is out of sync")
        return digests

    def run(self, stop_event=None, callback: Optional[Callable[[Dict], None]] = None, max_steps=None) -> List[Dict]:
        out = []
        for m in self.iter_run(stop_event, max_steps):
            out.append(m)
            if callback:
                callback(m)
        return out

    # ----------------------------------------------------------------------------------- checkpoints
    def _ckpt_root(self):
        return os.path.join(self.out, "checkpoints")

    def latest_checkpoint(self) -> Optional[str]:
        p = os.path.join(self._ckpt_root(), "latest")
        if not os.path.isfile(p):
            return None
        with open(p, encoding="utf-8") as f:
            d = os.path.join(self._ckpt_root(), f.read().strip())
        return d if os.path.isdir(d) else None

    def save_checkpoint(self) -> str:
        """Write to a temp folder, then rename: a killed process leaves either the old or the new checkpoint."""
        from safetensors.torch import save_file
        from .export import peft_lora_state
        root = self._ckpt_root()
        name = f"step-{self.step_count:06d}"
        final = os.path.join(root, name)
        digests = self.check_ranks_in_sync() if self.world > 1 else None
        if not self.is_main:  # data parallel: the main process writes, the others hold identical weights
            return final
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(final) and os.path.isfile(os.path.join(final, "state.pt")):
            self._write_latest(name)
            return final
        tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for prefix, module in self.lora_modules.items():
            save_file({k: v.contiguous() for k, v in peft_lora_state(module).items()},
                      os.path.join(tmp, self._lora_file(prefix)))
        np_state = np.random.get_state()
        torch.save({"step": self.step_count, "optimizer": self.opt.state_dict(), "history": self.history,
                    "ema": self.ema,
                    "rng": {"torch": torch.get_rng_state(), "python": list(map(lambda x: list(x) if isinstance(x, tuple) else x, random.getstate())),
                            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}},
                   os.path.join(tmp, "state.pt"))
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.cfg.to_dict(), f, indent=1)
        if digests:
            with open(os.path.join(tmp, "processes.json"), "w", encoding="utf-8") as f:
                json.dump({"num_processes": self.world, "lora_sha256_per_process": digests}, f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self._write_latest(name)
        ckpts = sorted(d for d in os.listdir(root) if d.startswith("step-"))
        for old in ckpts[:-self.cfg.keep_last]:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        return final

    def _lora_file(self, prefix: str) -> str:
        from .export import checkpoint_lora_file
        return checkpoint_lora_file(prefix, self.adapter.lora_prefix)

    def _write_latest(self, name):
        p = os.path.join(self._ckpt_root(), "latest")
        with open(p + ".tmp", "w", encoding="utf-8") as f:
            f.write(name)
        os.replace(p + ".tmp", p)

    def load_checkpoint(self, path: str) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file
        for prefix, module in self.lora_modules.items():
            name = self._lora_file(prefix)
            if not os.path.isfile(os.path.join(path, name)):
                raise ValueError(f"checkpoint {path} has no {name}: it was trained without a LoRA on {prefix} "
                                 f"(lora_extra differs from this session's {self.cfg.lora_extra})")
            res = set_peft_model_state_dict(module, load_file(os.path.join(path, name)))
            if getattr(res, "unexpected_keys", None):
                raise ValueError(f"checkpoint LoRA does not fit this model: unexpected keys {res.unexpected_keys[:3]}")
        st = torch.load(os.path.join(path, "state.pt"), weights_only=True)
        self.opt.load_state_dict(st["optimizer"])
        if self.ema is not None:
            if st.get("ema") is None:
                raise ValueError(f"checkpoint {path} holds no moving average of the LoRA weights: it was trained "
                                 "with ema_kl_beta = 0")
            for e, saved in zip(self.ema, st["ema"]):
                e.copy_(saved)
        self.step_count = int(st["step"])
        self.history = list(st["history"])
        torch.set_rng_state(st["rng"]["torch"])
        py = st["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = st["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
        log.info("resumed from %s at step %d", path, self.step_count)

    def export_lora(self, path: str, dtype=None) -> str:
        from .export import export_lora_modules
        return export_lora_modules(self.lora_modules, path, self.cfg.lora_rank, self.cfg.lora_alpha, dtype,
                                   {"adapter": self.cfg.adapter, "base": self.cfg.pipeline, "step": self.step_count})
