"""`make demo`: score the bundled ShapesWorld example with the built-in VLM, print it, write the heatmap."""
from __future__ import annotations

import json
import os

from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "images")


def _read(name: str) -> str:
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return f.read().strip()


def run_demo(out: str) -> int:
    from .heatmap import heatmap_json, render_heatmap
    from .shapes import default_vlm_path, has_default_vlm
    from .vlm import load_vlm

    os.makedirs(out, exist_ok=True)
    if has_default_vlm():
        model_dir, stand_in = default_vlm_path(), False
    else:  # only before the embedded model exists: a random-weight model, clearly labelled
        from .testing.tiny_vlms import build_tiny_vlm
        model_dir, stand_in = build_tiny_vlm("llava", os.path.join(out, "tiny-llava")), True
    vlm = load_vlm(model_dir, dtype="float32", device="cpu")
    image = Image.open(os.path.join(EXAMPLES, "shapes_example.png")).convert("RGB")
    prompt, wrong = _read("shapes_example.txt"), _read("shapes_example_wrong.txt")
    right_res, wrong_res = vlm.score([image, image], [prompt, wrong])
    [vqa_right, vqa_wrong] = vlm.vqascore([image, image], [prompt, wrong])

    print(f"model: {model_dir}" + ("  (RANDOM-WEIGHT STAND-IN: scores are meaningless)" if stand_in else ""))
    print(f"image: {os.path.join(EXAMPLES, 'shapes_example.png')}")
    for tag, r, v in (("true caption", right_res, vqa_right), ("one relation flipped", wrong_res, vqa_wrong)):
        print(f"\n[{tag}] PromptEcho reward {r.reward:.4f}   VQAScore P(yes) {v.p_yes:.4f}")
        print(f"  {r.prompt}")
        print("  per-word loss: " + " ".join(f"{w.text}:{w.loss:.2f}" for w in r.words))
    diff = [(a.text, b.text, b.loss - a.loss) for a, b in zip(right_res.words, wrong_res.words) if a.text != b.text]
    if diff:
        print("\nchanged words: " + ", ".join(f"{a!r} -> {b!r} (loss {d:+.2f} nats)" for a, b, d in diff))
    render_heatmap(right_res).save(os.path.join(out, "heatmap.png"))
    render_heatmap(wrong_res).save(os.path.join(out, "heatmap_wrong.png"))
    with open(os.path.join(out, "score.json"), "w", encoding="utf-8") as f:
        json.dump({"model": model_dir, "stand_in": stand_in,
                   "true": {**heatmap_json(right_res), "vqascore": vqa_right.to_json()},
                   "wrong": {**heatmap_json(wrong_res), "vqascore": vqa_wrong.to_json()}}, f, ensure_ascii=False,
                  indent=1)
    print(f"\nwrote {os.path.join(out, 'heatmap.png')}, {os.path.join(out, 'heatmap_wrong.png')} and "
          f"{os.path.join(out, 'score.json')}")
    return 0
