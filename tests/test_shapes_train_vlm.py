"""The ShapesWorld VLM training script: reproducible from a seed, saves a folder the engine loads, pads the scene."""
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from promptecho.shapes.render import IMAGE_SIZE


def test_two_runs_with_one_seed_are_identical_and_load_through_the_engine(tmp_path):
    from promptecho.shapes.train_vlm import main
    from promptecho.vlm import load_vlm

    # patch 8 with the 4 px border (the default is patch 16 without one): the border is checked below
    args = ["--steps", "2", "--vision-steps", "3", "--batch-size", "4", "--scenes", "48", "--seed", "5", "--threads", "1",
            "--patch", "8", "--pad", "4"]
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b")])
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the caption stage leaves the pre-trained tower frozen (default --vision-lr 0): a shorter run has the same
    # tower and a different decoder
    main(["--steps", "1", *args[2:], "--out", str(tmp_path / "c")])
    wc = load_file(str(tmp_path / "c" / "model.safetensors"))
    tower = [k for k in wa if "vision_tower" in k]
    assert tower and all(torch.equal(wa[k], wc[k]) for k in tower)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if k not in tower)
    meta = json.loads((tmp_path / "a" / "training.json").read_text())
    assert meta["seed"] == 5 and meta["pad"] == 4 and meta["vision_steps"] == 3
    # every option is recorded, defaults included (the command that made the folder)
    assert meta["focus_warmup"] == 500 and meta["position_words"] == "predicate" and meta["duplicate_boost"] == 0.0
    assert "out" not in meta
    assert set(meta["vision_cell_accuracy"]) == {"colour", "shape", "size", "cell"}  # --vision-position by default
    assert meta["vision_position"] is True and 0.0 <= meta["cell_probe"] <= 1.0

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


def test_cell_tokens_hold_the_cell_centres():
    """Known answer: with the 4 px border a 56 px image is 7x7 patches and the cell centres (12, 28, 44 px) fall in
    patches 1, 3, 5; without it (48 px, 6x6) the centres 8, 24, 40 px fall in patches 1, 3, 5 too (on their corner)."""
    from promptecho.shapes.train_vlm import cell_token_index

    assert cell_token_index(56, 8).tolist() == [1 + 7 * y + x for y in (1, 3, 5) for x in (1, 3, 5)]
    assert cell_token_index(48, 8).tolist() == [1 + 6 * y + x for y in (1, 3, 5) for x in (1, 3, 5)]
    # patch 16 without a border (the default): one patch per cell, in row-major order after CLS
    assert cell_token_index(48, 16).tolist() == list(range(1, 10))


def test_focus_ramp_rises_linearly_to_full_weight():
    from promptecho.shapes.train_vlm import focus_ramp

    assert [focus_ramp(s, 500) for s in (0, 125, 250, 499, 500, 2000)] == [0.0, 0.25, 0.5, 499 / 500, 1.0, 1.0]
    assert focus_ramp(0, 0) == 1.0  # no warm-up: full weight from the first step
    assert focus_ramp(-1, 500) == 0.0 and focus_ramp(-1, 0) == 0.0  # a term that has not started yet


def test_cell_labels_known_scene():
    from promptecho.shapes.train_vlm import CELL_CLASSES, cell_labels
    from promptecho.shapes.world import Obj, Scene

    y = cell_labels(Scene([Obj("blue", "triangle", "large", 0, 2), Obj("red", "circle", "small", 2, 1)]))
    assert y.shape == (9, 3)
    assert y[2].tolist() == [1 + CELL_CLASSES["colour"].index("blue"), 1 + CELL_CLASSES["shape"].index("triangle"),
                             1 + CELL_CLASSES["size"].index("large")]
    assert y[7].tolist() == [1 + CELL_CLASSES["colour"].index("red"), 1 + CELL_CLASSES["shape"].index("circle"),
                             1 + CELL_CLASSES["size"].index("small")]
    assert int(y.sum()) == int(y[2].sum() + y[7].sum())  # every other cell is empty (class 0)


def test_vision_pretraining_teaches_the_tower_what_captioning_did_not():
    """A short run of the pre-training stage lifts held-out shape/size accuracy well above chance (1/4, 1/2)."""
    import random

    from promptecho.shapes.train_vlm import build_model_and_processor, build_tokenizer, pretrain_vision
    from promptecho.shapes.world import sample_split

    torch.set_num_threads(1)
    data = sample_split("train", 400, seed=0)
    tok = build_tokenizer([c for _, c in data])
    model, proc = build_model_and_processor(tok, seed=0)
    acc = pretrain_vision(model, proc, data, random.Random(0), steps=120, batch_size=32, lr=2e-3, device="cpu")
    assert acc["colour"] > 0.9 and acc["shape"] > 0.5 and acc["size"] > 0.75, acc


