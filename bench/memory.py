"""(c) Memory: the engine slices logits to the answer window before the fp32 log-softmax.

On a model with Qwen's 151,936-token vocabulary and 256 image tokens (Qwen-VL at 512 px), a naive scorer
that takes `model(...).logits` for every position and log-softmaxes them materialises
batch x sequence x vocab floats twice; the engine only batch x answer_tokens x vocab, once in fp32.
Each variant runs in its own subprocess; a sampler thread reads the process's resident memory
(/proc/self/statm) every millisecond during the call, and the peak above the level before the call is
reported (Linux only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = 151936


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_during(fn, interval=0.001):
    """(peak resident bytes above the starting level while fn() ran, fn's result)."""
    start, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
    finally:
        stop.set()
        th.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - start, out


def child(mode: str, batch: int = 4, words: int = 60) -> dict:
    import torch

    from common import images_and_prompts, llava_vlm, set_threads
    from promptecho.scoring import token_losses

    set_threads(1)
    vlm = llava_vlm(vocab_size=VOCAB, text_hidden=128, text_layers=2, image_size=224, patch=14, vision_hidden=32,
                    vision_layers=1)
    images, prompts = images_and_prompts(batch, size=224, words=words, seed=2)
    rows = []
    for i, (im, p) in enumerate(zip(images, prompts)):
        r = vlm._prepared_row(im, p)
        r.index = i
        rows.append(r)
    prepared = vlm._fit_lengths(rows)
    enc, bounds = prepared
    inputs = {k: v for k, v in enc.items() if k not in ("labels", "offset_mapping")}

    def engine():
        vlm._forward_rows(rows, prepared)
        return [sum(r.losses[:r.i1 - r.i0]) / (r.i1 - r.i0) for r in rows]

    def naive():  # what the engine avoids: full-vocabulary log-probs at every position
        with torch.inference_mode():
            logp = torch.log_softmax(vlm.model(**inputs).logits.float(), dim=-1)
            out = []
            for k, (r, (s, e)) in enumerate(zip(rows, bounds)):
                n = len(r.ids)
                pos = torch.tensor([e - n + j - 1 for j in range(r.i0, r.i1)])
                tgt = torch.tensor(r.ids[r.i0:r.i1])
                out.append(float(-logp[k, pos, tgt].mean()))
            return out

    fn = engine if mode == "engine" else naive
    fn()  # warm-up: lazy initialisation is not what we measure
    peak, losses = peak_during(fn)
    seq = int(enc["input_ids"].shape[1])
    answer = max(r.i1 - r.i0 for r in rows)
    return dict(mode=mode, peak_mb=round(peak / 2 ** 20, 1), batch=batch, seq_len=seq, answer_tokens_max=answer,
                vocab=VOCAB, losses=losses,
                full_logits_mb=round(batch * seq * VOCAB * 4 / 2 ** 20, 1),
                window_logits_mb=round(batch * answer * VOCAB * 4 / 2 ** 20, 1))


def run() -> dict:
    res = {}
    for mode in ("engine", "naive"):
        p = subprocess.run([sys.executable, os.path.join(HERE, "memory.py"), "--child", mode], capture_output=True,
                           text=True, cwd=HERE, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"memory child {mode} failed:\n{p.stderr[-2000:]}")
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    e, n = res["engine"], res["naive"]
    same = max(abs(a - b) for a, b in zip(e["losses"], n["losses"]))
    return dict(vocab=VOCAB, batch=e["batch"], seq_len=e["seq_len"], answer_tokens_max=e["answer_tokens_max"],
                engine_peak_mb=e["peak_mb"], naive_peak_mb=n["peak_mb"],
                naive_over_engine=round(n["peak_mb"] / max(e["peak_mb"], 1e-6), 2),
                full_logits_mb=e["full_logits_mb"], window_logits_mb=e["window_logits_mb"],
                max_loss_diff=float(f"{same:.2e}"))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, HERE)
        print(json.dumps(child(sys.argv[2])))
    else:
        print(json.dumps(run(), indent=1))
