"""The ShapesWorld RL proof's judging: pairwise counts, LoRA on/off judging, prompt splits, README table."""
import numpy as np
import torch

from promptecho.grpo.shapes_proof import format_table, judge, pairwise, prompt_sets, summarize


def test_pairwise_counts_by_hand():
    base = np.array([0.5, 1.0, 0.25, 0.75, 0.5])
    trained = np.array([1.0, 1.0, 0.0, 1.0, 0.75])
    p = pairwise(base, trained)
    assert p["wins"] == 3 / 5 and p["losses"] == 1 / 5 and abs(p["ties"] - 1 / 5) < 1e-12
    assert abs(p["net"] - 2 / 5) < 1e-12


def test_prompt_sets_come_from_disjoint_splits():
    from promptecho.shapes.world import atoms_from_caption, is_eval
    train, evals = prompt_sets(50, 20)
    assert len(train) == 50 and len(evals) == 20
    assert not any(is_eval(atoms_from_caption(c)) for c in train)
    assert all(is_eval(atoms_from_caption(c)) for c in evals)


def test_judge_with_a_zero_lora_equals_the_base_and_a_changed_lora_does_not():
    from peft import LoraConfig
    from promptecho.grpo.adapters.shapes import ShapesWorldAdapter
    from promptecho.shapes.generator import ShapesWorldPipeline, build_components

    pipe = ShapesWorldPipeline(**build_components(seed=0, width=32, layers=1))
    ad = ShapesWorldAdapter(pipe)
    ad.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    ad.pipe.layout_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=ad.extra_lora_targets["layout_encoder"]))
    prompts, seeds = prompt_sets(1, 2)[1], [1, 2]
    base = judge(ad, prompts, seeds, steps=3, cfg=1.0, lora=False)
    same = judge(ad, prompts, seeds, steps=3, cfg=1.0, lora=True)  # LoRA B is zero-initialised: a no-op
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(base["images"], same["images"]))
    s = summarize(base, same)
    assert s["pair_net"] == 0 and s["pair_ties"] == 1 and s["delta_accuracy_pp"] == 0
    for module in (ad.pipe.layout_encoder, ad.transformer):  # the layout LoRA alone, then both
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.add_(0.5)
        moved = judge(ad, prompts, seeds, steps=3, cfg=1.0, lora=True)
        assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(base["images"], moved["images"]))
        off_again = judge(ad, prompts, seeds, steps=3, cfg=1.0, lora=False)  # disabling really restores the base
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(base["images"], off_again["images"]))


def test_table_has_one_row_per_run():
    r = dict(algorithm="awm", reward="promptecho", steps=10, train_seconds=600, base_accuracy=0.3, trained_accuracy=0.45,
             base_atoms=0.7, trained_atoms=0.8, delta_accuracy_pp=15.0, pair_net=0.35, pair_wins=0.5, pair_losses=0.15)
    t = format_table([r, dict(r, reward="vqascore")])
    assert t.count("\n| awm |") == 2 and "+15.0" in t and "+35.0 pp" in t and "10.0 min" in t


def test_set_overrides_any_config_field_and_refuses_unknown_ones(tmp_path):
    import argparse

    import pytest

    from promptecho.grpo.shapes_proof import build_config

    def args(*sets):
        return argparse.Namespace(algorithm="awm", reward="promptecho", seed=0, out=str(tmp_path), threads=1,
                                  checkpoint_every=0, pipeline="", reward_model="", max_steps=None, lr=None,
                                  train_cfg=None, set=list(sets))

    cfg = build_config(args("train_steps=12", "kl_beta=0.25", "adv_mode=mean", "awm_negative_weight=0.5"))
    assert (cfg.train_steps, cfg.kl_beta, cfg.adv_mode, cfg.awm_negative_weight) == (12, 0.25, "mean", 0.5)
    with pytest.raises(SystemExit, match="no_such_field"):
        build_config(args("no_such_field=1"))


def test_summary_intervals_match_a_direct_paired_computation():
    """The 95 % half-widths are 1.96 * std / sqrt(n) of the per-pair differences, computed here by hand: accuracy
    from the 0/1 differences, net win from the signs of the atom-share differences; the table prints them."""
    base = {"correct": np.array([1, 0, 0, 1, 1, 0, 0, 0], float), "atoms": np.array([1, .5, .5, 1, 1, .25, .5, .75])}
    trained = {"correct": np.array([1, 1, 0, 0, 1, 1, 1, 0], float), "atoms": np.array([1, 1, .25, .75, 1, 1, 1, .75])}
    s = summarize(base, trained)
    d_acc = [0, 1, 0, -1, 0, 1, 1, 0]
    mean = sum(d_acc) / 8
    sd = (sum((x - mean) ** 2 for x in d_acc) / 8) ** 0.5
    assert abs(s["delta_accuracy_pp"] - 100 * mean) < 1e-9
    assert abs(s["delta_accuracy_pp_ci95"] - 100 * 1.96 * sd / 8 ** 0.5) < 1e-9
    signs = [0, 1, -1, -1, 0, 1, 1, 0]
    m2 = sum(signs) / 8
    assert abs(s["pair_net"] - m2) < 1e-12
    assert abs(s["pair_net_ci95"] - 1.96 * (sum((x - m2) ** 2 for x in signs) / 8) ** 0.5 / 8 ** 0.5) < 1e-9
    row = dict(algorithm="awm", reward="promptecho", steps=1, train_seconds=60, **s)
    assert f"± {s['delta_accuracy_pp_ci95']:.1f}" in format_table([row])
    assert f"± {100 * s['pair_net_ci95']:.1f}" in format_table([row])


