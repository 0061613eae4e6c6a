"""Qwen-Image (diffusers QwenImagePipeline: Qwen2.5-VL text encoder, MMDiT, causal 3-D VAE, packed latents).

- CFG is the pipeline's `true_cfg_scale` with an empty negative prompt: `v = vu + w (vc - vu)`, then rescaled to
  the norm of the conditional prediction per token (as `__call__` does); w <= 1: off. Two transformer calls, as
  in the pipeline, because the conditional and negative prompts have different lengths.
- The text condition keeps the pipeline's padding mask when a batch has prompts of different lengths (no mask
  key when all tokens are valid: the pipeline then passes no mask either).
- The sigma schedule is the pipeline's: linear sigmas, resolution-dependent shift `mu`, the scheduler's own
  terminal stretch.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from .base import AdapterError, Cond, FlowAdapter


class QwenImageAdapter(FlowAdapter):
    name = "qwenimage"
    label = "Qwen-Image"
    default_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

    def __init__(self, pipe, device="cpu", dtype=torch.float32, resolution: int = 0):
        from diffusers import QwenImagePipeline
        self.check_pipeline(pipe, QwenImagePipeline)
        super().__init__(pipe, device, dtype)
        self.set_resolution(resolution or pipe.default_sample_size * pipe.vae_scale_factor, pipe.vae_scale_factor * 2)
        if pipe.transformer.config.guidance_embeds:
            raise AdapterError("guidance-distilled Qwen-Image transformers (guidance_embeds=True) are not supported")

    def _encode(self, prompts):
        pe, mask = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, max_sequence_length=512)
        return pe, mask

    def encode(self, prompts: List[str], cfg: float) -> Cond:
        with torch.no_grad():
            pe, mask = self._encode(prompts)
            cond = {"embeds": pe}
            if mask is not None:
                cond["mask"] = mask
            if cfg > 1.0:
                npe, nmask = self._encode([""] * len(prompts))
                cond["neg_embeds"] = npe
                if nmask is not None:
                    cond["neg_mask"] = nmask
        return cond

    def _latent_hw(self):
        s = self.pipe.vae_scale_factor * 2
        return 2 * (self.height // s), 2 * (self.width // s)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        return self.pipe.prepare_latents(len(seeds), self.pipe.transformer.config.in_channels // 4, self.height,
                                         self.width, self.pipe.text_encoder.dtype, self.device, self.generators(seeds))

    def sigmas(self, steps: int) -> torch.Tensor:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
        h, w = self._latent_hw()
        c = self.pipe.scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        self.pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu", mu=mu)
        return self.pipe.scheduler.sigmas.clone().float()

    def velocity(self, x, sigma, cond, cfg):
        tr, b = self.pipe.transformer, x.shape[0]
        n = self.pipe.scheduler.config.num_train_timesteps
        t = (torch.as_tensor(sigma).float() * n).to(self.device).expand(b).to(x.dtype)
        s = self.pipe.vae_scale_factor
        img_shapes = [[(1, self.height // s // 2, self.width // s // 2)]] * b

        def run(emb, mask):
            return tr(hidden_states=x, timestep=t / 1000, guidance=None, encoder_hidden_states_mask=mask,
                      encoder_hidden_states=emb, img_shapes=img_shapes, return_dict=False)[0]
        v = run(cond["embeds"], cond.get("mask"))
        if cfg > 1.0:
            vu = run(cond["neg_embeds"], cond.get("neg_mask"))
            comb = vu + cfg * (v - vu)
            v = comb * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return v

    def decode(self, x):
        vae = self.pipe.vae
        lat = self.pipe._unpack_latents(x, self.height, self.width, self.pipe.vae_scale_factor).to(vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(lat.device, lat.dtype)
        img = vae.decode(lat / inv_std + mean, return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(img, output_type="pt").float()

    def pipeline_images(self, prompts, seeds, steps, cfg):
        kw = dict(true_cfg_scale=cfg, negative_prompt=[""] * len(prompts)) if cfg > 1.0 else dict(true_cfg_scale=1.0)
        out = self.pipe(prompt=list(prompts), num_inference_steps=steps, height=self.height, width=self.width,
                        generator=self.generators(seeds), output_type="pt", **kw)
        return out.images.float()
