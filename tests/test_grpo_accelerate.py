"""Data-parallel GRPO through `accelerate launch --multi_gpu --num_processes 2` on CPU (torch.distributed, gloo).

(`accelerate launch --cpu` starts a single process unless MPI is configured; `--multi_gpu` starts the workers with
torch.distributed.run, and the config's device = "cpu" makes each use `Accelerator(cpu=True)`: gloo, MULTI_CPU.)

One 2-step ShapesWorld session (random tiny generator + tiny random LLaVA reward VLM, both loaded from folders by
`python -m promptecho train --config FILE`, a checkpoint after every step) is run twice: by two processes that
each sample, reward and back-propagate half of the one prompt's group of 4, and by one process on the same global
batch. Checked:
- the launch finishes; the main process writes the checkpoints (step 1 and step 2), nothing else writes;
- after each step the LoRA weights of the two processes are bit-identical: each process reports the SHA-256 of its
  weights (`processes.json`), and the digest of the saved checkpoint, recomputed here after loading it into a
  fresh session, equals both;
- after step 1 the 2-process LoRA equals the 1-process LoRA up to rounding: the gradient of the global mean is
  summed in another order (two half-group means averaged by all-reduce instead of one mean over 4 rows), so not
  bit for bit; Adam divides by sqrt(v) + 1e-8, which turns ~1e-11 gradient rounding on entries whose gradient is
  itself ~1e-8 into up to ~1e-4 x lr (2e-10 and 2e-7 with lr 1e-3 seen in two runs); bound: 1e-3 x lr, against
  updates of ~lr. The per-step mean rewards (gathered from both processes) agree to 1e-4: a half batch samples images that
  differ from the full batch's by ~1e-6 before uint8 rounding.
  Step 2 is compared loosely: its images are sampled with step-1 weights that differ by ~1e-10, a few pixels
  then round to another uint8 level, rewards move by ~1e-6 and Adam's normalised update turns that into
  visible differences for near-zero gradient entries; so after step 2 we only bound the difference by lr.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle on the left", "two blue squares at the bottom"]
LR = 1e-3

pytest.importorskip("accelerate", reason="accelerate is needed for the data-parallel path (requirements-dev.txt)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp_path):
    from promptecho.grpo.config import GRPOConfig
    from promptecho.shapes.generator import ShapesWorldPipeline, build_components
    from promptecho.testing.tiny_vlms import build_tiny_vlm

    gen = str(tmp_path / "generator")
    ShapesWorldPipeline(**build_components(seed=0, width=32, layers=1, layout=False)).save_pretrained(gen)  # see fixtures.grpo.tiny_shapes_pipeline
    vlm = build_tiny_vlm("llava", str(tmp_path / "vlm"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = GRPOConfig(adapter="shapesworld", pipeline=gen, reward="promptecho", reward_model=vlm, prompts=str(prompts),
                     algorithm="grpo", train_steps=2, eval_steps=2, group_size=4, prompts_per_step=1,
                     noise_level=0.7, clip_range=0.2, lora_rank=2, lora_alpha=4.0, lr=LR, max_steps=2, eval_every=0,
                     checkpoint_every=1, keep_last=2, threads=1, output_dir=str(tmp_path / "run-2proc"))
    path = str(tmp_path / "session.toml")
    cfg.save(path)
    return cfg, path


def _launch(cfg_path, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HOME=str(tmp_path / "hf-home"))  # no user accelerate config is read
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), "-m", "promptecho", "train", "--config", cfg_path]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"accelerate launch failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"


def test_two_process_accelerate_run_equals_one_process(tmp_path):
    from promptecho.grpo.config import GRPOConfig
    from promptecho.grpo.trainer import GRPOSession

    cfg, cfg_path = _setup(tmp_path)
    t = time.time()
    _launch(cfg_path, tmp_path)
    launch_s = time.time() - t

    root = os.path.join(cfg.output_dir, "checkpoints")
    ckpts = sorted(d for d in os.listdir(root) if d.startswith("step-"))
    assert ckpts == ["step-000001", "step-000002"], ckpts
    assert not [d for d in os.listdir(root) if d.startswith(".tmp")]
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:  # only the main process appends metrics
        multi_hist = [json.loads(line) for line in f]
    assert [m["step"] for m in multi_hist] == [1, 2]
    for name, step in zip(ckpts, (1, 2)):
        ck = os.path.join(root, name)
        with open(os.path.join(ck, "processes.json")) as f:
            procs = json.load(f)
        assert procs["num_processes"] == 2
        d0, d1 = procs["lora_sha256_per_process"]
        assert d0 == d1, f"LoRA weights differ between the two processes after step {step}"
        # the saved weights are the processes' weights: reload into a fresh session and hash them the same way
        check = GRPOSession(GRPOConfig.load(cfg_path), run_self_checks=False).start(resume=ck)
        assert check.step_count == step
        assert check.check_ranks_in_sync()[0][:len(d0)] == d0

    # one process, same global batch (4 images of one prompt per step)
    single_cfg = GRPOConfig.load(cfg_path)
    single_cfg.output_dir = str(tmp_path / "run-1proc")
    s = GRPOSession(single_cfg).start()
    hist = s.run()
    sroot = os.path.join(single_cfg.output_dir, "checkpoints")
    diffs = []
    for name in ckpts:
        a = load_file(os.path.join(sroot, name, "lora.safetensors"))
        b = load_file(os.path.join(root, name, "lora.safetensors"))
        assert sorted(a) == sorted(b)
        diffs.append(max(float((a[k] - b[k]).abs().max()) for k in a))
    first = load_file(os.path.join(sroot, ckpts[0], "lora.safetensors"))
    moved = max(float(v.abs().max()) for k, v in first.items() if "lora_B" in k)
    assert moved > 0.5 * LR, "the LoRA did not move: the comparison would be vacuous"
    assert diffs[0] <= 1e-3 * LR, f"after step 1 the 2-process LoRA differs from the 1-process one by {diffs[0]:.3g}"
    # step 2 starts from weights equal to ~1e-6: an Adam step moves each weight by up to ~lr, so a coordinate whose
    # gradient is near zero can step the other way in one run; 2 * lr bounds that, a real mismatch is far larger
    assert diffs[1] <= 2 * LR, f"after step 2 the 2-process LoRA differs from the 1-process one by {diffs[1]:.3g}"
    # same seeds and noise; the images agree to ~1e-6 before uint8 rounding (batches of 2 vs 4), so the gathered
    # reward means agree to ~1e-5 (bit-equal in some runs)
    for a_, b_ in zip(hist, multi_hist):
        assert a_["reward_mean"] == pytest.approx(b_["reward_mean"], abs=1e-4)
    assert hist[0]["loss"] == pytest.approx(multi_hist[0]["loss"], abs=1e-6)  # logged loss is the global mean
    print(f"accelerate launch {launch_s:.0f} s; max |LoRA 2proc - 1proc| after step 1 {diffs[0]:.3g}, "
          f"step 2 {diffs[1]:.3g}; step-2 reward means {hist[1]['reward_mean']} vs {multi_hist[1]['reward_mean']}")
