"""Screenshots of the PromptEcho nodes in a real ComfyUI (README images), taken in a real browser.

    COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python] \\
        python tests/comfyui_screenshots.py [--out docs/img] [--theme dark|light|both]

Starts ComfyUI (`main.py --cpu` on 127.0.0.1, a throw-away user directory) with this pack linked into
custom_nodes/ (as tests/test_comfyui_e2e.py does), opens it in Debian's Chromium through Playwright, loads the
UI-format example workflows with the app's own `loadGraphData`, queues them, waits until the heatmap widget
shows coloured words, checks the widget's text contrast, and saves the region around the PromptEcho nodes as
docs/img/comfyui_<workflow>[_light].png. Not collected by pytest (the file name does not start with test_).
Needs `pip install -r requirements-browser.txt` and `apt-get install chromium`.
"""
import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from test_comfyui_e2e import prepare_comfyui  # noqa: E402  (the e2e harness's set-up: pack link, CPU shim, images)

MAX_BYTES = 300_000


def _get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def start(comfy, python, user_dir, log):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(os.path.join(user_dir, "default"), exist_ok=True)
    with open(os.path.join(user_dir, "default", "comfy.settings.json"), "w") as f:
        # no first-run template browser over the canvas
        json.dump({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}, f)
    proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--disable-auto-launch", "--user-directory", user_dir], cwd=comfy, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        try:
            _get(f"{base}/object_info/PromptEchoScore", timeout=5)
            return proc, base
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"ComfyUI did not start; see {log.name}")
            time.sleep(2)


# Fit the view on the given nodes inside a screen region clear of the app's own overlays (tab bar, side bar, Run
# button, toasts); litegraph maps graph to screen as (graph + offset) * scale. Returns the region to clip.
FIT_JS = """async ([types, left, top, w, h]) => {
  const c = app.canvas, nodes = app.graph._nodes.filter((n) => types.includes(n.type));
  const title = (LiteGraph.NODE_TITLE_HEIGHT || 30) + 22;  // title bar and the pack badge above it
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const pad = 16, scale = Math.min(1, (w - 2 * pad) / (x1 - x0), (h - 2 * pad) / (y1 - y0));
  c.ds.scale = scale;
  c.ds.offset[0] = (left + pad) / scale - x0; c.ds.offset[1] = (top + pad) / scale - y0;
  c.setDirty(true, true);
  await new Promise((r) => setTimeout(r, 1000));
  const rect = c.canvas.getBoundingClientRect();
  return {x: rect.left + left, y: rect.top + top, w: Math.min(w, (x1 - x0) * scale + 2 * pad),
          h: Math.min(h, (y1 - y0) * scale + 2 * pad)};
}"""

# Contrast of every coloured word against its own background (WCAG ratio), read back from the rendered DOM.
CONTRAST_JS = """() => {
  const lum = (s) => { const m = s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map((v) => v / 255)
    .map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]; };
  return [...document.querySelectorAll('.promptecho-heatmap .pe-word')].map((s) => {
    const st = getComputedStyle(s), a = lum(st.color), b = lum(st.backgroundColor);
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  });
}"""


def shoot(page, base, workflow, types, out_png, theme, vw, vh):
    with open(os.path.join(ROOT, "examples", "workflows", workflow), encoding="utf-8") as f:
        graph = json.load(f)
    page.evaluate("async (t) => { await app.extensionManager.setting.set('Comfy.ColorPalette', t); }", theme)
    page.evaluate("async (g) => { await app.loadGraphData(g); }", graph)
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    page.wait_for_function(
        "() => document.querySelectorAll('.promptecho-heatmap .pe-word').length > 0 && "
        "!document.querySelector('.promptecho-heatmap .pe-empty')", timeout=300_000, polling=1000)
    # PreviewImage nodes show their pictures once the history arrives; give the canvas a moment to redraw
    time.sleep(3)
    ratios = page.evaluate(CONTRAST_JS)
    chips = page.evaluate("() => document.querySelectorAll('.promptecho-heatmap .pe-rank').length")
    if "PromptEchoBestOfN" in types and chips != len(graph_batch(graph)):
        raise RuntimeError(f"the Best-of-N widget shows {chips} ranking entries")
    left, top = 70, 140  # clear of the side bar, the tab bar, the Run button and its toasts
    box = page.evaluate(FIT_JS, [types, left, top, vw - left - 10, vh - top - 10])
    png = page.screenshot(clip={"x": box["x"], "y": box["y"], "width": box["w"], "height": box["h"]})
    _save_small(png, out_png)
    return min(ratios), len(ratios)


def graph_batch(graph):
    """The LoadImage nodes feeding the batch (one per candidate image)."""
    return [n for n in graph["nodes"] if n["type"] == "LoadImage"]


def _save_small(png, path):
    """Keep README images under MAX_BYTES: palette-quantise, then shrink until it fits."""
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    scale = 1.0
    while True:
        im = img if scale == 1.0 else img.resize((int(img.width * scale), int(img.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() <= MAX_BYTES or scale < 0.3:
            break
        scale *= 0.85
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


SHOTS = [  # (UI workflow, node types framed in the picture, output name)
    ("score_shapesworld.json", ["LoadImage", "PromptEchoScore", "PreviewImage"], "comfyui_score"),
    ("best_of_n_shapesworld.json", ["PromptEchoBestOfN", "PreviewImage"], "comfyui_best_of_n"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--theme", choices=["dark", "light", "both"], default="both")
    ap.add_argument("--light-shots", type=int, default=1, help="how many workflows to also shoot in light theme")
    args = ap.parse_args()
    comfy = os.environ.get("COMFYUI_DIR")
    if not comfy:
        sys.exit("set COMFYUI_DIR to a ComfyUI checkout whose environment runs (see README, 'ComfyUI')")
    chromium = os.environ.get("PROMPTECHO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        sys.exit("Debian's Chromium is needed: apt-get install -y chromium (or set PROMPTECHO_CHROMIUM)")
    from playwright.sync_api import sync_playwright
    prepare_comfyui(comfy)
    vw, vh = 1600, 1000
    with tempfile.TemporaryDirectory() as user_dir, open(os.path.join(comfy, "promptecho_shots.log"), "w") as log:
        proc, base = start(comfy, os.environ.get("COMFYUI_PYTHON", sys.executable), user_dir, log)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, headless=True,
                                            args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
                page = browser.new_page(viewport={"width": vw, "height": vh})
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base, timeout=300_000)
                page.wait_for_function("() => window.app && app.graph && app.extensionManager?.setting",
                                       timeout=300_000)
                time.sleep(2)
                themes = ["dark", "light"] if args.theme == "both" else [args.theme]
                for theme in themes:
                    for n, (wf, types, name) in enumerate(SHOTS):
                        if theme == "light" and args.theme == "both" and n >= args.light_shots:
                            continue
                        out = os.path.join(args.out, name + ("_light" if theme == "light" else "") + ".png")
                        worst, words = shoot(page, base, wf, types, out, theme, vw, vh)
                        print(f"{out}: {os.path.getsize(out)} bytes, {words} coloured words, "
                              f"lowest text contrast {worst:.1f}:1 ({theme})")
                        if worst < 4.5:
                            print(f"  WARNING: contrast below WCAG AA 4.5:1 in {theme} theme", file=sys.stderr)
                if errors:
                    print("page errors:", *errors, sep="\n  ", file=sys.stderr)
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