def test_relation_boost_draws_scenes_in_proportion_to_their_relations():
    import random

    from promptecho.shapes.train_vlm import make_rows, relation_weights
    from promptecho.shapes.world import sample_split, scene_description

    data = sample_split("train", 60, seed=3)
    n_rel = np.array([len(scene_description(sc).relations) for sc, _ in data])
    assert n_rel.min() == 0 and n_rel.max() >= 2
    cum = relation_weights(data, 3.0)
    assert np.allclose(np.diff([0.0, *cum]), 1 + 3.0 * n_rel)
    caps = {c: k for k, (_, c) in enumerate(data)}
    rows = make_rows(random.Random(0), data, 6000, vqa_share=0.0, weights=cum)
    counts = np.bincount([caps[a] for _, _, a in rows], minlength=len(data))
    expected = 6000 * (1 + 3.0 * n_rel) / (1 + 3.0 * n_rel).sum()
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected.max())  # within sampling noise
    uniform = np.bincount([caps[a] for _, _, a in make_rows(random.Random(0), data, 6000, 0.0)], minlength=len(data))
    share = lambda c: c[n_rel > 0].sum() / c.sum()  # noqa: E731
    assert share(counts) > share(uniform) + 0.1


def test_vertical_boost_weights_count_above_below_sentences_from_the_caption():
    """The extra weight counts the above/below sentences as the caption states them (parsed back from the text,
    independently of scene_description's relation objects)."""
    from promptecho.shapes.train_vlm import relation_weights
    from promptecho.shapes.world import sample_split

    data = sample_split("train", 300, seed=4)
    n_rel = np.array([len(re.findall(r" (?:to the left of|to the right of|above|below) the ", c)) for _, c in data])
    n_ver = np.array([len(re.findall(r" (?:above|below) the ", c)) for _, c in data])
    assert n_ver.max() >= 1 and (n_ver < n_rel).any()
    w = np.diff([0.0, *relation_weights(data, 1.0, vertical=2.5)])
    assert np.allclose(w, 1 + n_rel + 2.5 * n_ver)
    # a repeated kind shows in the caption as a plural count ("two small red circles")
    dup = np.array([bool(re.search(r"\b(?:two|three|four) (?:small|large) \w+ \w+s\b", c)) for _, c in data])
    assert 0 < dup.sum() < len(data)
    w = np.diff([0.0, *relation_weights(data, 1.0, vertical=2.5, duplicate=3.0)])
    assert np.allclose(w, 1 + n_rel + 2.5 * n_ver + 3.0 * dup)


def test_layers_and_hidden_options_set_the_decoder_shape(tmp_path):
    import pytest

    from promptecho.shapes.train_vlm import build_model_and_processor, build_tokenizer, main

    main(["--steps", "1", "--vision-steps", "0", "--batch-size", "2", "--scenes", "16", "--threads", "1",
          "--layers", "2", "--hidden", "160", "--relation-boost", "1", "--pointer-layer", "1",
          "--out", str(tmp_path / "m")])
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 2
    # 32-wide heads: 160 = 5 heads, MLP 3x wide
    assert (cfg["text_config"]["hidden_size"], cfg["text_config"]["num_attention_heads"],
            cfg["text_config"]["intermediate_size"]) == (160, 5, 480)
    with pytest.raises(ValueError, match="multiple of the head size"):
        build_model_and_processor(build_tokenizer(["a red circle"] * 4), seed=0, hidden=100)
    meta = json.loads((tmp_path / "m" / "training.json").read_text())
    assert meta["layers"] == 2 and meta["relation_boost"] == 1.0
    with pytest.raises(ValueError, match="set --pointer-layer below --layers"):  # the default layer 2 needs 3+
        main(["--steps", "1", "--scenes", "16", "--layers", "2", "--out", str(tmp_path / "n")])
    assert not (tmp_path / "n").exists()


