"""Train tab through gradio_client: config save/load (TOML, JSON), prompt sets (.txt/.jsonl/.csv and the
DenseAlignBench .jsonl format), a 2-step ShapesWorld session that streams curves and eval images, stop (saves),
resume, past sessions, LoRA export (download + copy into an allowed loras folder); bad input leaves the tab working.
Runs under Gradio 6 and, via `make test-ui-compat`, under the 3.41 / 4.40 clients too."""
import json
import os
import re
import time

import pytest

from ui_fixtures import TINY_TRAIN_TOML, make_client, ui_app, ui_generator_dir, ui_models_dir  # noqa: F401

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.slow

DENSEALIGNBENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "shared", "data", "densealignbench_200.jsonl")
SHAPES_PROMPTS = ["a red circle left of a blue square", "a green triangle above a small yellow circle",
                  "a large blue square right of a red triangle"]


def _file(p):
    return gradio_client.handle_file(str(p)) if hasattr(gradio_client, "handle_file") else str(p)


def _path(v):
    """A file output: a path (str) or a {'path'/'name': ...} dict depending on the client version."""
    if isinstance(v, dict):
        v = v.get("path") or v.get("name")
    return v


@pytest.fixture(scope="module")
def client(ui_app):
    return make_client(ui_app[0])


def _wait(job, timeout=420):
    t = time.time()
    while not job.done():
        assert time.time() - t < timeout, "training job did not finish"
        time.sleep(0.3)
    return job.outputs()


def _plot_rows(v):
    """(step, value, series) rows of a LinePlot output: Gradio 5/6 send {columns, data}; 3.41 / 4.40 send an
    Altair spec (gradio_client 0.5 writes it to a JSON file) whose data sit in `datasets`."""
    if isinstance(v, dict) and v.get("__type__") == "update":
        v = v.get("value")
    if v is None:
        return []
    if isinstance(v, str) and os.path.isfile(v):
        with open(v, encoding="utf-8") as f:
            v = json.load(f)
    if isinstance(v, str):
        v = json.loads(v)
    if isinstance(v, dict) and v.get("__type__") == "update":  # gradio_client 0.5 writes an update to the file
        v = v.get("value")
    if v is None:
        return []
    if isinstance(v, dict) and "columns" in v and "data" in v:
        return [tuple(dict(zip(v["columns"], r))[k] for k in ("step", "value", "series")) for r in v["data"]]
    if isinstance(v, dict) and "plot" in v:
        spec = json.loads(v["plot"]) if isinstance(v["plot"], str) else v["plot"]
        rows = [r for ds in spec.get("datasets", {}).values() for r in ds]
        if not rows and isinstance(spec.get("data"), dict):
            rows = spec["data"].get("values", [])
        return [(r["step"], r["value"], r["series"]) for r in rows]
    raise AssertionError(f"unrecognised LinePlot payload: {str(v)[:200]}")


def _gallery_items(g):
    """[(image path, caption)] of a Gallery output, in gallery order. gradio_client 0.5 hands back a folder: each
    image in a subfolder of its own, and captions.json mapping the image paths (in order) to their captions; it
    decodes a no-op gr.update() as one junk file without a caption, which is left out (every item here has one)."""
    if isinstance(g, dict) and g.get("__type__") == "update":
        g = g.get("value")
    if g is None:
        return []
    if isinstance(g, str) and os.path.isdir(g):
        cj = os.path.join(g, "captions.json")
        if not os.path.isfile(cj):
            return []
        with open(cj, encoding="utf-8") as f:
            return [(p, c) for p, c in json.load(f).items() if c is not None]
    out = []
    for it in g:
        if isinstance(it, dict):
            img = it.get("image")
            out.append((_path(img) if img is not None else _path(it), it.get("caption")))
        else:
            out.append((_path(it[0]), it[1] if len(it) > 1 else None))
    return out


def _ema(vals, a):
    out, e = [], None
    for v in vals:
        e = v if e is None else a * e + (1 - a) * v
        out.append(e)
    return out