def test_table_gives_older_runs_the_exact_net_win_interval_from_their_shares():
    """A proof.json written before intervals were stored: the net win's half-width from wins/losses equals the one
    summarize computes from the per-pair signs."""
    base = {"correct": np.zeros(5), "atoms": np.array([.5, 1, .25, .75, .5])}
    trained = {"correct": np.zeros(5), "atoms": np.array([1, 1, 0, 1, .75])}
    s = summarize(base, trained)
    old = {k: v for k, v in s.items() if not k.endswith("_ci95")}
    row = dict(algorithm="awm", reward="promptecho", steps=1, train_seconds=60, eval_prompts=5)
    assert format_table([dict(row, **old)]).split("|")[-2] == format_table([dict(row, **s)]).split("|")[-2]
    assert f"± {100 * s['pair_net_ci95']:.1f}" in format_table([dict(row, **old)])


def test_judge_train_seeds_reports_the_fit_on_training_prompts(tmp_path):
    """--judge-train-seeds: base and trained model judged on the training prompts too; the base figures equal the
    oracle's verdict on the plain diffusers pipeline's images for those prompts and seeds (computed here apart)."""
    import json

    from promptecho.shapes import default_generator_path
    from promptecho.shapes.generator import load_generator
    from promptecho.shapes.oracle import check
    from promptecho.grpo.shapes_proof import main

    out = tmp_path / "run"
    assert main(["--algorithm", "awm", "--reward", "shapes_oracle", "--max-steps", "1", "--train-prompts", "2",
                 "--eval-prompts", "2", "--judge-train-seeds", "2", "--threads", "1", "--out", str(out),
                 "--set", "group_size=2", "prompts_per_step=1"]) == 0
    r = json.loads((out / "proof.json").read_text())
    fit = r["train_fit"]
    assert fit["prompts"] == 2 and fit["seeds"] == 2
    train, _ = prompt_sets(2, 2)
    pipe = load_generator(default_generator_path())
    prompts = [p for p in train for _ in range(2)]
    imgs = pipe(prompts, num_inference_steps=12, guidance_scale=2.5,
                generator=[torch.Generator().manual_seed(7000 + i) for i in range(4)]).images
    want = [check(im, p) for im, p in zip(imgs, prompts)]
    assert abs(fit["base_accuracy"] - np.mean([w.correct for w in want])) < 1e-12
    assert abs(fit["base_atoms"] - np.mean([w.fraction for w in want])) < 1e-12
    assert 0 <= fit["trained_accuracy"] <= 1 and "pair_net" in fit


def test_make_proof_commands_build_the_recipes_the_readme_reports():
    """`make proof` as make expands it: three runs whose arguments parse and validate, with the recipe the README
    table reports (wide LoRA; AWM with the EMA trust region, Flow-GRPO with a KL to the base), which are the two
    proof presets the Train tab offers."""
    import shlex
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    from promptecho.grpo.shapes_proof import arg_parser, build_config

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["make", "-n", "-s", "proof"], cwd=root, capture_output=True, text=True, check=True).stdout
    runs = [line.rstrip(" \\&") for line in text.splitlines() if "shapes_proof" in line and "--algorithm" in line]
    assert len(runs) == 3
    cfgs = {}
    for line in runs:
        argv = shlex.split(line)
        args = arg_parser().parse_args(argv[argv.index("promptecho.grpo.shapes_proof") + 1:])
        assert (args.minutes, args.threads, args.eval_prompts) == (30, 1, 400)
        cfgs[(args.algorithm, args.reward)] = build_config(args)
    assert set(cfgs) == {("awm", "promptecho"), ("grpo", "promptecho"), ("awm", "vqascore")}
    for cfg in cfgs.values():
        assert {"to_q", "ff.net.0.proj", "ff.net.2", "proj_out"} <= set(cfg.lora_targets)
    assert cfgs["awm", "promptecho"].ema_kl_beta == cfgs["awm", "vqascore"].ema_kl_beta == 10.0
    grpo = cfgs["grpo", "promptecho"]
    assert (grpo.kl_beta, grpo.sde_window, grpo.ema_kl_beta) == (0.04, [0, 5], 0.0)
    from promptecho.grpo.config import preset
    from promptecho.grpo.shapes_proof import PROOF_PRESETS
    for (algorithm, _), cfg in cfgs.items():
        want = preset(PROOF_PRESETS[algorithm]).to_dict()
        assert {k for k, v in cfg.to_dict().items() if v != want[k]} <= {"reward", "output_dir", "threads", "max_steps"}
