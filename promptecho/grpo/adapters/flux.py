"""FLUX.1 (diffusers FluxPipeline: CLIP pooled + T5 text encoders, double/single-stream MMDiT, packed latents).

- FLUX.1-dev is guidance-distilled: the guidance value is an *input* of the transformer (guidance embedding), not
  a second forward pass. The adapter feeds `guidance` (default 3.5, the pipeline's default) to every velocity
  call -- sampling, log-prob recomputation and the AWM loss alike -- so training sees the model it samples from.
  Models without a guidance embedding (FLUX.1-schnell) ignore it.
- The trainer's CFG scale is the pipeline's `true_cfg_scale` (an extra unconditional pass with the empty negative
  prompt, `v = vu + w (vc - vu)`; w <= 1: off), computed with two transformer calls exactly like `__call__`.
- Latents are packed 2x2 into tokens `[B, (H/2)(W/2), 4C]`; the sigma schedule uses the resolution-dependent
  shift `mu` of the pipeline.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from .base import Cond, FlowAdapter


class FluxAdapter(FlowAdapter):
    name = "flux"
    label = "FLUX"
    default_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    def __init__(self, pipe, device="cpu", dtype=torch.float32, resolution: int = 0, guidance: float = 3.5):
        from diffusers import FluxPipeline
        self.check_pipeline(pipe, FluxPipeline)
        super().__init__(pipe, device, dtype)
        self.set_resolution(resolution or pipe.default_sample_size * pipe.vae_scale_factor, pipe.vae_scale_factor * 2)
        self.guidance = float(guidance)
        self.guidance_embeds = bool(pipe.transformer.config.guidance_embeds)

    def encode(self, prompts: List[str], cfg: float) -> Cond:
        with torch.no_grad():
            pe, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device)
            cond = {"embeds": pe, "pooled": pooled}
            if cfg > 1.0:
                npe, npooled, _ = self.pipe.encode_prompt(prompt=[""] * len(prompts), prompt_2=None, device=self.device)
                cond.update(neg_embeds=npe, neg_pooled=npooled)
        return cond

    def _latent_hw(self):
        s = self.pipe.vae_scale_factor * 2
        return 2 * (self.height // s), 2 * (self.width // s)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        lat, _ = self.pipe.prepare_latents(len(seeds), self.pipe.transformer.config.in_channels // 4, self.height,
                                           self.width, self.pipe.text_encoder_2.dtype, self.device,
                                           self.generators(seeds))
        return lat

    def sigmas(self, steps: int) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        h, w = self._latent_hw()
        c = self.pipe.scheduler.config
        sig = None if c.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = calculate_shift((h // 2) * (w // 2), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        if sig is None:
            self.pipe.scheduler.set_timesteps(steps, device="cpu", mu=mu)
        else:
            self.pipe.scheduler.set_timesteps(sigmas=sig, device="cpu", mu=mu)
        return self.pipe.scheduler.sigmas.clone().float()

    def velocity(self, x, sigma, cond, cfg):
        tr, b = self.pipe.transformer, x.shape[0]
        n = self.pipe.scheduler.config.num_train_timesteps
        t = (torch.as_tensor(sigma).float() * n).to(self.device).expand(b).to(x.dtype)
        h, w = self._latent_hw()
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, cond["embeds"].dtype)
        txt_ids = torch.zeros(cond["embeds"].shape[1], 3, device=self.device, dtype=cond["embeds"].dtype)
        guidance = (torch.full([1], self.guidance, device=self.device, dtype=torch.float32).expand(b)
                    if self.guidance_embeds else None)

        def run(emb, pooled):
            return tr(hidden_states=x, timestep=t / 1000, guidance=guidance, pooled_projections=pooled,
                      encoder_hidden_states=emb, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        v = run(cond["embeds"], cond["pooled"])
        if cfg > 1.0:
            vu = run(cond["neg_embeds"], cond["neg_pooled"])
            v = vu + cfg * (v - vu)
        return v

    def decode(self, x):
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(x, self.height, self.width, self.pipe.vae_scale_factor)
        lat = lat / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(lat.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img, output_type="pt").float()

    def pipeline_images(self, prompts, seeds, steps, cfg):
        kw = dict(true_cfg_scale=cfg, negative_prompt=[""] * len(prompts)) if cfg > 1.0 else {}
        out = self.pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=self.guidance,
                        height=self.height, width=self.width, generator=self.generators(seeds), output_type="pt", **kw)
        return out.images.float()
