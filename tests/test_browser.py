"""The Gradio app in a real browser: Playwright (PyPI) driving Debian's Chromium, never a downloaded browser.

Score tab: the bundled example is scored, the prompt comes back as coloured words whose losses match an
independent scoring of the same image, the heatmap PNG loads, and an empty prompt shows an error without
breaking the tab. Train tab: a ShapesWorld GRPO session runs, the reward curve is checked as drawn (SVG path
geometry, stroke colour, and the stroke's pixels in a screenshot of the plot), Stop saves, Export writes a LoRA.
Screenshots go to test-artifacts/browser/ (gitignored).

Needs `pip install -r requirements-browser.txt` and `apt-get install chromium` (.ci/run does both through make);
skipped with the reason otherwise. PROMPTECHO_CHROMIUM overrides the browser path."""
import io
import os
import re
import shutil
import time

import pytest
from PIL import Image

from ui_fixtures import ui_app, ui_models_dir  # noqa: F401

try:  # the Train tab's fixtures land with the tab
    from ui_fixtures import TINY_TRAIN_TOML, ui_generator_dir  # noqa: F401
except ImportError:
    TINY_TRAIN_TOML = None

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "test-artifacts", "browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def _chromium():
    cand = os.environ.get("PROMPTECHO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None


sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -r requirements-browser.txt)")
if _chromium() is None:
    pytest.skip("Debian's Chromium is not installed (apt-get install -y chromium; .ci/run does it)",
                allow_module_level=True)


def _note(key, value):
    """Record a timing in test-artifacts/browser/timings.json (diagnostics for slow or loaded machines)."""
    import json
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "timings.json")
    data = {}
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
    data[key] = round(value, 2)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def _shot(target, name, **kw):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    target.screenshot(path=path, **kw)
    return path


@pytest.fixture(scope="module")
def browser():
    if os.path.isfile(os.path.join(ARTIFACTS, "timings.json")):
        os.remove(os.path.join(ARTIFACTS, "timings.json"))
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, ui_app):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(90_000)  # generous: on a busy 2-core machine the renderer gets few frames
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(ui_app[0])
    pg.get_by_role("button", name="Score", exact=True).wait_for()
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _label(pg, start):
    """Inputs whose label contains `start`, the label's first words (its explanation may be reworded)."""
    return pg.get_by_label(start)


def _visible(locator):
    return locator.locator("visible=true").first


def _pick(pg, label, option):
    """Choose `option` in the visible Gradio dropdown labelled `label`."""
    box = _visible(pg.get_by_label(label, exact=True))
    box.click()
    pg.get_by_role("option", name=option, exact=True).locator("visible=true").first.click()
    assert box.input_value() == option


def _wait_text(locator, pattern, timeout=120):
    """Wait until the locator's text matches `pattern`; return the match."""
    t0, text = time.time(), ""
    while time.time() - t0 < timeout:
        text = locator.inner_text()
        m = re.search(pattern, text)
        if m:
            return m
        time.sleep(0.25)
    raise AssertionError(f"after {timeout}s the text is {text!r}, expected /{pattern}/")


def _rgb(css):
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", css.strip())
    assert m, f"not a colour: {css!r}"
    assert m.group(4) is None or float(m.group(4)) > 0.5, f"transparent colour {css!r}"
    return tuple(int(m.group(i)) for i in (1, 2, 3))


def _count_near(img, rgb, tol=40):
    r0, g0, b0 = rgb
    return sum(1 for (r, g, b) in img.convert("RGB").getdata()
               if abs(r - r0) + abs(g - g0) + abs(b - b0) <= tol)


