"""Write the example workflows in both ComfyUI formats (API for automation, UI for drag-and-drop).

    python examples/make_workflows.py      # regenerates examples/workflows/*.json

Each workflow is one compact spec below; widget order for the UI format comes from the nodes' own
INPUT_TYPES, so the files stay in sync with the node definitions.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from nodes import NODE_CLASS_MAPPINGS  # noqa: E402

SHAPES_PROMPT = open(os.path.join(HERE, "images", "shapes_example.txt"), encoding="utf-8").read().strip()

# ComfyUI core nodes used here: (inputs in order as (name, type, is_widget), outputs)
CORE = {
    "LoadImage": ([("image", "COMBO", True), ("upload", "IMAGEUPLOAD", True)], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "ImageBatch": ([("image1", "IMAGE", False), ("image2", "IMAGE", False)], [("IMAGE", "IMAGE")]),
    "PreviewImage": ([("images", "IMAGE", False)], []),
    "SaveImage": ([("images", "IMAGE", False), ("filename_prefix", "STRING", True)], []),
    "CheckpointLoaderSimple": ([("ckpt_name", "COMBO", True)], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("text", "STRING", True), ("clip", "CLIP", False)], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([("width", "INT", True), ("height", "INT", True), ("batch_size", "INT", True)],
                         [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL", False), ("seed", "INT", True), ("control_after_generate", "COMBO", True),
                  ("steps", "INT", True), ("cfg", "FLOAT", True), ("sampler_name", "COMBO", True),
                  ("scheduler", "COMBO", True), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False), ("denoise", "FLOAT", True)],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
}


def node_io(cls_name):
    if cls_name in CORE:
        return CORE[cls_name]
    cls = NODE_CLASS_MAPPINGS[cls_name]
    spec = cls.INPUT_TYPES()
    ins = []
    for section in ("required", "optional"):
        for name, val in spec.get(section, {}).items():
            t = val[0]
            widget = isinstance(t, list) or t in ("STRING", "INT", "FLOAT", "BOOLEAN")
            ins.append((name, "COMBO" if isinstance(t, list) else t, widget))
    return ins, list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))


def build(spec):
    """spec: {id: (class, {input: value or (src_id, slot)})} -> (api, ui)."""
    api = {str(i): {"class_type": c, "inputs": {k: ([str(v[0]), v[1]] if isinstance(v, tuple) else v)
                                                 for k, v in inp.items()}}
           for i, (c, inp) in spec.items()}
    links, nodes = [], []
    out_links = {}
    for i, (c, inp) in spec.items():
        for k, v in inp.items():
            if isinstance(v, tuple):
                lid = len(links) + 1
                ins, _ = node_io(c)
                to_slot = [n for n, _, w in ins if not w].index(k)
                src_type = node_io(spec[v[0]][0])[1][v[1]][1]
                links.append([lid, v[0], v[1], i, to_slot, src_type])
                out_links.setdefault((v[0], v[1]), []).append(lid)
    for order, (i, (c, inp)) in enumerate(spec.items()):
        ins, outs = node_io(c)
        col, row = order % 4, order // 4
        # room for the heatmap widget (Best-of-N also lists the ranking above it)
        size = {"PromptEchoScore": [460, 560], "PromptEchoBestOfN": [460, 660]}.get(c, [400, 320])
        node = {"id": i, "type": c, "pos": [40 + 500 * col, 60 + 600 * row], "size": size, "flags": {},
                "order": order, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": next((l[0] for l in links if l[3] == i and l[4] == s), None)}
                           for s, (n, t) in enumerate((n, t) for n, t, w in ins if not w)],
                "outputs": [{"name": n, "type": t, "links": out_links.get((i, s), []), "slot_index": s}
                            for s, (n, t) in enumerate(outs)],
                "properties": {"Node name for S&R": c},
                "widgets_values": [inp.get(n, "image" if t == "IMAGEUPLOAD" else "randomize"
                                           if n == "control_after_generate" else None) for n, t, w in ins if w]}
        nodes.append(node)
    ui = {"last_node_id": max(spec), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
          "config": {}, "extra": {}, "version": 0.4}
    return api, ui


WORKFLOWS = {
    "score_shapesworld": {
        1: ("LoadImage", {"image": "shapes_example.png"}),
        2: ("PromptEchoLoadVLM", {"model": "ShapesWorld (built-in)", "dtype": "fp32", "device": "auto",
                                  "keep_loaded": True, "custom_path": "", "allow_download": False,
                                  "trust_remote_code": False, "quantization": "none"}),
        3: ("PromptEchoScore", {"vlm": (2, 0), "images": (1, 0), "prompt": SHAPES_PROMPT,
                                "query": "Describe this image in detail.", "reduction": "mean", "batch_size": 8}),
        4: ("PreviewImage", {"images": (3, 3)}),
    },
    "best_of_n_shapesworld": {
        1: ("LoadImage", {"image": "candidate_0.png"}),
        2: ("LoadImage", {"image": "candidate_1.png"}),
        3: ("LoadImage", {"image": "candidate_2.png"}),
        4: ("LoadImage", {"image": "candidate_3.png"}),
        5: ("ImageBatch", {"image1": (1, 0), "image2": (2, 0)}),
        6: ("ImageBatch", {"image1": (5, 0), "image2": (3, 0)}),
        7: ("ImageBatch", {"image1": (6, 0), "image2": (4, 0)}),
        8: ("PromptEchoLoadVLM", {"model": "ShapesWorld (built-in)", "dtype": "fp32", "device": "auto",
                                  "keep_loaded": True, "custom_path": "", "allow_download": False,
                                  "trust_remote_code": False, "quantization": "none"}),
        9: ("PromptEchoBestOfN", {"vlm": (8, 0), "images": (7, 0), "prompt": SHAPES_PROMPT, "top_k": 4,
                                  "method": "promptecho", "query": "Describe this image in detail."}),
        10: ("PreviewImage", {"images": (9, 0)}),
        11: ("PreviewImage", {"images": (9, 1)}),
    },
    "sdxl_best_of_8_qwen3vl_recipe": {
        1: ("CheckpointLoaderSimple", {"ckpt_name": "sd_xl_base_1.0.safetensors"}),
        2: ("CLIPTextEncode", {"text": "a red fox sitting in tall grass at sunset, a wooden fence behind it",
                               "clip": (1, 1)}),
        3: ("CLIPTextEncode", {"text": "", "clip": (1, 1)}),
        4: ("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 8}),
        5: ("KSampler", {"model": (1, 0), "seed": 0, "steps": 30, "cfg": 6.0, "sampler_name": "euler",
                         "scheduler": "normal", "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0),
                         "denoise": 1.0}),
        6: ("VAEDecode", {"samples": (5, 0), "vae": (1, 2)}),
        7: ("PromptEchoLoadVLM", {"model": "LLM/Qwen3-VL-8B-Instruct", "dtype": "bf16", "device": "cuda",
                                  "keep_loaded": False, "custom_path": "", "allow_download": False,
                                  "trust_remote_code": False, "quantization": "none"}),
        8: ("PromptEchoBestOfN", {"vlm": (7, 0), "images": (6, 0), "latent": (5, 0),
                                  "prompt": "a red fox sitting in tall grass at sunset, a wooden fence behind it",
                                  "top_k": 2, "method": "promptecho", "query": "Describe this image in detail."}),
        9: ("SaveImage", {"images": (8, 0), "filename_prefix": "promptecho_best"}),
    },
}


def main():
    out = os.path.join(HERE, "workflows")
    os.makedirs(out, exist_ok=True)
    for name, spec in WORKFLOWS.items():
        api, ui = build(spec)
        with open(os.path.join(out, f"{name}_api.json"), "w", encoding="utf-8") as f:
            json.dump(api, f, indent=1, ensure_ascii=False)
        with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(ui, f, indent=1, ensure_ascii=False)
        print("wrote", name)


if __name__ == "__main__":
    main()
