"""`make bench`: every CPU benchmark in one run, then one table of ratios measured in this run.

  (a) overhead.py  scoring time ÷ bare model forward on the same padded batch   target <= 1.10
  (b) batching.py  batched (B=8) ÷ one-by-one throughput, tiny model            target >= 2.5
  (c) memory.py    peak memory, naive full-vocabulary log-softmax ÷ engine      (152k vocabulary)
  (d) bench_grpo.py one GRPO iteration split into sampling / reward / training,  target <= 3 (group 8, no CFG)
                    iteration ÷ sampling time; ShapesWorld generator + ShapesWorld VLM
  (e) gpu_qwen3vl.py and `bench_grpo.py --sd35` run only on a CUDA machine (not part of this run).
Random-weight models built in memory (or the committed ShapesWorld models); nothing is downloaded. About 3
minutes on 2 idle cores. Exit status 0 unless a benchmark fails to run (`--strict`: also 1 when a target is
missed); PROMPTECHO_BENCH_JSON=FILE also writes every figure as JSON.
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> int:
    import batching
    import bench_grpo
    import memory
    import overhead

    t0 = time.time()
    results = {}
    for name, mod in (("overhead", overhead), ("batching", batching), ("memory", memory), ("grpo", bench_grpo)):
        t = time.time()
        print(f"[bench] {name} ...", flush=True)
        results[name] = mod.run()
        print(f"[bench] {name} done in {time.time() - t:.0f} s: {json.dumps(results[name])}", flush=True)
    o, b, m, g = results["overhead"], results["batching"], results["memory"], results["grpo"]
    table = [
        ("score() ÷ bare forward, same padded batch (wall)", o["score_over_bare"], "<= 1.10",
         o["score_over_bare"] <= 1.10, f"{o['model']}, B={o['batch']}, seq {o['seq_len']}, 1 thread; "
                                       f"CPU-time ratio {o['score_over_bare_cpu']}"),
        ("engine forward+CE ÷ bare forward (wall)", o["engine_forward_over_bare"], "<= 1.10",
         o["engine_forward_over_bare"] <= 1.10, "processor output reused"),
        ("batched B=8 ÷ one-by-one throughput", b["speedup"], ">= 2.5", b["speedup"] >= 2.5,
         f"{b['batched_pairs_per_s']} vs {b['one_by_one_pairs_per_s']} pairs/s; CPU-time ratio "
         f"{b['speedup_cpu']}; max |Δreward| "
         f"{b['max_reward_diff']}"),
        ("peak memory naive ÷ engine (vocab 151936)", m["naive_over_engine"], "> 1", m["naive_over_engine"] > 1,
         f"{m['naive_peak_mb']} MB vs {m['engine_peak_mb']} MB; B={m['batch']}, seq {m['seq_len']}, "
         f"answer {m['answer_tokens_max']} tok"),
    ]
    for v in g["variants"]:
        kind = {"grpo": "Flow-GRPO", "awm": "AWM"}[v["algorithm"]]
        sde = "" if v["algorithm"] == "awm" else (", SDE all steps" if v["sde_window"] == "all"
                                                    else f", SDE window {v['sde_window']}")
        table.append((f"GRPO iteration ÷ sampling, {kind}{sde}", v["iteration_over_sampling"], "<= 3",
                      v["iteration_over_sampling"] <= 3,
                      f"group {v['group']}, {v['sampling_steps']} steps, no CFG: sample {v['time_sample_s']} s, "
                      f"reward {v['time_reward_s']} s, train {v['time_train_s']} s, iteration {v['time_iteration_s']} s"))
    w = max(len(r[0]) for r in table)
    print("\n(wall-time ratios are medians of back-to-back rounds; on a loaded shared machine they vary by about"
          " ±10 %; CPU-time ratios vary less)")
    print(f"\n{'measure':<{w}}  {'ratio':>7}  {'target':>8}  ok   details")
    for name, val, target, ok, det in table:
        print(f"{name:<{w}}  {val:>7.3f}  {target:>8}  {'yes' if ok else 'NO ':<3}  {det}")
    print(f"\nGRPO: {g['generator']}; reward: PromptEcho with the {g['reward_vlm']}; {g['threads']} threads.")
    print(f"\nfull-vocabulary logits for this batch would be {m['full_logits_mb']} MB; the answer window "
          f"{m['window_logits_mb']} MB. Total bench time {time.time() - t0:.0f} s.")
    out = os.environ.get("PROMPTECHO_BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    missed = [r[0] for r in table if not r[3]]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if missed and "--strict" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