def test_focus_mask_marks_relation_position_and_size_words_and_caption_loss_weights_them():
    """Batcher's focus mask covers exactly the tokens of the relation phrases, region words and size words (decoded
    back); the weighted loss equals a manual log-softmax computation, and focus 0 is the model's own labels loss."""
    from promptecho import DEFAULT_QUERY
    from promptecho.shapes.render import render
    from promptecho.shapes.train_vlm import Batcher, build_model_and_processor, build_tokenizer, caption_loss
    from promptecho.shapes.world import atom_word_spans, sample_split, scene_description

    data = [d for d in sample_split("train", 60, seed=3) if atom_word_spans(d[1])["relation"]][:4]
    tok = build_tokenizer([c for _, c in sample_split("train", 200, seed=0)])
    model, proc = build_model_and_processor(tok, seed=0)
    batch = Batcher(proc)([(render(sc), DEFAULT_QUERY, cap) for sc, cap in data] + [(render(data[0][0]), "Q?", "Yes")])
    for b, (_, cap) in enumerate(data):
        spans = atom_word_spans(cap)
        assert {cap[a:e] for a, e in spans["relation"]} <= {"to the left of", "to the right of", "above", "below"}
        assert len(spans["position"]) == len(scene_description(data[b][0]).positions)
        assert [cap[a:e] for a, e in spans["size"]] == [g.size for g in scene_description(data[b][0]).groups]
        for code, kind in ((1, "relation"), (2, "position"), (3, "size")):
            got = tok.decode(batch["input_ids"][b][batch["focus"][b] == code]).split()
            want = " ".join(cap[s:e] for s, e in spans[kind]).split()
            assert got == want and want, (kind, got, want)
        assert (batch["labels"][b][batch["focus"][b] > 0] >= 0).all()  # marks lie on answer tokens
    assert not batch["focus"][-1].any()  # a yes/no answer has none
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k not in ("focus", "pointer")}
        own = model(**inputs).loss
        assert float(caption_loss(model, batch, 0.0)) == float(own)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()
        logp = torch.log_softmax(logits, -1)
        num = den = 0.0
        for b in range(logits.shape[0]):
            for t in range(1, logits.shape[1]):
                y = int(batch["labels"][b, t])
                if y < 0:
                    continue
                code = int(batch["focus"][b, t])
                w = 1 + 4.0 * (code in (1, 2)) + 2.0 * (code == 3)
                num += -float(logp[b, t - 1, y]) * w
                den += 1
        assert abs(float(caption_loss(model, batch, 4.0, focus_size=2.0)) - num / den) < 1e-4
        assert float(caption_loss(model, batch, 4.0)) > float(own)
        assert float(caption_loss(model, batch, 0.0, focus_size=2.0)) > float(own)


def test_relations_only_rows_drop_exactly_the_position_sentences():
    """A relations-only caption parses back to the scene's groups and relations with no position atom, and
    make_rows uses it for about the requested share of the caption rows of scenes with relations."""
    import random

    from promptecho.shapes.train_vlm import make_rows, relations_only_caption
    from promptecho.shapes.world import atoms_from_caption, sample_split, scene_description

    data = sample_split("train", 80, seed=5)
    with_rel = [(sc, c) for sc, c in data if scene_description(sc).relations]
    assert with_rel and len(with_rel) < len(data)
    for sc, cap in with_rel:
        full, short = atoms_from_caption(cap), atoms_from_caption(relations_only_caption(sc))
        assert full.positions and not short.positions
        assert sorted(map(repr, short.groups)) == sorted(map(repr, full.groups))
        assert sorted(map(repr, short.relations)) == sorted(map(repr, full.relations))
    assert all(relations_only_caption(sc) is None for sc, _ in data if not scene_description(sc).relations)
    rows = make_rows(random.Random(0), with_rel, 2000, vqa_share=0.0, relations_only=0.3)
    share = np.mean([not atoms_from_caption(a).positions for _, _, a in rows])
    assert abs(share - 0.3) < 0.05, share
    plain = make_rows(random.Random(0), with_rel, 200, vqa_share=0.0)
    assert all(atoms_from_caption(a).positions for _, _, a in plain)


