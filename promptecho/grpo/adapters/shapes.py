"""ShapesWorld generator (promptecho.shapes.generator.ShapesWorldPipeline: pixel-space MMDiT, no VAE)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

from ...shapes.generator import LAYOUT_LORA_TARGETS, LOSS_SIGMA_FLOOR
from .base import AdapterError, Cond, FlowAdapter


class ShapesWorldAdapter(FlowAdapter):
    name = "shapesworld"
    label = "ShapesWorld"
    default_targets = ("to_q", "to_k", "to_v", "to_out.0")
    # the layout encoder decides what goes in which cell (most of the generator's oracle errors are made there)
    extra_lora_targets = {"layout_encoder": LAYOUT_LORA_TARGETS}

    def __init__(self, pipe, device="cpu", dtype=torch.float32, resolution: int = 0):
        if not all(hasattr(pipe, a) for a in ("encode_prompt", "velocity", "initial_noise", "decode")):
            raise AdapterError(f"ShapesWorld adapter needs a ShapesWorldPipeline, got {type(pipe).__name__}")
        super().__init__(pipe, device, dtype)

    def encode(self, prompts: List[str], cfg: float) -> Cond:
        embeds, pooled = self.pipe.encode_prompt(prompts, device=self.device)
        cond = {"embeds": embeds, "pooled": pooled}
        if cfg > 1.0:  # same padding as the pipeline's __call__ so the self-check is exact
            ne, npool = self.pipe.encode_prompt([""] * len(prompts), device=self.device)
            w = max(embeds.shape[1], ne.shape[1])
            cond = {"embeds": F.pad(embeds, (0, 0, 0, w - embeds.shape[1])), "pooled": pooled,
                    "neg_embeds": F.pad(ne, (0, 0, 0, w - ne.shape[1])), "neg_pooled": npool}
        return cond

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return self.pipe.initial_noise(len(seeds), self.generators(seeds), device=self.device, dtype=self.dtype)

    def sigmas(self, steps: int) -> torch.Tensor:
        return self.pipe.sigmas(steps)

    def velocity(self, x, sigma, cond, cfg):
        if cfg > 1.0:
            v = self.pipe.velocity(torch.cat([x, x]), sigma, torch.cat([cond["neg_embeds"], cond["embeds"]]),
                                   torch.cat([cond["neg_pooled"], cond["pooled"]]))
            vu, vc = v.chunk(2)
            return vu + cfg * (vc - vu)
        return self.pipe.velocity(x, sigma, cond["embeds"], cond["pooled"])

    def fm_weight(self, sigma):
        """The generator predicts x0 and was trained on ||x0_hat - x0||^2 / max(sigma, floor)^2; the velocity error is
        ||x0_hat - x0||^2 / sigma^2, so this weight (sigma / max(sigma, floor))^2 gives its training loss. Unweighted,
        the low-noise samples' 1/sigma^2 (up to 10^4) swamp the gradient with detail and AWM moved nothing
        (measured: reward flat over 370 steps)."""
        s = sigma.float()
        return (s / s.clamp(min=LOSS_SIGMA_FLOOR)) ** 2

    def decode(self, x):
        return self.pipe.decode(x)

    def pipeline_images(self, prompts, seeds, steps, cfg):
        return self.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=cfg,
                         generator=self.generators(seeds), output_type="pt").images.float()