def test_score_example_coloured_words_and_heatmap(page, ui_models_dir):
    from promptecho.shapes import default_vlm_path, has_default_vlm
    from promptecho.vlm import load_vlm
    from ui import core

    pg = page
    builtin = has_default_vlm()  # the default choice when the checkout has it; else a tiny model from the fixture
    if not builtin:
        _pick(pg, "Reward VLM", "tiny-llava")
    pg.get_by_role("button", name="Use example", exact=True).click()
    prompt = core.example_prompts()[0]
    t0 = time.time()
    while _visible(pg.get_by_label("Prompt", exact=True)).input_value() != prompt:
        assert time.time() - t0 < 60, "'Use example' did not fill the prompt"
        time.sleep(0.2)
    t_score = time.time()
    pg.locator("#pe-score-btn").click()
    _wait_text(pg.locator("#pe-score-status"), r"^Scored\.$")
    _note("score_click_to_words_s", time.time() - t_score)

    words = pg.locator("#pe-words-a .pe-word")
    spans = words.evaluate_all("""els => els.map(e => ({
        text: e.firstChild.textContent, loss: parseFloat(e.dataset.loss),
        bg: getComputedStyle(e).backgroundColor, w: e.getBoundingClientRect().width}))""")
    assert [s["text"] for s in spans] == prompt.split(), "the coloured words are not the prompt's words"
    assert all(s["w"] > 0 for s in spans), "a word is not laid out"
    colours = [_rgb(s["bg"]) for s in spans]
    assert len(set(colours)) >= 3, f"words are not coloured by loss: {set(colours)}"

    # the losses shown are the model's: score the same image independently
    img = Image.open(core.example_image_path()).convert("RGB")
    vlm = load_vlm(default_vlm_path() if builtin else os.path.join(ui_models_dir, "tiny-llava"),
                   dtype="float32", device="cpu")
    [ref] = vlm.score([img], [prompt])
    assert [s["loss"] for s in spans] == pytest.approx([w.loss for w in ref.words], abs=1e-4)
    # higher loss -> the ramp's darker end: the worst word is darker than the best one
    lum = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b in colours]
    worst, best = max(range(len(spans)), key=lambda i: spans[i]["loss"]), min(range(len(spans)),
                                                                             key=lambda i: spans[i]["loss"])
    assert lum[worst] < lum[best]
    # the browser paints that colour: the worst word's own pixels are mostly its background colour
    shot = Image.open(io.BytesIO(words.nth(worst).screenshot()))
    assert _count_near(shot, colours[worst]) > 0.4 * shot.width * shot.height

    heat = pg.locator("img[src*='heatmap-']").first
    heat.wait_for()
    size = heat.evaluate("e => [e.complete, e.naturalWidth, e.naturalHeight]")
    assert size[0] and size[1] > 100 and size[2] > 50, f"heatmap image did not load: {size}"
    _shot(pg, "score.png", full_page=True)
    _shot(pg.locator("#pe-words-a"), "score_words.png")


def test_score_empty_prompt_shows_error_and_app_keeps_working(page):
    pg = page
    box = _visible(pg.get_by_label("Prompt", exact=True))
    box.fill("   ")
    pg.locator("#pe-score-btn").click()
    _wait_text(pg.locator("#pe-score-status"), r"Error: the prompt is empty")
    assert pg.locator("#pe-words-a .pe-word").count() == 0, "stale words shown next to the error"
    _shot(pg, "score_error.png", full_page=True)
    box.fill("a small red triangle")
    pg.locator("#pe-score-btn").click()
    _wait_text(pg.locator("#pe-score-status"), r"^Scored\.$")
    assert pg.locator("#pe-words-a .pe-word").count() == 4


def _line_marks(plot):
    """[(series, stroke, n_points, path_d)] of the line marks in a Vega SVG plot."""
    return plot.locator("svg path[aria-roledescription='line mark']").evaluate_all("""els => els.map(e => {
        const label = e.getAttribute('aria-label') || '';
        const m = label.match(/series: ([^;]*)$/);
        const cs = getComputedStyle(e);
        return [m ? m[1].trim() : label, e.getAttribute('stroke') || '', cs.stroke, parseFloat(cs.strokeWidth),
                (e.getAttribute('d') || '').split(/[ML]/).filter(s => s.trim()).length, e.getAttribute('d')];
    })""")


# Gradio 6's LinePlot fixes its colour domain when the chart is first embedded; later data updates (view.data)
# keep it, so a series that first appears in a later frame (the smoothed curve, which needs 2 points; or the train
# curve when the first frame held only the step-0 evaluation) is drawn without a stroke: in the legend, not on the
# chart. ui/train_tab.py has to re-embed the chart when the series change (e.g. send x_lim with each update).
STROKELESS = ("Known bug: Gradio 6 LinePlot draws series that appear after the first frame without a stroke "
              "(ui/train_tab.py must re-render the plot when the series change).")
MAX_STEPS = 100000  # unreachable: Stop must come first however slow the machine (under load 100 steps finished before Stop landed)


def _stop_quietly(url):
    try:
        import gradio_client
        gradio_client.Client(url, verbose=False).predict(api_name="/train_stop")
    except Exception:  # noqa: BLE001 - best effort cleanup only
        pass


@pytest.mark.skipif(TINY_TRAIN_TOML is None, reason="the Train tab (ui/train_tab.py) is not in this build")
def test_train_session_curve_drawn_stop_export(page, ui_app, ui_generator_dir, ui_models_dir):
    try:
        _train_session(page, ui_app, ui_generator_dir, ui_models_dir)
    except Exception:  # a failure (not a skip / xfail): keep what the page showed
        try:
            _shot(page, "train_failure.png", full_page=True, timeout=20_000)
        except Exception:  # noqa: BLE001 - the original failure matters more
            pass
        raise


