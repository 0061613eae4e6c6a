"""The ShapesWorld VLM training script: reproducible from a seed, saves a folder the engine loads, pads the scene."""
import json
import math

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from promptecho.shapes.render import IMAGE_SIZE


def test_two_runs_with_one_seed_are_identical_and_load_through_the_engine(tmp_path):
    from promptecho.shapes.train_vlm import main
    from promptecho.vlm import load_vlm

    args = ["--steps", "2", "--batch-size", "4", "--scenes", "48", "--seed", "5", "--threads", "1"]
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b")])
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    meta = json.loads((tmp_path / "a" / "training.json").read_text())
    assert meta["seed"] == 5 and meta["pad"] == 4

    vlm = load_vlm(str(tmp_path / "a"), dtype="fp32", device="cpu")
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    # the processor puts the 48 px scene inside a 4 px black border: 56 px = 7 x 7 patches of 8 px
    white = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    px = vlm.processor.image_processor(images=[white], return_tensors="pt")["pixel_values"][0]
    assert px.shape == (3, 56, 56)
    black = vlm.processor.image_processor(images=[Image.new("RGB", (56, 56))], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(px[:, :4], black[:, :4]) and torch.equal(px[:, :, -4:], black[:, :, -4:])
    assert torch.allclose(px[:, 4:-4, 4:-4], px[:, 4:5, 4:5].expand(3, 48, 48))  # the scene itself is untouched
    assert not torch.allclose(px[:, 4, 4], black[:, 4, 4])
    assert vlm.model.config.image_seq_length == 49
    r = vlm.score([white], "The image shows a small red circle on a black background.")[0]
    assert math.isfinite(r.reward) and r.reward < 0


def test_attribute_probe_matches_a_manual_cross_entropy():
    """The training log's per-attribute word loss: recomputed here with a manual log-softmax over the same rows."""
    from promptecho.shapes.train_vlm import ATTRIBUTE_WORDS, AttributeProbe, Batcher, build_model_and_processor
    from promptecho.shapes.train_vlm import build_tokenizer
    from promptecho.shapes.world import sample_split

    tok = build_tokenizer([c for _, c in sample_split("train", 200, seed=0)])
    model, proc = build_model_and_processor(tok, seed=0)
    probe = AttributeProbe(Batcher(proc), n=6, seed=0)
    got = probe(model, "cpu")
    with torch.no_grad():
        logits = model(**probe.batch).logits.float()
    logp = torch.log_softmax(logits, -1)
    ids, labels = probe.batch["input_ids"], probe.batch["labels"]
    per = {k: [] for k in ["all", *ATTRIBUTE_WORDS]}
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if labels[b, t] < 0:
                continue
            loss = -float(logp[b, t - 1, labels[b, t]])
            per["all"].append(loss)
            word = tok.decode([int(ids[b, t])]).strip().lower()
            for k, words in ATTRIBUTE_WORDS.items():
                if word in words:
                    per[k].append(loss)
    assert per["shape"] and per["colour"] and per["size"]
    for k, v in per.items():
        assert np.isclose(got[k], np.mean(v), atol=1e-4), k
