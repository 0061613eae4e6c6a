"""ShapesWorld text-to-image generator: a pixel-space flow-matching pipeline built from diffusers parts.

Components (saved/loaded by diffusers' own machinery; all but the layout encoder are library classes):
  transformer: diffusers `SD3Transformer2DModel` (MMDiT) acting directly on RGB pixels, 48x48, patch 16: one token
    per 16 px grid cell, so every object lies inside one token. With patch 8 the cell centres (8, 24, 40 px) are
    patch corners and objects came out broken into quarter-patches; a 4 px canvas border (`pad`) that moves them
    inside 8 px patches measured worse (atom share 0.16 vs 0.20, 2500 steps), so the default border is 0.
  text_encoder: transformers `T5EncoderModel` (tiny), tokenizer: word-level `PreTrainedTokenizerFast`
  layout_encoder: `ShapesLayoutEncoder` (this module; optional): predicts each grid cell's content from the prompt's
    token states; its probabilities are 15 extra input channels of the transformer (see the class docstring)
  scheduler: diffusers `FlowMatchEulerDiscreteScheduler`
There is no VAE: at 48 px a pixel-space model is cheaper than training an autoencoder on 2 CPU cores.

Adapter-facing API (what a trainer such as GRPO relies on):
  pipe.encode_prompt(prompts) -> (embeds [B,L,D], pooled [B,D])          # "" is the unconditional prompt
  pipe.velocity(x, sigma, embeds, pooled) -> v                           # x in [-1,1], sigma in [0,1] per sample
  pipe.predict_x0(x, sigma, embeds, pooled) -> x0 (what the transformer outputs; v = (x - x0) / sigma)
  pipe.initial_noise(batch, generator) -> x_1 ~ N(0, I) [B,3,C,C] on the canvas (C = transformer sample_size)
  pipe.sigmas(num_inference_steps) -> tensor [N+1] from 1 to 0 (the scheduler's schedule)
  pipe.decode(x) -> images in [0,1] [B,3,48,48] (border cropped); pipe.to_output(x01, output_type)
  Flow convention: x_sigma = (1 - sigma) * x_0 + sigma * noise, v = noise - x_0, x_next = x + (sigma_next - sigma) v.
  LoRA targets: the transformer's attention projections to_q, to_k, to_v, to_out.0 (and add_*_proj); optionally the
    layout encoder's linear layers (LAYOUT_LORA_TARGETS). `pipe.load_lora_weights(file)` loads both parts of a file.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from PIL import Image

from .render import IMAGE_SIZE
from .world import COLORS, GRID, NUMBERS, REGIONS, SHAPES, SIZES

PATCH = 16  # 3x3 image tokens, one per grid cell (patch 8 fragments objects: see the module docstring)
PAD = 0  # canvas border (px) around the 48 px scene (4 was tried: worse, see the module docstring)
MAX_TEXT_TOKENS = 128
DEFAULT_STEPS = 12  # sampling defaults used by eval, best-of-N and GRPO evaluation
DEFAULT_GUIDANCE = 2.5
LOSS_SIGMA_FLOOR = 0.3  # training divides the x0 error by max(sigma, this)^2 (train_generator --loss-sigma-floor)
SIGMA_FLOOR = 1e-3  # velocity = (x - x0) / sigma is evaluated at sigma >= this (the schedule's last nonzero sigma)


# layout heads per grid cell: occupied?, colour, shape, size (logit slices of ShapesLayoutEncoder's output)
LAYOUT_HEADS = (("occupied", 2), ("colour", len(COLORS)), ("shape", len(SHAPES)), ("size", len(SIZES)))
LAYOUT_LOGITS = sum(n for _, n in LAYOUT_HEADS)
LAYOUT_CHANNELS = 1 + LAYOUT_LOGITS - 2  # P(occupied) and the colour/shape/size distributions
# LoRA on the layout encoder (a PEFT regex over module names): its nn.Linear layers. The attention input projection
# is a plain parameter (torch's MultiheadAttention layout), which PEFT cannot wrap.
LAYOUT_LORA_TARGETS = r"(.*\.)?(out_proj|mlps\.\d+\.[02]|head)"


def split_heads(logits: torch.Tensor) -> List[torch.Tensor]:
    """[..., 16] layout logits -> one tensor per head of LAYOUT_HEADS (occupied, colour, shape, size)."""
    return list(logits.split([n for _, n in LAYOUT_HEADS], dim=-1))


class _Attention(torch.nn.Module):
    """Multi-head attention written out (parameter names as torch.nn.MultiheadAttention's). torch's module takes a
    fused fast path when autograd is off and the plain path when it is on, which differ in the last bits; GRPO's
    "KL is exactly 0 at initialisation" self-check compares a no-grad reference with a grad-enabled policy."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = torch.nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = torch.nn.Parameter(torch.zeros(3 * width))
        self.out_proj = torch.nn.Linear(width, width)
        torch.nn.init.xavier_uniform_(self.in_proj_weight)
        torch.nn.init.zeros_(self.out_proj.bias)

    def forward(self, q, kv, key_padding_mask=None):
        w, b = self.in_proj_weight.chunk(3), self.in_proj_bias.chunk(3)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B,H,L,d]
        qh = split(torch.nn.functional.linear(q, w[0], b[0]))
        kh, vh = (split(torch.nn.functional.linear(kv, w[i], b[i])) for i in (1, 2))
        scores = qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        out = (scores.softmax(-1) @ vh).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class ShapesLayoutEncoder(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Reads the prompt's token states with one learned query per 3x3 grid cell and predicts that cell's content.

    Why it exists: an MMDiT trained on the flow loss alone had to discover, through joint attention, which words
    place an object in which cell, and on 2 CPU cores it never did (position atoms 4.5 %; README). Here the routing
    is learned directly, with a cross-entropy on each cell's content (train_generator, stage 1), and the predicted
    distributions are painted onto their cells as extra input channels of the transformer (`layout_map`), so the
    transformer only has to draw what its own cell's channels say; the prompt still reaches it through joint
    attention (counts, unplaced duplicates). Layers: a causal convolution over the token states (local binding,
    see __init__), then per layer cross-attention from the cell queries to the prompt, self-attention among the
    cells (so cells can share out an unplaced "two red circles") and an MLP. Measured in a stage-1 probe: without
    the convolution, a 2- or 4-layer T5 plus cell queries still picked a placed object's colour at chance among
    the caption's colours after 500 steps; with it, 99 % after 200 steps.
    """

    @register_to_config
    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, grid: int = GRID, window: int = 8):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(grid * grid, width) * 0.02)
        # each token also sees the `window` - 1 tokens before it, so "...red circle is in the top left" puts the
        # subject into the region words' keys and values: binding a cell to its object becomes one lookup
        self.local = torch.nn.Conv1d(width, width, window) if window > 1 else None
        self.text_norm = torch.nn.LayerNorm(width)
        mha = lambda: _Attention(width, heads)  # noqa: E731
        self.cross = torch.nn.ModuleList(mha() for _ in range(layers))
        self.self_attn = torch.nn.ModuleList(mha() for _ in range(layers))
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in range(3 * layers))
        self.mlps = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(),
                                                            torch.nn.Linear(2 * width, width)) for _ in range(layers))
        self.head = torch.nn.Linear(width, LAYOUT_LOGITS)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Prompt states [B,L,D] (padding rows all zero, as encode_prompt returns them) -> cell logits [B,9,16]."""
        pad = embeds.abs().amax(-1) == 0
        pad[:, 0] &= ~pad.all(1)  # a fully padded row would make attention NaN; let it read one zero state
        h = embeds.to(self.queries.dtype)  # the module's dtype (a pipeline loaded in half precision)
        if self.local is not None:  # causal window: left padding only, so padding never reaches a real token
            w = self.config.window
            h = h + self.local(torch.nn.functional.pad(h.transpose(1, 2), (w - 1, 0))).transpose(1, 2)
        kv = self.text_norm(h)
        x = self.queries.expand(embeds.shape[0], -1, -1)
        for i, (cross, self_attn, mlp) in enumerate(zip(self.cross, self.self_attn, self.mlps)):
            n1, n2, n3 = self.norms[3 * i:3 * i + 3]
            x = x + cross(n1(x), kv, key_padding_mask=pad)
            h = n2(x)
            x = x + self_attn(h, h)
            x = x + mlp(n3(x))
        return self.head(x)

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """[B,9,16] logits -> [B,9,15]: P(occupied), then the colour, shape and size distributions."""
        parts = [h.float().softmax(-1) for h in split_heads(logits)]
        return torch.cat([parts[0][..., 1:], *parts[1:]], -1)

    def layout_map(self, embeds: torch.Tensor, canvas: int, scene: int = IMAGE_SIZE) -> torch.Tensor:
        """Cell probabilities painted onto their cells, scaled to [-1, 1]: [B,15,canvas,canvas] (0 on the border)."""
        return self.layout_map_from_logits(self.forward(embeds), canvas, scene)

    def layout_map_from_logits(self, logits: torch.Tensor, canvas: int, scene: int = IMAGE_SIZE) -> torch.Tensor:
        g = self.config.grid
        p = self.probabilities(logits) * 2 - 1  # [B,9,15]
        cells = p.transpose(1, 2).reshape(p.shape[0], p.shape[2], g, g)
        m = torch.nn.functional.interpolate(cells, size=(scene, scene), mode="nearest")
        pad = (canvas - scene) // 2
        return torch.nn.functional.pad(m, (pad, pad, pad, pad)) if pad else m


def layout_targets(scene) -> torch.Tensor:
    """Per-cell class indices [9, 4] (occupied, colour, shape, size) of a scene; -100 (ignored) for empty cells."""
    t = torch.full((GRID * GRID, len(LAYOUT_HEADS)), -100, dtype=torch.long)
    t[:, 0] = 0
    for o in scene.objects:
        t[o.row * GRID + o.col] = torch.tensor([1, list(COLORS).index(o.color), SHAPES.index(o.shape),
                                                SIZES.index(o.size)])
    return t


def layout_scene(logits: torch.Tensor):
    """The arg-max scene of one prompt's layout logits [9, 16]: an object in every cell whose P(occupied) > 0.5,
    with its most likely colour, shape and size (centred). Rendered and judged by the oracle it separates the
    layout encoder's errors from the transformer's (`python -m promptecho.shapes.eval --only layout`)."""
    from .world import Obj, Scene
    occ, col, shp, siz = split_heads(logits.float())
    objs = [Obj(list(COLORS)[int(col[c].argmax())], SHAPES[int(shp[c].argmax())], SIZES[int(siz[c].argmax())],
                c // GRID, c % GRID) for c in range(occ.shape[0]) if float(occ[c].softmax(-1)[1]) > 0.5]
    return Scene(objs)


def sample_layout(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0):
    """One discrete layout per prompt drawn from the layout encoder's per-cell distributions (softmax of
    logits / temperature), by inverse CDF of `uniforms` [B,9,4] in [0,1) (one per head, so a draw is reproducible
    and sliceable by row). Returns class indices [B,9,4] (occupied, colour, shape, size) and the logits the
    transformer is given for it: the encoder's own, with every head of an occupied cell, and the occupancy head of
    an empty one, replaced by a one-hot choice (colour/shape/size of an empty cell stay the encoder's: unused)."""
    idx, fed = [], []
    occupied = None
    for k, h in enumerate(split_heads(logits.float())):
        cdf = (h / temperature).softmax(-1).cumsum(-1)
        i = (cdf < uniforms[..., k:k + 1].to(cdf)).sum(-1).clamp(max=h.shape[-1] - 1)
        one_hot = torch.nn.functional.one_hot(i, h.shape[-1]).bool()
        hard = torch.where(one_hot, torch.zeros_like(h), torch.full_like(h, -1e4))  # softmax: exactly one-hot
        if k == 0:
            occupied = i == 1
            fed.append(hard)
        else:
            fed.append(torch.where(occupied[..., None], hard, h))
        idx.append(i)
    return torch.stack(idx, -1), torch.cat(fed, -1).to(logits.dtype)


def layout_log_prob(logits: torch.Tensor, idx: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-probability [B] of the layouts `idx` [B,9,4] under the tempered per-cell distributions: every cell's
    occupancy, and colour, shape and size of the occupied cells."""
    heads = split_heads(logits.float())
    occupied = (idx[..., 0] == 1).float()
    total = 0
    for k, h in enumerate(heads):
        lp = torch.log_softmax(h / temperature, -1).gather(-1, idx[..., k:k + 1]).squeeze(-1)  # [B,9]
        total = total + (lp if k == 0 else lp * occupied).sum(-1)
    return total


def layout_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over the four heads of the mean cross-entropy (colour/shape/size only on occupied cells)."""
    return sum(torch.nn.functional.cross_entropy(h.reshape(-1, h.shape[-1]).float(), targets[..., k].reshape(-1),
                                                 ignore_index=-100) for k, h in enumerate(split_heads(logits)))


class ShapesWorldPipelineOutput(BaseOutput):
    images: Union[List[Image.Image], np.ndarray, torch.Tensor]


def caption_vocabulary() -> List[str]:
    words = set()
    for s in ("the image shows on a black background this picture contains drawn plain there is are "
              "simple scene with against dark in we can see sits corner of side appears at placed right "
              "center to left located above below and an top bottom one").split():
        words.add(s)
    words |= set(COLORS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(SIZES) | set(NUMBERS.values())
    for r in REGIONS.values():
        words |= set(r.split())
    return sorted(words) + [".", ","]


def build_tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in caption_vocabulary():
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_TEXT_TOKENS)


def build_components(seed: int = 0, width: int = 128, layers: int = 4, pad: int = PAD, patch: int = PATCH,
                     layout: bool = True, layout_layers: int = 2, text_layers: int = 2):
    """Fresh random-weight components (what train_generator starts from; tests use them too). `layout` adds the
    ShapesLayoutEncoder and its input channels to the transformer; without it the model is the earlier text-only
    MMDiT (still loadable)."""
    from transformers import T5Config, T5EncoderModel

    tok = build_tokenizer()
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=width, d_kv=width // 4, d_ff=2 * width,
                                           num_layers=text_layers, num_heads=4, relative_attention_num_buckets=16,
                                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                           dropout_rate=0.0))
    canvas = IMAGE_SIZE + 2 * pad
    if canvas % patch:
        raise ValueError(f"canvas {IMAGE_SIZE} + 2 * {pad} px is not a multiple of the patch size {patch}")
    transformer = SD3Transformer2DModel(
        sample_size=canvas, patch_size=patch, in_channels=3 + (LAYOUT_CHANNELS if layout else 0), out_channels=3,
        num_layers=layers,
        attention_head_dim=width // 4, num_attention_heads=4, joint_attention_dim=width,
        caption_projection_dim=width, pooled_projection_dim=width, pos_embed_max_size=canvas // patch)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    layout_encoder = ShapesLayoutEncoder(width=width, layers=layout_layers).eval() if layout else None
    return dict(transformer=transformer.eval(), text_encoder=text_encoder.eval(), tokenizer=tok, scheduler=scheduler,
                layout_encoder=layout_encoder)


class ShapesWorldPipeline(DiffusionPipeline):
    """Text-to-image for ShapesWorld captions; called like any diffusers pipeline."""

    model_cpu_offload_seq = "text_encoder->layout_encoder->transformer"
    _optional_components = ["layout_encoder"]

    def __init__(self, transformer, text_encoder, tokenizer, scheduler, layout_encoder=None):
        super().__init__()
        expected = 3 + (LAYOUT_CHANNELS if layout_encoder is not None else 0)
        if transformer.config.in_channels != expected:
            raise ValueError(f"transformer takes {transformer.config.in_channels} input channels; with"
                             f"{'' if layout_encoder is not None else 'out'} a layout encoder it must take {expected}")
        self.register_modules(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler, layout_encoder=layout_encoder)

    # ---------------------------------------------------------------------------------------- parts
    @torch.no_grad()
    def encode_prompt(self, prompts: Union[str, List[str]], device=None):
        """Token states and a masked-mean pooled vector per prompt. Runs without grad (the text encoder is frozen)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        device = device or self._execution_device
        enc = self.tokenizer(prompts, padding="longest", truncation=True, max_length=MAX_TEXT_TOKENS,
                             return_tensors="pt").to(device)
        h = self.text_encoder(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        m = enc.attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return h * m, pooled

    def predict_x0(self, x, sigma, embeds, pooled, layout_logits=None):
        """The transformer's output: the clean image x0 predicted at noise level sigma (tensor [B] or float).

        x-prediction, not v-prediction: a patch of 16x16x3 = 768 pixel values is wider than the 128-wide tokens, so
        the model cannot pass the input noise through, which v = noise - x0 would need (measured: v-prediction
        left the noise in every sample). The clean image lies on a low-dimensional set and fits.
        `layout_logits`: the layout encoder's output for `embeds` when the caller already has it (training).
        """
        if not torch.is_tensor(sigma):
            sigma = torch.full((x.shape[0],), float(sigma), device=x.device)
        sigma = sigma.to(x.device, torch.float32).reshape(-1).expand(x.shape[0])
        if self.layout_encoder is not None:  # the predicted cell contents as extra input channels
            if layout_logits is None:
                layout_logits = self.layout_encoder(embeds)
            x = torch.cat([x, self.layout_encoder.layout_map_from_logits(layout_logits, x.shape[-1]).to(x.dtype)], 1)
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=sigma * self.scheduler.config.num_train_timesteps, return_dict=False)[0]

    def velocity(self, x, sigma, embeds, pooled, layout_logits=None):
        """Flow velocity v = (x - x0_hat) / sigma (an estimate of noise - x0) at noise level sigma.
        `layout_logits`: the layout the transformer is given instead of the encoder's own (e.g. a sampled one)."""
        x0 = self.predict_x0(x, sigma, embeds, pooled, layout_logits)
        s = sigma if torch.is_tensor(sigma) else torch.tensor(float(sigma))
        s = s.to(x.device, torch.float32).reshape(-1, 1, 1, 1).clamp(min=SIGMA_FLOOR)
        return ((x.float() - x0.float()) / s).to(x0.dtype)

    @property
    def canvas(self) -> int:
        """Side (px) of what the transformer denoises: the scene plus its border (48 for border-less models)."""
        return int(self.transformer.config.sample_size)

    def pad_to_canvas(self, x0: torch.Tensor) -> torch.Tensor:
        """A [-1,1] scene [B,3,48,48] inside a black (-1) border: the training target on the canvas."""
        p = (self.canvas - x0.shape[-1]) // 2
        return torch.nn.functional.pad(x0, (p, p, p, p), value=-1.0) if p else x0

    def initial_noise(self, batch: int, generator=None, device=None, dtype=torch.float32):
        device = device or self._execution_device
        gens = generator if isinstance(generator, list) else [generator] * batch
        if len(gens) != batch:
            raise ValueError(f"got {len(gens)} generators for {batch} images")
        # one draw per image on CPU, so a seed gives the same image whatever the batch or device
        c = self.canvas
        return torch.stack([torch.randn((3, c, c), generator=g, dtype=torch.float32)
                            for g in gens]).to(device, dtype)

    def sigmas(self, num_inference_steps: int) -> torch.Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        return self.scheduler.sigmas.clone().float()

    @staticmethod
    def decode(x: torch.Tensor) -> torch.Tensor:
        """Canvas in [-1,1] -> the centred 48 px scene in [0,1] (the border is cropped off)."""
        p = (x.shape[-1] - IMAGE_SIZE) // 2
        if p:
            x = x[..., p:p + IMAGE_SIZE, p:p + IMAGE_SIZE]
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def load_lora_weights(self, path: str, adapter_name: Optional[str] = None) -> List[str]:
        """Load a diffusers-format LoRA file (promptecho export) into the components it has keys for:
        `transformer.*` and, when trained with one, `layout_encoder.*`. Returns the components loaded."""
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            prefixes = {k.split(".", 1)[0] for k in f.keys()}
        loadable = ("transformer", "layout_encoder")
        parts = [n for n in loadable if n in prefixes and getattr(self, n, None) is not None]
        unknown = prefixes - set(loadable)
        if unknown or not parts:
            raise ValueError(f"{path}: no LoRA keys for this pipeline's transformer or layout encoder "
                             f"(key prefixes found: {sorted(prefixes)})")
        for n in parts:
            getattr(self, n).load_lora_adapter(path, prefix=n, adapter_name=adapter_name)
        return parts

    @staticmethod
    def to_output(x01: torch.Tensor, output_type: str = "pil"):
        if output_type == "pt":
            return x01
        arr = x01.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return arr
        if output_type == "pil":
            return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")

    # ----------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: Union[str, List[str]], negative_prompt: Optional[Union[str, List[str]]] = None,
                 num_inference_steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE, num_images_per_prompt: int = 1,
                 generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
                 latents: Optional[torch.Tensor] = None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end=None):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        b = len(prompts)
        embeds, pooled = self.encode_prompt(prompts)
        cfg = guidance_scale > 1.0
        if cfg:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = [neg] * b if isinstance(neg, str) else [n for n in neg for _ in range(num_images_per_prompt)]
            n_embeds, n_pooled = self.encode_prompt(negs)
            width = max(embeds.shape[1], n_embeds.shape[1])
            pad = lambda e: torch.nn.functional.pad(e, (0, 0, 0, width - e.shape[1]))  # noqa: E731
            embeds, pooled = torch.cat([pad(n_embeds), pad(embeds)]), torch.cat([n_pooled, pooled])
        dtype = self.transformer.dtype  # a pipeline loaded or moved to half precision denoises in it
        x = (latents.to(self._execution_device, dtype) if latents is not None
             else self.initial_noise(b, generator, dtype=dtype))
        sig = self.sigmas(num_inference_steps)
        for i in range(num_inference_steps):
            xin = torch.cat([x, x]) if cfg else x
            v = self.velocity(xin, sig[i], embeds, pooled)
            if cfg:
                vu, vc = v.chunk(2)
                v = vu + guidance_scale * (vc - vu)
            x = x + (sig[i + 1] - sig[i]) * v
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, sig[i], {"latents": x})
        images = self.to_output(self.decode(x), output_type)
        if not return_dict:
            return (images,)
        return ShapesWorldPipelineOutput(images=images)


def load_generator(path: str, device: str = "cpu", dtype=torch.float32) -> ShapesWorldPipeline:
    """Load the pipeline offline from a local folder (no network, safetensors only)."""
    pipe = ShapesWorldPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True, dtype=dtype)
    return pipe.to(device)


# diffusers resolves model_index.json's "_class_name" inside its own namespace; registering the class there
# lets `DiffusionPipeline.from_pretrained(folder)` load the generator once this module is imported.
import diffusers as _diffusers  # noqa: E402

if not hasattr(_diffusers, "ShapesWorldPipeline"):
    setattr(_diffusers, "ShapesWorldPipeline", ShapesWorldPipeline)
