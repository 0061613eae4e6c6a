"""(d) GPU: PromptEcho scoring throughput of a Qwen3-VL-8B-sized model (random weights, bf16, built in memory).

Shapes: 36 text layers, hidden 4096, GQA 32/8 heads, MLP 12288, vocab 151,936; 27-layer 1152-d vision tower,
patch 16, spatial merge 2 (see promptecho.testing.sized_vlms). 512 px images (1024 patches -> 256 image
tokens), ~80-token prompts. Reports pairs/s, the engine's scoring time ÷ a bare forward on the same padded
batches, and the fraction of the GPU's dense bf16 peak, both with the FLOP count of this model
(2 x parameters x tokens) and with the nominal 7.5 TFLOP per pair of the issue.

One command on the GPU machine (transformers 5.23 carried as a wheel in .whl/, torchvision present there):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
  PYTHONPATH=/tmp/site python3 bench/gpu_qwen3vl.py --batches 16 32
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(vlm, images, prompts, batch, sync):
    import torch

    vlm.score(images[:batch], prompts[:batch], batch_size=batch)  # warm-up (kernels, allocator)
    sync()
    t = time.perf_counter()
    res = vlm.score(images, prompts, batch_size=batch)
    sync()
    score_s = time.perf_counter() - t
    # bare forward over the same padded batches (processor work done beforehand, outside the timer)
    rows = sorted((vlm._prepared_row(im, p) for im, p in zip(images, prompts)), key=lambda r: len(r.ids))
    batches = []
    for b in range(0, len(rows), batch):
        enc = vlm._process(rows[b:b + batch])
        batches.append({k: (v.to(vlm.device, vlm.dtype) if v.is_floating_point() else v.to(vlm.device))
                        for k, v in enc.items() if k != "offset_mapping"})
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for enc in batches:
            vlm.model(**enc, logits_to_keep=1)
    sync()
    bare_s = time.perf_counter() - t
    seq = sum(float(e["attention_mask"].sum()) for e in batches) / len(rows)
    return res, score_s, bare_s, seq


def main(argv=None):
    import numpy as np
    import torch
    from PIL import Image

    from promptecho.testing.sized_vlms import _prompt, build_qwen3_vl_8b

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--words", type=int, default=80, help="prompt words (the stand-in tokenizer gives ~1 token per word)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--nominal-tflop-per-pair", type=float, default=7.5)
    ap.add_argument("--images-on-device", action="store_true", help="resize/normalise images on the GPU")
    ap.add_argument("--also-compiled", action="store_true",
                    help="then repeat with VLM.compile_layers() (torch.compile, about a minute of warm-up)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device; this benchmark needs a GPU (about 20 GB for the bf16 8B model)")

    t = time.perf_counter()
    vlm = build_qwen3_vl_8b(device="cuda", dtype="bf16", fast_images=True)
    vlm.images_on_device = args.images_on_device
    build_s = time.perf_counter() - t
    rng = random.Random(0)
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for i in range(args.pairs)]
    prompts = [_prompt(rng, args.words) for _ in range(args.pairs)]
    n_params = sum(p.numel() for p in vlm.model.parameters())
    vis = sum(p.numel() for n, p in vlm.model.named_parameters() if "visual" in n)
    patches = (args.size // 16) ** 2
    rows = []
    plan = [(b, False) for b in args.batches] + ([(b, True) for b in args.batches] if args.also_compiled else [])
    for batch, compiled in plan:
        if compiled and not getattr(vlm, "_bench_compiled", False):
            t = time.perf_counter()
            vlm.compile_layers()
            vlm.score(images[:batch], prompts[:batch], batch_size=batch)
            vlm._bench_compiled = True
            print(f"compiled the decoder layers; first batch took {time.perf_counter() - t:.0f} s", flush=True)
        res, score_s, bare_s, seq = measure(vlm, images, prompts, batch, torch.cuda.synchronize)
        # 2 FLOP per weight per token: the language model over every sequence position, the vision tower per patch
        flop_pair = 2 * (n_params - vis) * seq + 2 * vis * patches
        pps = args.pairs / score_s
        rows.append(dict(batch=batch, compiled=compiled, images_on_device=vlm.images_on_device, pairs_per_s=round(pps, 1), score_over_bare=round(score_s / bare_s, 3),
                         tflop_per_pair=round(flop_pair / 1e12, 2), seq_len_mean=round(seq, 1),
                         prompt_tokens_mean=round(sum(r.n_tokens for r in res) / len(res), 1),
                         mfu=round(pps * flop_pair / (args.peak_tflops * 1e12), 3),
                         mfu_nominal=round(pps * args.nominal_tflop_per_pair * 1e12 / (args.peak_tflops * 1e12), 3),
                         all_finite=all(r.loss == r.loss for r in res)))
        print(json.dumps(rows[-1]), flush=True)
    out = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               transformers=__import__("transformers").__version__, params_b=round(n_params / 1e9, 2),
               vision_params_b=round(vis / 1e9, 3), build_s=round(build_s, 1), pairs=args.pairs,
               image_px=args.size, peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2 ** 30, 1), runs=rows)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
