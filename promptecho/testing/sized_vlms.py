"""Full-size VLM architectures with random weights, built in memory from a config (for GPU benchmarks).

`build_qwen3_vl_8b(device, dtype)` returns a `VLM` whose model has Qwen3-VL-8B's shapes (36 text layers,
hidden 4096, vocab 151936; 27-layer 1152-d vision tower, patch 16, merge 2) and the tiny project tokenizer
(its ids are a subset of the full vocabulary). Nothing is downloaded or written to disk.

    python -m promptecho.testing.sized_vlms --batch 16 --pairs 64     # timings on the current GPU
"""
from __future__ import annotations

import argparse
import json
import time


def qwen3_vl_8b_config(tokenizer):
    from transformers import Qwen3VLConfig

    ids = dict(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    return Qwen3VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=262144, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                          "mrope_interleaved": True},
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=4096,
                           num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
        tie_word_embeddings=False, **ids)


def build_qwen3_vl_8b(device="cuda", dtype="bf16", attn_implementation="sdpa", fast_images=False):
    import torch
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from ..vlm import VLM, _resolve_device, _resolve_dtype
    from .tiny_vlms import QWEN3VL_TEMPLATE, _qwen_tokenizer

    dev = _resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    tok = _qwen_tokenizer()
    cfg = qwen3_vl_8b_config(tok)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dt)
    with torch.no_grad():  # small random weights keep bf16 activations finite through 36 layers
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    model.eval().requires_grad_(False)
    if fast_images:  # torchvision backend, as AutoProcessor picks when torchvision is installed
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as IP
    else:
        IP = Qwen2VLImageProcessorPil
    ip = IP(size={"shortest_edge": 64 * 64, "longest_edge": 16384 * 32 * 32}, patch_size=16,
                                  temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = Qwen3VLProcessor(image_processor=ip, tokenizer=tok,
                            video_processor=Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2),
                            chat_template=QWEN3VL_TEMPLATE)
    return VLM(model, proc, name="qwen3-vl-8b-random")


def _prompt(rng, n_words=60):
    from .tiny_vlms import _LEXICON
    return " ".join(rng.choice(_LEXICON) for _ in range(n_words))


def main(argv=None):
    import random

    import numpy as np
    import torch
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--words", type=int, default=60, help="prompt length in words (~80 tokens for 60)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--fast-images", action="store_true", help="torchvision image processor")
    ap.add_argument("--images-on-device", action="store_true", help="image processing on the GPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile each text decoder layer (experiment)")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA ops of one bare forward")
    args = ap.parse_args(argv)

    t0 = time.time()
    vlm = build_qwen3_vl_8b(attn_implementation=args.attn, fast_images=args.fast_images)
    build_s = time.time() - t0
    vlm.images_on_device = args.images_on_device
    if args.compile:
        vlm.compile_layers()
    rng = random.Random(0)
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for i in range(args.pairs)]
    prompts = [_prompt(rng, args.words) for _ in range(args.pairs)]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    t = time.time()
    vlm.score(images[:args.batch], prompts[:args.batch], batch_size=args.batch)  # warm-up
    vlm.score(images[-args.batch:], prompts[-args.batch:], batch_size=args.batch)
    warm_s = time.time() - t
    sync()
    t = time.time()
    res = vlm.score(images, prompts, batch_size=args.batch)
    sync()
    score_s = time.time() - t

    # bare forward on the same padded batches (processor outside the timer), for the overhead ratio
    batches = []
    t = time.time()
    for b in range(0, args.pairs, args.batch):
        rows = [vlm._prepared_row(im, p) for im, p in zip(images[b:b + args.batch], prompts[b:b + args.batch])]
        enc = vlm._process(rows)
        batches.append({k: (v.to(vlm.device, vlm.dtype) if v.is_floating_point() else v.to(vlm.device))
                        for k, v in enc.items()})
    sync()
    prep_s = time.time() - t
    t = time.time()
    with torch.inference_mode():
        for enc in batches:
            vlm.model(**enc, logits_to_keep=1)
    sync()
    bare_s = time.time() - t
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, torch.inference_mode():
            vlm.model(**batches[0], logits_to_keep=1)
            sync()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    n_text = [r.n_tokens for r in res]
    seq = [int(e["attention_mask"].sum(1).float().mean()) for e in batches]
    n_params = sum(p.numel() for p in vlm.model.parameters())
    vis_params = sum(p.numel() for n, p in vlm.model.named_parameters() if ".visual." in n or n.startswith("visual"))
    patches = (args.size // 16) ** 2
    # 2 FLOP per parameter per token: language model over the sequence, vision tower over the patches
    flop_pair = 2 * (n_params - vis_params) * float(np.mean(seq)) + 2 * vis_params * patches
    out = dict(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               params_b=round(n_params / 1e9, 2), vision_params_b=round(vis_params / 1e9, 3), build_s=round(build_s, 1), warmup_s=round(warm_s, 1),
               pairs=args.pairs, batch=args.batch, image_px=args.size, prompt_tokens_mean=float(np.mean(n_text)),
               seq_len_mean=float(np.mean(seq)), score_s=round(score_s, 3), prepare_s=round(prep_s, 3), bare_forward_s=round(bare_s, 3),
               pairs_per_s=round(args.pairs / score_s, 2), score_over_bare=round(score_s / bare_s, 3),
               tflop_per_pair=round(flop_pair / 1e12, 2),
               mfu=round(flop_pair * args.pairs / score_s / (args.peak_tflops * 1e12), 3),
               peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2 ** 30, 1) if torch.cuda.is_available() else None,
               finite=all(r.loss == r.loss for r in res))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