def _metrics(sess):
    with open(os.path.join(sess, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_config_save_load_presets(client, tmp_path):
    import tomllib

    from promptecho.grpo.config import PRESETS, GRPOConfig
    from ui.training import TAB_FIELDS

    def strip(d):
        return {k: v for k, v in d.items() if k not in TAB_FIELDS}

    # the preset dropdown fills the config box with that preset (tab-managed fields left out)
    text = client.predict("ShapesWorld proof", api_name="/train_preset")
    assert strip(GRPOConfig(**PRESETS["ShapesWorld proof"]).to_dict()) == tomllib.loads(text)

    overrides = tomllib.loads(TINY_TRAIN_TOML)
    overrides.pop("preset")
    expected = strip(GRPOConfig(**{**PRESETS["ShapesWorld quick"], **overrides}).to_dict())
    for fmt, parse in (("TOML", lambda s: tomllib.loads(s)), ("JSON", json.loads)):
        f, msg = client.predict(TINY_TRAIN_TOML, fmt, api_name="/train_config_save")
        assert msg == f"Config saved as {fmt}.", msg
        saved = _path(f)
        assert saved.endswith("." + fmt.lower())
        with open(saved, encoding="utf-8") as fh:
            assert parse(fh.read()) == expected
        # loading the saved file puts a config into the box that means the same thing
        loaded, msg = client.predict(_file(saved), api_name="/train_config_load")
        assert msg.startswith("Loaded "), msg
        assert parse(loaded) == expected

    bad = tmp_path / "bad.toml"
    bad.write_text("group_size = [\n", encoding="utf-8")
    _, msg = client.predict(_file(bad), api_name="/train_config_load")
    assert msg.startswith("**Error:**") and "cannot parse" in msg, msg
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"preset": "ShapesWorld quick", "learning_rate": 1}', encoding="utf-8")
    _, msg = client.predict(_file(unknown), api_name="/train_config_load")
    assert "unknown config keys: learning_rate" in msg, msg
    f, msg = client.predict("group_size = 1", "JSON", api_name="/train_config_save")
    assert f is None and "group_size must be >= 2" in msg, msg


def test_prompt_sets(client, tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("\n".join(SHAPES_PROMPTS) + "\n", encoding="utf-8")
    csv = tmp_path / "p.csv"
    csv.write_text("id,prompt\n1,\"a red circle, left of a blue square\"\n2,a green star\n", encoding="utf-8")
    jl = tmp_path / "dense.jsonl"  # DenseAlignBench's format: one {"caption": ...} object per line
    jl.write_text("".join(json.dumps({"caption": p}) + "\n" for p in SHAPES_PROMPTS), encoding="utf-8")
    assert client.predict(_file(txt), "", api_name="/train_prompts").startswith("**3 prompts**")
    out = client.predict(_file(csv), "", api_name="/train_prompts")
    assert out.startswith("**2 prompts**") and "a red circle, left of a blue square" in out, out
    out = client.predict(_file(jl), "", api_name="/train_prompts")
    assert out.startswith("**3 prompts**") and SHAPES_PROMPTS[0] in out, out
    if os.path.isfile(DENSEALIGNBENCH):
        with open(DENSEALIGNBENCH, encoding="utf-8") as f:
            first = json.loads(f.readline())["caption"]
        out = client.predict(_file(DENSEALIGNBENCH), "", api_name="/train_prompts")
        assert out.startswith("**200 prompts**") and first[:100] in out, out
    assert client.predict(None, "a\nb\n\n", api_name="/train_prompts").startswith("**2 prompts**")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\n{not json\n', encoding="utf-8")
    out = client.predict(_file(bad), "", api_name="/train_prompts")
    assert out.startswith("**Error:**") and "bad.jsonl:2: invalid JSON" in out, out
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": "a red circle"}\n', encoding="utf-8")
    assert "'prompt' or 'caption' field" in client.predict(_file(nofield), "", api_name="/train_prompts")
    holes = tmp_path / "holes.csv"
    holes.write_text("prompt\na red circle\n\"\"\na red circle\n", encoding="utf-8")
    out = client.predict(_file(holes), "", api_name="/train_prompts")
    assert "line 3: empty prompt" in out and "line 4: duplicate of line 2" in out, out
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    assert "not UTF-8" in client.predict(_file(binary), "", api_name="/train_prompts")
    assert "no prompts" in client.predict(None, "  \n ", api_name="/train_prompts")


def test_train_bad_input(client, ui_app, ui_generator_dir, ui_models_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle"}\n{not json\n', encoding="utf-8")
    gen, llava = ui_generator_dir, "tiny-llava"
    cases = [((TINY_TRAIN_TOML, _file(bad), "", llava, "", gen, 2, 0.6), "invalid JSON"),
             ((TINY_TRAIN_TOML, None, "   ", llava, "", gen, 2, 0.6), "no prompts"),
             (("group_size = [", None, "a red circle", llava, "", gen, 2, 0.6), "cannot parse"),
             (("", None, "a red circle", llava, "", gen, 2, 0.6), "config is empty"),
             (("group_size = 1", None, "a red circle", llava, "", gen, 2, 0.6), "group_size"),
             (('preset = "nope"', None, "a red circle", llava, "", gen, 2, 0.6), "unknown preset"),
             ((TINY_TRAIN_TOML, None, "a red circle", llava, "", "/tmp", 2, 0.6), "outside the allowed"),
             ((TINY_TRAIN_TOML, None, "a red circle", llava, "", ui_models_dir, 2, 0.6), "no diffusers pipeline"),
             ((TINY_TRAIN_TOML, None, "a red circle", "Path…", "/etc", gen, 2, 0.6), "outside the allowed"),
             ((TINY_TRAIN_TOML, None, "a red circle", "Path…", os.path.join(ui_models_dir, "gone"), gen, 2, 0.6),
              "no model found")]
    for args, msg in cases:
        outs = _wait(client.submit(*args, api_name="/train_start"))
        assert outs[-1][0].startswith("**Error:**") and msg in outs[-1][0], (msg, outs[-1][0])
    # nothing was left behind as a half-made session
    assert not os.path.isdir(os.path.join(ui_app[1].out_dir, "sessions")) or \
        all(os.path.isfile(os.path.join(ui_app[1].out_dir, "sessions", d, "config.toml"))
            for d in os.listdir(os.path.join(ui_app[1].out_dir, "sessions")))
    for name in ("../etc", "", "session-does-not-exist"):
        msg, f = client.predict(name, "", api_name="/train_export")
        assert "unknown session" in msg and f is None, msg
        outs = _wait(client.submit(name, 2, 0.6, api_name="/train_resume"))
        assert "unknown session" in outs[-1][0]
    assert client.predict(api_name="/train_stop") == "nothing is running"
    # the app still answers
    assert client.predict(None, "a red circle", api_name="/train_prompts").startswith("**1 prompts**")


def test_train_stream_stop_resume_export(client, ui_app, ui_generator_dir, ui_models_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr("ui.train_tab.POLL_S", 0.1)  # many polls per training step: most have nothing new

    jl = tmp_path / "shapes.jsonl"  # uploaded in DenseAlignBench's {"caption": ...} format
    jl.write_text("".join(json.dumps({"caption": p}) + "\n" for p in SHAPES_PROMPTS), encoding="utf-8")
    args = [TINY_TRAIN_TOML, _file(jl), "", "tiny-llava", "", ui_generator_dir, 2, 0.6]
    outs = _wait(client.submit(*args, api_name="/train_start"))
    assert len(outs) >= 2, "no streamed updates"
    final = outs[-1][0]
    assert "finished at step 2" in final, final
    name = re.match(r"(session-[\w-]+):", final).group(1)
    sess = os.path.join(ui_app[1].out_dir, "sessions", name)
    assert os.path.isdir(os.path.join(sess, "checkpoints", "step-000002"))
    with open(os.path.join(sess, "eval_prompts.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:3] == SHAPES_PROMPTS

    # curves: raw train reward per step as in metrics.jsonl, the EMA computed here, eval reward and KL
    ms = _metrics(sess)
    train = [m for m in ms if m["kind"] == "train"]
    evals = [m for m in ms if m["kind"] == "eval"]
    assert [m["step"] for m in train] == [1, 2] and [m["step"] for m in evals] == [0, 1, 2]
    rows = _plot_rows(outs[-1][1])
    raw = [(s, v) for s, v, k in rows if k == "train reward"]
    assert raw == [(m["step"], pytest.approx(m["reward_mean"], abs=1e-6)) for m in train]
    smooth = [v for _, v, k in rows if k == "train reward (smoothed)"]
    assert smooth == pytest.approx(_ema([m["reward_mean"] for m in train], 0.6), abs=1e-6)
    assert [v for _, v, k in rows if k == "eval reward"] == pytest.approx([m["reward_mean"] for m in evals])
    kl_rows = _plot_rows(outs[-1][2])
    assert [v for _, v, k in kl_rows if k == "eval KL"] == pytest.approx([m["kl"] for m in evals])
    assert evals[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # LoRA B starts at 0: the policy is the base
    for sm in (0.0, 0.9):
        r, _k = client.predict(sm, api_name="/train_curves")
        got = [v for _, v, k in _plot_rows(r) if k == "train reward (smoothed)"]
        assert got == (pytest.approx(_ema([m["reward_mean"] for m in train], sm), abs=1e-6) if sm else [])
    # eval gallery: files on disk, newest step first, every eval prompt with its word heatmap
    items = _gallery_items(outs[-1][3])
    assert len(items) == 3 * 2 * 3  # 3 eval rounds x 3 prompts x (image, heatmap)
    assert all(os.path.isfile(p) for p, _ in items)
    caps = [c for _, c in items]
    assert caps[0].startswith("step 2 · prompt 1: ") and caps[1].startswith("step 2 · prompt 1 · reward ")
    assert caps[-1].startswith("step 0 · prompt 3 · reward ")

    # a poll re-sends the curves and the gallery only when they changed (the last frame is always complete)
    shown = [frozenset(os.path.basename(p) for p, _ in _gallery_items(o[3])) for o in outs[:-1]]
    shown = [g for g in shown if g]
    assert shown and all(a != b for a, b in zip(shown, shown[1:])), "a poll re-sent an unchanged gallery"
    drawn = [tuple(_plot_rows(o[1])) for o in outs[:-1]]
    drawn = [d for d in drawn if d]
    assert drawn and all(a != b for a, b in zip(drawn, drawn[1:])), "a poll re-sent unchanged curves"
    assert len(shown) + 1 < len(outs) - 1, f"{len(outs)} frames for {len(shown)} gallery changes"
    monkeypatch.undo()  # back to 1 s polls: a client that downloads each changed gallery would fall behind at 0.1 s

    # past sessions list
    _, table = client.predict(api_name="/train_sessions")
    assert re.search(rf"\| {name} \| 2 \| {train[-1]['reward_mean']:.4f} \|", table), table

    # resume towards a step count it cannot reach; the app answers while the worker trains; Stop saves a checkpoint
    job = make_client(ui_app[0], download_files=False).submit(name, 100000, 0.6, api_name="/train_resume")
    t = time.time()
    while not job.outputs():
        assert time.time() - t < 120 and not job.done(), "no output from resume"
        time.sleep(0.1)
    # the resumed session's first frame shows its earlier evaluation samples (files on disk, by step)
    again = _gallery_items(job.outputs()[0][3])
    assert sorted(os.path.basename(p) for p, _ in again) == sorted(os.path.basename(p) for p, _ in items)
    assert all(os.path.isfile(p) for p, _ in again)
    assert [c for _, c in again] == caps  # order and captions as before the resume
    t = time.time()
    while not any(re.search(r"step ([3-9]|\d\d+)/100000", str(o[0])) for o in job.outputs()):
        assert time.time() - t < 300 and not job.done(), job.outputs()[-1:] if job.outputs() else "no output"
        time.sleep(0.3)
    t = time.time()
    _, table = client.predict(api_name="/train_sessions")
    assert name in table and time.time() - t < 60, "the app did not answer while training"
    assert "stopping" in client.predict(api_name="/train_stop")
    final = _wait(job)[-1][0]
    assert "stopped at step" in final, final
    n = int(re.search(r"at step (\d+)", final).group(1))
    assert 3 <= n < 100000
    ck = os.path.join(sess, "checkpoints", f"step-{n:06d}")
    assert os.path.isdir(ck)
    assert [m["step"] for m in _metrics(sess) if m["kind"] == "train"] == list(range(1, n + 1))

    # export: download + copy into a loras folder inside the models folder; outside it is refused
    msg, f = client.predict(name, str(tmp_path / "loras"), api_name="/train_export")
    assert msg.startswith("**Error:**") and "outside the allowed folders" in msg and f is None, msg
    loras = os.path.join(ui_models_dir, "loras")
    msg, f = client.predict(name, loras, api_name="/train_export")
    assert msg.startswith("Exported") and "copied to" in msg, msg
    copied = load_file(os.path.join(loras, f"{name}-step-{n:06d}.safetensors"))
    downloaded = load_file(_path(f))
    assert sorted(copied) == sorted(downloaded) and all((copied[k] == downloaded[k]).all() for k in copied)
    # independent check against the checkpoint: diffusers keys, alpha / rank folded into lora_B
    with open(os.path.join(ck, "config.json"), encoding="utf-8") as fh:
        c = json.load(fh)
    raw = load_file(os.path.join(ck, "lora.safetensors"))
    scale = c["lora_alpha"] / c["lora_rank"]
    assert len(raw) == len(copied) > 0
    for k, v in raw.items():
        key = "transformer." + k[len("base_model.model."):] if k.startswith("base_model.model.") else "transformer." + k
        exp = v.float() * scale if k.endswith("lora_B.weight") else v.float()
        assert (copied[key] - exp).abs().max() < 1e-6, key
