"""ShapesWorld generator (promptecho.shapes.generator.ShapesWorldPipeline: pixel-space MMDiT, no VAE)."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

from ...shapes.generator import GRID, LAYOUT_HEADS, LAYOUT_LORA_TARGETS, LOSS_SIGMA_FLOOR, layout_log_prob, sample_layout
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

    # ----------------------------------------------------------------------------- sampled layouts
    @property
    def samples_layout(self) -> bool:
        """Layout sampling (config layout_sampling) needs a generator with a layout encoder."""
        return getattr(self.pipe, "layout_encoder", None) is not None

    def layout_uniforms(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand((n, GRID * GRID, len(LAYOUT_HEADS)), generator=generator)

    @torch.no_grad()
    def sample_layout(self, cond: Cond, uniforms: torch.Tensor, temperature: float):
        """Draw one layout per row from the layout encoder (its LoRA on); the transformer is then given that layout
        (cond["layout_logits"]) instead of the encoder's soft one. Returns (cond, log-prob [B] of the draws)."""
        logits = self.pipe.layout_encoder(cond["embeds"])
        idx, fed = sample_layout(logits, uniforms.to(logits.device), temperature)
        cond = {**cond, "layout_idx": idx, "layout_logits": fed}
        return cond, layout_log_prob(logits, idx, temperature)

    def layout_log_prob(self, cond: Cond, temperature: float) -> torch.Tensor:
        """log-prob [B] of cond's sampled layouts under the current layout encoder (with grad, for the update)."""
        return layout_log_prob(self.pipe.layout_encoder(cond["embeds"]), cond["layout_idx"], temperature)

    def velocity(self, x, sigma, cond, cfg):
        layout = cond.get("layout_logits")
        if cfg > 1.0:
            if layout is not None:  # the unconditional branch keeps the encoder's layout of the empty prompt
                with torch.no_grad():
                    layout = torch.cat([self.pipe.layout_encoder(cond["neg_embeds"]), layout])
            v = self.pipe.velocity(torch.cat([x, x]), sigma, torch.cat([cond["neg_embeds"], cond["embeds"]]),
                                   torch.cat([cond["neg_pooled"], cond["pooled"]]), layout)
            vu, vc = v.chunk(2)
            return vu + cfg * (vc - vu)
        return self.pipe.velocity(x, sigma, cond["embeds"], cond["pooled"], layout)

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