def test_position_pairs_move_exactly_one_position_and_hard_ones_land_on_another_object():
    """Each pair is the scene's own caption and a caption that parses back to the same atoms except one position;
    with hard=1 the moved object lands on a cell another object holds (when the scene has one), with hard=0 on
    empty cells too."""
    import random

    from promptecho.shapes.render import render
    from promptecho.shapes.train_vlm import position_pairs
    from promptecho.shapes.world import REGIONS, atoms_from_caption, sample_split

    data = sample_split("train", 300, seed=4)
    scenes_of = {}
    for sc, c in data:  # a caption may describe several scenes (jitter inside the cells differs)
        scenes_of.setdefault(c, []).append(sc)
    landed = {}
    for hard in (1.0, 0.0):
        landed[hard] = []
        for img, cap, bad in position_pairs(random.Random(1), data, 150, hard=hard):
            sc = [s for s in scenes_of[cap] if np.array_equal(np.asarray(img), np.asarray(render(s)))][0]
            t, b = atoms_from_caption(cap), atoms_from_caption(bad)
            assert sorted(map(repr, t.groups)) == sorted(map(repr, b.groups))
            assert sorted(map(repr, t.relations)) == sorted(map(repr, b.relations))
            moved = [p for p in b.positions if p not in t.positions]
            assert len(moved) == 1 and len(b.positions) == len(t.positions)
            old = [p for p in t.positions if (p.color, p.shape) == (moved[0].color, moved[0].shape)][0]
            assert moved[0].region != old.region
            others = {REGIONS[(o.row, o.col)] for o in sc.objects} - {old.region}
            if others:
                landed[hard].append(moved[0].region in others)
    assert landed[1.0] and all(landed[1.0])
    assert 0 < np.mean(landed[0.0]) < 0.6  # uniform over the 8 other regions: occupied ones only now and then


def test_position_pairs_unplaced_ones_move_onto_a_repeated_object_the_caption_never_places():
    """With unplaced=1 every pair comes from a scene with a repeated kind, and the moved object lands on the cell of
    an object whose colour+shape the caption never places (recomputed here from the scene's objects)."""
    import random

    from promptecho.shapes.render import render
    from promptecho.shapes.train_vlm import position_pairs
    from promptecho.shapes.world import REGIONS, atoms_from_caption, sample_split

    data = sample_split("train", 400, seed=5)
    scenes_of = {}
    for sc, c in data:
        scenes_of.setdefault(c, []).append(sc)
    trios = position_pairs(random.Random(2), data, 60, hard=0.0, unplaced=1.0)
    assert len(trios) == 60
    for img, cap, bad in trios:
        sc = [s for s in scenes_of[cap] if np.array_equal(np.asarray(img), np.asarray(render(s)))][0]
        t, b = atoms_from_caption(cap), atoms_from_caption(bad)
        moved = [p for p in b.positions if p not in t.positions]
        assert len(moved) == 1 and sorted(map(repr, t.groups)) == sorted(map(repr, b.groups))
        kinds = [(o.color, o.shape) for o in sc.objects]
        repeated = {REGIONS[(o.row, o.col)] for o in sc.objects if kinds.count((o.color, o.shape)) > 1}
        assert repeated and moved[0].region in repeated


def test_caption_loss_with_position_pairs_adds_the_pairwise_logistic_term():
    """With K pairs at the end of the batch, the loss is the focus-weighted mean over every row but the K corrupted
    ones, plus contrast x mean softplus(sum CE true - sum CE corrupted), checked against a manual log-softmax."""
    import random

    from promptecho import DEFAULT_QUERY
    from promptecho.shapes.train_vlm import (Batcher, build_model_and_processor, build_tokenizer, caption_loss,
                                             position_pairs)
    from promptecho.shapes.world import sample_split

    data = sample_split("train", 60, seed=3)
    tok = build_tokenizer([c for _, c in sample_split("train", 200, seed=0)])
    model, proc = build_model_and_processor(tok, seed=0)
    trios = position_pairs(random.Random(0), data, 2)
    rows = [(trios[0][0], "Q?", "Yes")] + [(i, DEFAULT_QUERY, c) for i, c, _ in trios] + [
        (i, DEFAULT_QUERY, b) for i, _, b in trios]
    batch = Batcher(proc)(rows)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("focus", "pointer", "labels")}).logits.float()
        logp = torch.log_softmax(logits, -1)
        sums, num, den = [], 0.0, 0
        for b in range(logits.shape[0]):
            s = 0.0
            for t in range(1, logits.shape[1]):
                y = int(batch["labels"][b, t])
                if y < 0:
                    continue
                ce = -float(logp[b, t - 1, y])
                s += ce
                if b < 3:
                    num += ce * (1 + 4.0 * (int(batch["focus"][b, t]) > 0))
                    den += 1
            sums.append(s)
        pair = np.mean([math.log1p(math.exp(sums[1 + i] - sums[3 + i])) for i in range(2)])
        got = float(caption_loss(model, batch, 4.0, focus_size=4.0, pairs=2, contrast=2.5))
        assert abs(got - (num / den + 2.5 * pair)) < 1e-4
        # contrast 0 keeps only the mean over the non-corrupted rows
        assert abs(float(caption_loss(model, batch, 4.0, focus_size=4.0, pairs=2)) - num / den) < 1e-4


