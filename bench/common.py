"""Shared helpers for the CPU benchmarks: in-memory LLaVA-architecture VLMs of chosen sizes, timers.

The models are random-weight (built from a config, nothing downloaded) and use the project's tiny
LLaVA tokenizer and chat template, so the engine runs exactly its product path on them.
"""
from __future__ import annotations

import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def set_threads(n: int = 2) -> None:
    """Fix torch's thread count: oversubscribed threads make small-model timings meaningless."""
    import torch

    torch.set_num_threads(n)
    torch.set_num_interop_threads(1) if not getattr(set_threads, "_done", False) else None
    set_threads._done = True


def llava_vlm(vocab_size=None, text_hidden=64, text_layers=2, image_size=32, patch=8, vision_hidden=32,
              vision_layers=2, seed=0):
    """A random LLaVA-architecture `VLM` in memory. vocab_size=None keeps the tiny tokenizer's vocabulary;
    a larger value (e.g. 151936, Qwen's) only widens the embedding and LM head."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from promptecho.testing.tiny_vlms import LLAVA_TEMPLATE, _fast_tokenizer, _padded_vocab
    from promptecho.vlm import VLM

    tok = _fast_tokenizer(["<unk>", "<s>", "</s>", "<image>", "<pad>"], "<s>", "</s>", "<pad>",
                          prepend_bos=True, extra={"image_token": "<image>"})
    heads = max(2, text_hidden // 64)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=vision_hidden,
                           intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
                           num_attention_heads=max(2, vision_hidden // 64), image_size=image_size, patch_size=patch,
                           projection_dim=vision_hidden),
        text_config=dict(model_type="llama", vocab_size=vocab_size or _padded_vocab(tok), hidden_size=text_hidden,
                         intermediate_size=4 * text_hidden, num_hidden_layers=text_layers, num_attention_heads=heads,
                         num_key_value_heads=heads, head_dim=text_hidden // heads, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(image_size // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval().requires_grad_(False)
    return VLM(model, proc, name=f"llava-bench-{text_hidden}x{text_layers}-v{cfg.text_config.vocab_size}")


def images_and_prompts(n, size=64, words=60, seed=0):
    import numpy as np
    from PIL import Image

    from promptecho.testing.tiny_vlms import _LEXICON

    rng = random.Random(seed)
    images = [Image.fromarray(np.random.RandomState(seed + i).randint(0, 256, (size, size, 3), dtype=np.uint8))
              for i in range(n)]
    # lengths vary a little, as real prompts do, so batches carry padding
    prompts = [" ".join(rng.choice(_LEXICON) for _ in range(words + rng.randint(-words // 4, words // 4)))
               for _ in range(n)]
    return images, prompts


def best_of(fn, repeats=5, warmup=1):
    """Minimum and median wall time of `fn()` over `repeats` runs (the minimum is the least noisy on a shared box)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def interleaved(fns, rounds=5, warmup=1):
    """Time several functions in alternation (A B C A B C ...), so that load from other processes on a shared
    machine hits all of them alike. Returns {name: {"wall": [...], "cpu": [...]}} (seconds per call)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["cpu"].append(time.process_time() - c)
    return out


def median_ratio(times, num, den, key="wall"):
    """Median over rounds of time(num) / time(den), each round's pair measured back to back."""
    return statistics.median(a / b for a, b in zip(times[num][key], times[den][key]))