def _train_session(pg, ui_app, ui_generator_dir, ui_models_dir):
    from safetensors.torch import load_file

    pg.get_by_role("tab", name="Train").click()
    pg.get_by_role("tab", name="Train", selected=True).wait_for()
    unavailable = pg.get_by_text("Training is not available")
    _visible(pg.locator("#pe-train-start").or_(unavailable)).wait_for()  # the tab renders on first open
    if pg.locator("#pe-train-start").count() == 0:
        pytest.skip("the Train tab is not available in this build: "
                    + _visible(pg.get_by_text("Training is not available")).inner_text())
    # evaluate rarely: each evaluation adds images to the gallery that every poll re-sends to the page
    toml = re.sub(r"(?m)^eval_every *=.*$", "", TINY_TRAIN_TOML) + "eval_every = 10\n"
    _visible(_label(pg, "Config (TOML or JSON")).fill(toml)
    _visible(_label(pg, "…or prompts")).fill("a red circle\na blue square\na green star")
    _pick(pg, "Reward VLM", "tiny-llava")
    _visible(_label(pg, "Generator pipeline folder")).fill(
        ui_generator_dir)
    _visible(_label(pg, "Max steps")).fill(str(MAX_STEPS))
    t_start = time.time()
    pg.locator("#pe-train-start").click()
    m = None
    try:  # run until two train steps are in, then Stop (which must save a checkpoint)
        _wait_text(pg.locator("#pe-train-status"), rf"step ([2-9]|\d\d+)/{MAX_STEPS}", timeout=150)
        _note("start_to_step2_s", time.time() - t_start)
        t_click = time.time()
        pg.evaluate("1")
        _note("page_js_latency_while_training_s", time.time() - t_click)
        t_click = time.time()
        pg.locator("#pe-train-stop").click(timeout=240_000)  # a starved renderer (busy machine) takes long
        _note("stop_click_s", time.time() - t_click)  # how long the page took to take the click while training
        m = _wait_text(pg.locator("#pe-train-status"),
                       r"(session-[\w-]+): (?:stopped|finished) at step (\d+); saved step-0*(\d+)", timeout=240)
    finally:  # never leave a session training behind the rest of the test run
        if m is None:
            _stop_quietly(ui_app[0])
    assert "stopped" in m.group(0), f"Stop did not stop the session: {m.group(0)}"
    name, n = m.group(1), int(m.group(2))
    assert n >= 2 and int(m.group(3)) == n
    sess = os.path.join(ui_app[1].out_dir, "sessions", name)
    assert os.path.isdir(os.path.join(sess, "checkpoints", f"step-{n:06d}"))

    # the reward curve is drawn: a line through all n train steps, with a visible stroke, whose pixels show up
    plot = pg.locator("#pe-reward-plot")
    t0 = time.time()
    while True:
        marks = {s: (attr, cs, w, k, d) for s, attr, cs, w, k, d in _line_marks(plot)}
        if "train reward" in marks and marks["train reward"][3] >= n:
            break
        assert time.time() - t0 < 60, f"no train reward line with {n} points in the plot: {marks}"
        time.sleep(0.3)
    plot.scroll_into_view_if_needed()
    plot_png = _shot(plot, "train_reward_plot.png")
    img = Image.open(plot_png)
    assert "train reward (smoothed)" in marks, f"no smoothed curve: {sorted(marks)}"
    strokeless = []
    for series, (attr, cs, width, k, d) in marks.items():  # every series with a line, eval reward included
        if series.startswith("train"):
            assert k >= n, f"{series}: {k} points, expected {n}: {d}"
        elif k < 2:
            continue  # a single evaluation is a point, not a line
        assert width > 0, f"the {series!r} line has zero width"
        if not attr or cs in ("none", "transparent", "rgba(0, 0, 0, 0)"):
            strokeless.append(series)  # known Gradio 6 behaviour, reported at the end (see STROKELESS)
            continue
        px = _count_near(img, _rgb(cs), tol=60)
        assert px > 40, f"the {series!r} line ({cs}) is in the SVG but only {px} of its pixels were painted"
    assert len(strokeless) < len([s for s in marks if marks[s][3] >= 2]), f"no line has a stroke: {marks}"
    # line geometry spans the x range of the steps (not a point stack)
    xs = [float(v) for v in re.findall(r"[ML]\s*([-\d.]+)", marks["train reward"][4])]
    assert max(xs) - min(xs) > 50, marks["train reward"][4]

    # export: pick the session, copy into a loras folder inside the models folder
    _pick(pg, "Past sessions", name)
    loras = os.path.join(ui_models_dir, "loras-browser")
    _visible(_label(pg, "Copy the LoRA into")).fill(loras)
    pg.locator("#pe-train-export").click()
    _wait_text(pg.locator("#pe-export-status"), r"Exported \S+\.safetensors; copied to")
    copied = os.path.join(loras, f"{name}-step-{n:06d}.safetensors")
    tensors = load_file(copied)
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    # the browser downloads the same bytes
    fname = f"{name}-step-{n:06d}.safetensors"
    link = pg.locator(f"a[data-testid='download-link'][download='{fname}']")
    link.wait_for()  # the 'Exported LoRA' file component offers it for download
    with pg.expect_download() as dl:
        link.click()
    with open(dl.value.path(), "rb") as a, open(copied, "rb") as b:
        assert a.read() == b.read(), "the downloaded LoRA differs from the exported file"
    _shot(pg, "train.png", full_page=True)
    if strokeless:
        pytest.xfail(STROKELESS + f" Invisible here: {strokeless}.")
