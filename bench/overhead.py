"""(a) Engine overhead: PromptEcho scoring wall time ÷ a bare model forward on the same padded batch.

Bare forward = `model(**processed_batch, logits_to_keep=1)`: the least work any scorer must do (vision tower +
language model over the whole sequence, one LM-head row). Two ratios are reported:
- engine forward: the engine's forward + answer-window logits + fp32 CE + per-row results, on the batch the
  processor already produced (what the engine adds around the model);
- end to end: `VLM.score()` including tokenisation, chat template and the processor (image resizing).
Timed in alternation with one torch thread (on a shared 2-core machine that gives stable ratios); the
median of per-round ratios is reported, for wall time and for process CPU time.
"""
from __future__ import annotations

import json
import statistics

from common import images_and_prompts, interleaved, llava_vlm, median_ratio, set_threads


def run(batch=8, words=60, rounds=5):
    import torch

    set_threads(1)
    # a small but not trivial model (12 M parameters, 64 image tokens), so the forward dominates as with real VLMs
    vlm = llava_vlm(text_hidden=384, text_layers=4, image_size=112, patch=14, vision_hidden=192, vision_layers=3)
    images, prompts = images_and_prompts(batch, size=128, words=words)
    rows = []
    for i, (im, p) in enumerate(zip(images, prompts)):
        r = vlm._prepared_row(im, p)
        r.index = i
        rows.append(r)
    prepared = vlm._fit_lengths(rows)
    enc = prepared[0]
    inputs = {k: v for k, v in enc.items() if k not in ("labels", "offset_mapping")}

    def bare():
        with torch.inference_mode():
            vlm.model(**inputs, logits_to_keep=1)

    t = interleaved({"bare": bare, "engine_forward": lambda: vlm._forward_rows(rows, prepared),
                     "score": lambda: vlm.score(images, prompts, batch_size=batch)}, rounds=rounds)
    n_params = sum(p.numel() for p in vlm.model.parameters())
    med = {k: round(statistics.median(v["wall"]), 4) for k, v in t.items()}
    return dict(model=vlm.name, params_m=round(n_params / 1e6, 1), batch=batch, threads=1,
                seq_len=int(enc["input_ids"].shape[1]), prompt_tokens_mean=sum(r.i1 - r.i0 for r in rows) / batch,
                median_wall_s=med,
                engine_forward_over_bare=round(median_ratio(t, "engine_forward", "bare"), 3),
                score_over_bare=round(median_ratio(t, "score", "bare"), 3),
                score_over_bare_cpu=round(median_ratio(t, "score", "bare", key="cpu"), 3))


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
