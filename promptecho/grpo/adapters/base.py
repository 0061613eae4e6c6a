"""One interface between the GRPO trainer and a diffusers flow-matching text-to-image pipeline.

An adapter exposes the pipeline's pieces so the trainer can run its own sampling loop (SDE steps, log-probs)
with exactly the pipeline's arithmetic, and check that against the pipeline's own __call__ (self-check).
"""
from __future__ import annotations

import contextlib

from typing import Any, Dict, List, Optional, Sequence

import torch


class AdapterError(ValueError):
    """The pipeline cannot be used by this adapter (wrong type, missing folder, unsupported option)."""


Cond = Dict[str, torch.Tensor]


class FlowAdapter:
    name = "base"
    label = "base"  # how the adapter's error messages name the model
    # module names PEFT targets by default, and the prefix of exported LoRA keys (diffusers format)
    default_targets: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0")
    lora_prefix = "transformer"
    # other pipeline components a LoRA may also adapt (config lora_extra): component name -> PEFT target_modules
    extra_lora_targets: Dict[str, Any] = {}
    # a discrete layout drawn per image before denoising, with its own log-prob (config layout_sampling); adapters
    # that have one implement layout_uniforms, sample_layout and layout_log_prob (see the ShapesWorld adapter)
    samples_layout = False

    def __init__(self, pipe, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.pipe = pipe
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    def lora_modules(self, targets: Sequence[str], extra: Sequence[str] = ()) -> Dict[str, tuple]:
        """{key prefix: (module, PEFT target_modules)} of everything the LoRA adapts: the transformer with
        `targets`, then each component named in `extra` with this adapter's targets for it."""
        mods = {self.lora_prefix: (self.transformer, list(targets))}
        for name in extra:
            module = getattr(self.pipe, name, None)
            if name not in self.extra_lora_targets or module is None:
                offer = ", ".join(n for n in self.extra_lora_targets if getattr(self.pipe, n, None) is not None)
                raise AdapterError(f"lora_extra: the {self.label} adapter cannot adapt {name!r} "
                                   f"(this pipeline offers: {offer or 'nothing besides the transformer'})")
            mods[name] = (module, self.extra_lora_targets[name])
        return mods

    @contextlib.contextmanager
    def base_model(self):
        """Every LoRA on the transformer and the extra components switched off inside the block (the frozen base
        model: KL reference, judging); switched back on afterwards."""
        parts = [self.transformer] + [getattr(self.pipe, n, None) for n in self.extra_lora_targets]
        adapted = [m for m in parts if hasattr(m, "peft_config")]
        for m in adapted:
            m.disable_adapters()
        try:
            yield
        finally:
            for m in adapted:
                m.enable_adapters()

    # ---- to implement ----
    def encode(self, prompts: List[str], cfg: float) -> Cond:
        raise NotImplementedError

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def sigmas(self, steps: int) -> torch.Tensor:
        """Float32 tensor [steps + 1] from ~1 to 0, exactly the scheduler's."""
        self.pipe.scheduler.set_timesteps(steps, device="cpu")
        return self.pipe.scheduler.sigmas.clone().float()

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, cfg: float) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images [B,3,H,W] in 0..1 (float32)."""
        raise NotImplementedError

    def pipeline_images(self, prompts: List[str], seeds: Sequence[int], steps: int, cfg: float) -> torch.Tensor:
        """The pipeline's own __call__ output [B,3,H,W] 0..1 for these prompts/seeds (self-check reference)."""
        raise NotImplementedError

    def fm_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the velocity loss at noise level sigma, as in the model's pre-training (AWM uses it).
        1 for velocity-trained models (SD3, FLUX, Z-Image, Qwen-Image: plain flow matching)."""
        return torch.ones_like(sigma, dtype=torch.float32)

    # ---- shared helpers ----
    @classmethod
    def check_pipeline(cls, pipe, pipeline_class: type):
        """Refuse a pipeline of another type; the message names the class wanted and the one given."""
        if not isinstance(pipe, pipeline_class):
            raise AdapterError(f"{cls.label} adapter needs a {pipeline_class.__name__}, got {type(pipe).__name__}")

    def set_resolution(self, size: int, multiple: int = 1):
        """Square images of `size` px; `size` must be a multiple of `multiple` (the pixels of one latent token)."""
        if size % multiple:
            raise AdapterError(f"{self.label} resolution must be a multiple of {multiple}, got {size}")
        self.height = self.width = size

    @staticmethod
    def generators(seeds: Sequence[int]) -> List[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

    @staticmethod
    def select(cond: Cond, idx) -> Cond:
        return {k: v[idx] for k, v in cond.items()}

    @staticmethod
    def to_pil(x01: torch.Tensor):
        from PIL import Image
        arr = (x01.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(a) for a in arr]
