"""(b) Batching: throughput of `VLM.score(batch_size=8)` ÷ the same pairs scored one at a time (batch_size=1),
on the tiny test-size LLaVA (where per-call overhead matters most). Timed in alternation; median of the
per-round ratios, wall time and process CPU time."""
from __future__ import annotations

import json

from common import images_and_prompts, interleaved, llava_vlm, median_ratio, set_threads


def run(pairs=32, batch=8, words=40, rounds=3):
    set_threads(2)
    vlm = llava_vlm()  # the tiny shape the test-suite uses: 32 px CLIP, 64-d Llama, 2 layers
    images, prompts = images_and_prompts(pairs, size=48, words=words, seed=1)
    t = interleaved({"one": lambda: vlm.score(images, prompts, batch_size=1),
                     "batched": lambda: vlm.score(images, prompts, batch_size=batch)}, rounds=rounds)
    # batching must not change the numbers (the engine's contract); checked here on the timed pairs too
    a = vlm.score(images, prompts, batch_size=1)
    b = vlm.score(images, prompts, batch_size=batch)
    max_diff = max(abs(x.reward - y.reward) for x, y in zip(a, b))
    return dict(model=vlm.name, pairs=pairs, batch=batch, threads=2,
                one_by_one_pairs_per_s=round(pairs / min(t["one"]["wall"]), 1),
                batched_pairs_per_s=round(pairs / min(t["batched"]["wall"]), 1),
                speedup=round(median_ratio(t, "one", "batched"), 2),
                speedup_cpu=round(median_ratio(t, "one", "batched", key="cpu"), 2),
                max_reward_diff=float(f"{max_diff:.2e}"))


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
