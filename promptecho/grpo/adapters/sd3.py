"""Stable Diffusion 3 / 3.5 (diffusers StableDiffusion3Pipeline, MMDiT, FlowMatchEulerDiscreteScheduler)."""
from __future__ import annotations

from typing import List, Sequence

import torch

from .base import Cond, FlowAdapter


class SD3Adapter(FlowAdapter):
    name = "sd3"
    label = "SD3"
    default_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipe, device="cpu", dtype=torch.float32, resolution: int = 0):
        from diffusers import StableDiffusion3Pipeline
        self.check_pipeline(pipe, StableDiffusion3Pipeline)
        super().__init__(pipe, device, dtype)
        self.set_resolution(resolution or pipe.default_sample_size * pipe.vae_scale_factor)

    def encode(self, prompts: List[str], cfg: float) -> Cond:
        with torch.no_grad():
            pe, npe, pooled, npooled = self.pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
                do_classifier_free_guidance=cfg > 1.0, negative_prompt=[""] * len(prompts) if cfg > 1.0 else None)
        cond = {"embeds": pe, "pooled": pooled}
        if cfg > 1.0:
            cond.update(neg_embeds=npe, neg_pooled=npooled)
        return cond

    def _latent_shape(self, n):
        s = self.pipe.vae_scale_factor
        return (n, self.pipe.transformer.config.in_channels, self.height // s, self.width // s)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor
        return randn_tensor(self._latent_shape(len(seeds)), generator=self.generators(seeds), device=self.device,
                            dtype=self.dtype)

    def velocity(self, x, sigma, cond, cfg):
        n = self.pipe.scheduler.config.num_train_timesteps
        t = (sigma.float() * n).to(self.device)
        if cfg > 1.0:
            xin = torch.cat([x, x])
            emb = torch.cat([cond["neg_embeds"], cond["embeds"]])
            pooled = torch.cat([cond["neg_pooled"], cond["pooled"]])
        else:
            xin, emb, pooled = x, cond["embeds"], cond["pooled"]
        v = self.pipe.transformer(hidden_states=xin, timestep=t.expand(xin.shape[0]), encoder_hidden_states=emb,
                                  pooled_projections=pooled, return_dict=False)[0]
        if cfg > 1.0:
            vu, vc = v.chunk(2)
            v = vu + cfg * (vc - vu)
        return v

    def decode(self, x):
        vae = self.pipe.vae
        lat = x / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(lat.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img, output_type="pt").float()

    def pipeline_images(self, prompts, seeds, steps, cfg):
        out = self.pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=cfg, height=self.height,
                        width=self.width, generator=self.generators(seeds), output_type="pt")
        return out.images.float()