def test_position_contrast_changes_training_only_from_contrast_start(tmp_path):
    """Before --contrast-start the run is the plain run bit for bit (no pairs drawn, same batches); starting at
    step 0 (no ramp) it differs."""
    from promptecho.shapes.train_vlm import main

    args = ["--steps", "2", "--vision-steps", "1", "--batch-size", "4", "--scenes", "48", "--seed", "2", "--threads", "1",
            "--focus-warmup", "0", "--contrast-pairs", "2"]
    main(args + ["--out", str(tmp_path / "plain")])
    main(args + ["--position-contrast", "1", "--contrast-start", "2", "--out", str(tmp_path / "late")])
    main(args + ["--position-contrast", "1", "--out", str(tmp_path / "on")])
    w = {k: load_file(str(tmp_path / k / "model.safetensors")) for k in ("plain", "late", "on")}
    assert all(torch.equal(w["plain"][k], w["late"][k]) for k in w["plain"])
    assert not all(torch.equal(w["plain"][k], w["on"][k]) for k in w["plain"])
    meta = json.loads((tmp_path / "late" / "training.json").read_text())
    assert meta["position_contrast"] == 1.0 and meta["contrast_start"] == 2


def test_pointer_changes_training_only_from_pointer_start(tmp_path):
    """--pointer 0 and a --pointer-start after the last step train bit for bit the same model; from step 0 the
    attention supervision changes the weights (the tap is wired into the real training loop)."""
    from promptecho.shapes.train_vlm import main

    args = ["--steps", "2", "--vision-steps", "1", "--batch-size", "4", "--scenes", "48", "--seed", "2", "--threads", "1",
            "--focus-warmup", "0"]
    main(args + ["--pointer", "0", "--out", str(tmp_path / "off")])
    main(args + ["--pointer-start", "2", "--out", str(tmp_path / "late")])
    main(args + ["--pointer-start", "0", "--out", str(tmp_path / "on")])
    w = {k: load_file(str(tmp_path / k / "model.safetensors")) for k in ("off", "late", "on")}
    assert all(torch.equal(w["off"][k], w["late"][k]) for k in w["off"])
    assert not all(torch.equal(w["off"][k], w["on"][k]) for k in w["off"])
    meta = json.loads((tmp_path / "on" / "training.json").read_text())
    assert (meta["pointer"], meta["pointer_start"], meta["pointer_layer"], meta["pointer_head"]) == (1.0, 0, 2, 0)


def test_grounding_rows_place_every_object_repeated_kinds_included():
    """grounding_answer parses back to one position per object, in scene order, at the object's own cell (a repeated
    kind once per copy); make_rows asks it for about the requested share of caption rows, and share 0 draws exactly
    the rows it drew before the option existed (same rng stream)."""
    import random

    from promptecho.shapes.train_vlm import GROUNDING_QUERY, grounding_answer, make_rows
    from promptecho.shapes.world import REGIONS, parse_positions, sample_split

    data = sample_split("train", 120, seed=3)
    repeated = 0
    for sc, _ in data:
        got = [(p.color, p.shape, p.region) for p in parse_positions(grounding_answer(sc))]
        assert got == [(o.color, o.shape, REGIONS[(o.row, o.col)]) for o in sc.objects]
        repeated += len({(o.color, o.shape) for o in sc.objects}) < len(sc.objects)
    assert repeated  # the case the task exists for is in the sample
    rows = make_rows(random.Random(0), data, 2000, vqa_share=0.2, grounding=0.25)
    questions = [q for _, q, _ in rows]
    share = questions.count(GROUNDING_QUERY) / sum(not q.startswith("Does") for q in questions)
    assert abs(share - 0.25) < 0.04, share
    plain = make_rows(random.Random(1), data, 50, vqa_share=0.2)
    same = make_rows(random.Random(1), data, 50, vqa_share=0.2, grounding=0.0)
    assert [r[1:] for r in plain] == [r[1:] for r in same] and GROUNDING_QUERY not in [q for _, q, _ in plain]


