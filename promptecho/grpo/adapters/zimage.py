"""Z-Image (diffusers ZImagePipeline: Qwen3 text encoder, single-stream S3-DiT, Flux VAE) -- the paper's model.

Conventions the trainer relies on, and how Z-Image differs:
- the transformer predicts the negated flow velocity at time `1 - sigma`; the pipeline flips both, and so does
  `velocity()`, which returns `d x / d sigma` like every other adapter (Euler: x += (sigma_next - sigma) v);
- Z-Image's `guidance_scale` g applies CFG as `v = vc + g (vc - vu)` (g = 0: off). The trainer's CFG scale is
  the usual `v = vu + w (vc - vu)` (w <= 1: off), i.e. w = 1 + g; `pipeline_images(cfg=w)` calls the pipeline with
  `guidance_scale = w - 1`, and `velocity()` uses the pipeline's own formula, so both agree bit for bit;
- prompt embeddings have one length per prompt (padding dropped); the condition keeps them padded in one tensor
  plus their lengths and cuts them back before each transformer call.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from .base import Cond, FlowAdapter


class ZImageAdapter(FlowAdapter):
    name = "zimage"
    label = "Z-Image"
    default_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipe, device="cpu", dtype=torch.float32, resolution: int = 0):
        from diffusers import ZImagePipeline
        self.check_pipeline(pipe, ZImagePipeline)
        super().__init__(pipe, device, dtype)
        self.set_resolution(resolution or 1024, pipe.vae_scale_factor * 2)  # 1024: the pipeline's own default size

    # ---------------------------------------------------------------------------------------- text
    @staticmethod
    def _pad(embeds: List[torch.Tensor]):
        lens = torch.tensor([e.shape[0] for e in embeds])
        out = embeds[0].new_zeros(len(embeds), int(lens.max()), embeds[0].shape[-1])
        for i, e in enumerate(embeds):
            out[i, :e.shape[0]] = e
        return out, lens

    @staticmethod
    def _unpad(embeds: torch.Tensor, lens: torch.Tensor) -> List[torch.Tensor]:
        return [embeds[i, :int(n)] for i, n in enumerate(lens)]

    def encode(self, prompts: List[str], cfg: float) -> Cond:
        with torch.no_grad():
            pe, npe = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                              do_classifier_free_guidance=cfg > 1.0)
        emb, lens = self._pad(pe)
        cond = {"embeds": emb, "lens": lens}
        if cfg > 1.0:
            cond["neg_embeds"], cond["neg_lens"] = self._pad(npe)
        return cond

    # -------------------------------------------------------------------------------------- latents
    def _latent_hw(self):
        s = self.pipe.vae_scale_factor * 2
        return 2 * (self.height // s), 2 * (self.width // s)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        h, w = self._latent_hw()
        return self.pipe.prepare_latents(len(seeds), self.pipe.transformer.in_channels, self.height, self.width,
                                         torch.float32, self.device, self.generators(seeds))

    def sigmas(self, steps: int) -> torch.Tensor:
        from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas
        h, w = self._latent_hw()
        c = self.pipe.scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        self.pipe.scheduler.set_timesteps(sigmas=get_default_z_image_sigmas(steps), device="cpu", mu=mu)
        return self.pipe.scheduler.sigmas.clone().float()

    # ------------------------------------------------------------------------------------- velocity
    def velocity(self, x, sigma, cond, cfg):
        tr = self.pipe.transformer
        n = self.pipe.scheduler.config.num_train_timesteps
        t = (torch.as_tensor(sigma).float() * n).to(self.device).expand(x.shape[0])
        t = (1000 - t) / 1000  # the pipeline's timestep convention (model time runs 0 -> 1 as noise -> image)
        caps = self._unpad(cond["embeds"], cond["lens"])
        xin = x.to(tr.dtype)
        if cfg > 1.0:
            xin = xin.repeat(2, 1, 1, 1)
            caps = caps + self._unpad(cond["neg_embeds"], cond["neg_lens"])
            t = t.repeat(2)
        out = tr(list(xin.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
        b = x.shape[0]
        if cfg > 1.0:
            g = cfg - 1.0
            pred = torch.stack([out[j].float() + g * (out[j].float() - out[b + j].float()) for j in range(b)])
        else:
            pred = torch.stack([o.float() for o in out])
        return -pred.squeeze(2)

    # ---------------------------------------------------------------------------------------- decode
    def decode(self, x):
        vae = self.pipe.vae
        lat = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        img = vae.decode(lat, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(img, output_type="pt").float()

    def pipeline_images(self, prompts, seeds, steps, cfg):
        out = self.pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=max(cfg - 1.0, 0.0),
                        height=self.height, width=self.width, generator=self.generators(seeds), output_type="pt")
        return out.images.float()