def test_linear_probe_known_answers():
    """Separable classes are named perfectly; labels independent of the features come out near chance."""
    from promptecho.shapes.train_vlm import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.arange(9).repeat(200)
    centres = torch.randn(9, 16, generator=g) * 5
    x = centres[y] + 0.1 * torch.randn(len(y), 16, generator=g)
    assert linear_probe_accuracy(x[:1200], y[:1200], x[1200:], y[1200:]) == 1.0
    noise = torch.randn(len(y), 16, generator=g)
    assert linear_probe_accuracy(noise[:1200], y[:1200], noise[1200:], y[1200:]) < 0.25


def test_vision_position_head_puts_each_cell_into_its_token():
    """With position=True the pre-training stage also names each cell token's cell (held-out 'cell' accuracy);
    after it, a linear probe on what the decoder receives recovers the cell far above chance (1/9)."""
    import random

    from promptecho.shapes.train_vlm import build_model_and_processor, build_tokenizer, cell_probe, pretrain_vision
    from promptecho.shapes.world import sample_split

    torch.set_num_threads(1)
    data = sample_split("train", 400, seed=0)
    tok = build_tokenizer([c for _, c in data])
    model, proc = build_model_and_processor(tok, seed=0)
    acc = pretrain_vision(model, proc, data, random.Random(0), steps=300, batch_size=32, lr=2e-3, device="cpu",
                          position=True)
    assert acc["cell"] > 0.8, acc
    assert cell_probe(model, proc, "cpu", n_train=200, n_test=100) > 0.8


def test_pointer_marks_the_tokens_predicting_each_position_predicate_and_its_loss_is_the_heads_own_attention():
    """Batcher's pointer mask sits on the tokens that predict each position sentence's predicate (shifted by one
    they decode to it) with the named cell; pointer_loss equals -log of the tapped head's attention on that cell's
    image token as the model itself computes it (eager attention weights), and is left out for corrupted rows."""
    from promptecho import DEFAULT_QUERY
    from promptecho.shapes.render import render
    from promptecho.shapes.train_vlm import (AttentionTap, Batcher, build_model_and_processor, build_tokenizer,
                                             caption_loss, pointer_loss)
    from promptecho.shapes.world import GRID, REGION_CELL, atom_word_spans, parse_positions, sample_split

    data = [d for d in sample_split("train", 80, seed=5) if parse_positions(d[1])][:3]
    tok = build_tokenizer([c for _, c in sample_split("train", 200, seed=0)])
    model, proc = build_model_and_processor(tok, seed=0)
    model.set_attn_implementation("eager")
    rows = [(render(sc), DEFAULT_QUERY, cap) for sc, cap in data] + [(render(data[0][0]), "Q?", "Yes")]
    batch = Batcher(proc)(rows)
    for b, (_, cap) in enumerate(data):
        marked = batch["pointer"][b].nonzero().flatten()
        want_cells = [1 + REGION_CELL[p.region][0] * GRID + REGION_CELL[p.region][1] for p in parse_positions(cap)]
        assert sorted(set(batch["pointer"][b][marked].tolist())) == sorted(set(want_cells))
        got = tok.decode(batch["input_ids"][b][marked + 1]).split()
        want = " ".join(cap[s:e] for s, e in atom_word_spans(cap, "predicate")["position"]).split()
        assert got == want, (got, want)
    assert not batch["pointer"][-1].any()
    tap = AttentionTap(model, layer=1, head=2)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k not in ("focus", "pointer", "labels")},
                    output_attentions=True)
        att = out.attentions[1][:, 2].float()  # [B, T, T], softmax over keys
        image_at = [(batch["input_ids"][b] == model.config.image_token_id).nonzero().flatten() for b in range(4)]
        terms = [-math.log(float(att[b, t, image_at[b][int(batch["pointer"][b, t]) - 1]]))
                 for b in range(4) for t in batch["pointer"][b].nonzero().flatten().tolist()]
        assert abs(float(pointer_loss(tap, batch, model.config.image_token_id)) - np.mean(terms)) < 1e-5
        n_last = int((batch["pointer"][2] > 0).sum())
        kept = terms[:len(terms) - n_last]
        assert abs(float(pointer_loss(tap, batch, model.config.image_token_id, skip_last=2)) - np.mean(kept)) < 1e-5
        base = float(caption_loss(model, batch, 0.0))
        assert abs(float(caption_loss(model, batch, 0.0, pointer=0.5, tap=tap)) - (base + 0.5 * np.mean(terms))) < 1e-5
    with pytest.raises(ValueError, match="pointer layer 9 out of range"):
        AttentionTap(model, layer=9)
    with pytest.raises(ValueError, match="pointer head 4 out of range"):
        AttentionTap(model, layer=1, head=4)
