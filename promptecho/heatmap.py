"""Token heatmap: the prompt with each word's background coloured by its PromptEcho loss (PNG and JSON).

Colour map: a magma-like ramp running from pale (low loss: the image supports the word) to dark purple
(high loss: the image does not support it). Lightness decreases monotonically, so the order survives
grey-scale printing and most colour-vision deficiencies.
"""
from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from .results import ScoreResult

# (position, RGB) anchors of the ramp; interpolated linearly in RGB
_ANCHORS: Sequence[Tuple[float, Tuple[int, int, int]]] = (
    (0.00, (252, 253, 191)),
    (0.20, (254, 196, 136)),
    (0.40, (250, 135, 97)),
    (0.60, (222, 73, 104)),
    (0.80, (140, 41, 129)),
    (1.00, (45, 17, 96)),
)
_FONT_CANDIDATES = (  # first found wins; CJK-capable fonts first so non-Latin prompts render
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/arial.ttf",
)


def loss_to_rgb(loss: float, vmin: float = 0.0, vmax: float = 5.0) -> Tuple[int, int, int]:
    """Colour of a loss on the ramp (clipped to [vmin, vmax]); NaN maps to grey."""
    if loss is None or math.isnan(loss):
        return (160, 160, 160)
    t = 0.0 if vmax <= vmin else min(1.0, max(0.0, (loss - vmin) / (vmax - vmin)))
    for (t0, c0), (t1, c1) in zip(_ANCHORS, _ANCHORS[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(int(round(a + (b - a) * f)) for a, b in zip(c0, c1))
    return _ANCHORS[-1][1]


def relative_luminance(rgb) -> float:
    def lin(c):
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color_for(bg) -> Tuple[int, int, int]:
    return (0, 0, 0) if relative_luminance(bg) > 0.18 else (255, 255, 255)


def find_font(size: int, path: Optional[str] = None):
    """A TrueType font (CJK-capable when one is installed, e.g. Debian's fonts-noto-cjk); PIL's built-in
    font otherwise (characters it lacks are drawn as boxes, never an error)."""
    for p in ([path] if path else []) + [os.environ.get("PROMPTECHO_FONT", "")] + list(_FONT_CANDIDATES):
        if p and os.path.isfile(p):
            try:
                return ImageFont.truetype(p, size)
            except OSError:
                continue
    return ImageFont.load_default(size)


def color_range(result: ScoreResult, vmin: Optional[float] = None, vmax: Optional[float] = None):
    """Default scale: 0 to the largest word loss (at least 1 nat), so the worst word is darkest."""
    losses = [w.loss for w in result.words if not math.isnan(w.loss)]
    lo = 0.0 if vmin is None else vmin
    hi = max([1.0] + losses) if vmax is None else vmax
    return lo, max(hi, lo + 1e-6)


def _layout(draw, words, font, width, pad, gap, line_h, text_top, prompt):
    """Positions of word boxes, wrapping at `width`; a newline in the prompt starts a new line."""
    x, y, boxes, prev_end = pad, text_top, [], 0
    for w in words:
        if "\n" in prompt[prev_end:w.start] and boxes:
            x, y = pad, y + line_h
        prev_end = w.end
        tw = draw.textlength(w.text, font=font)
        bw = tw + 2 * gap
        if x + bw > width - pad and x > pad:
            x, y = pad, y + line_h
        boxes.append((x, y, x + min(bw, width - 2 * pad), y + line_h - 4))
        x += bw + gap
    return boxes


def render_heatmap(result: ScoreResult, width: int = 768, font_size: int = 16, vmin: Optional[float] = None,
                   vmax: Optional[float] = None, title: Optional[str] = None, font_path: Optional[str] = None
                   ) -> Image.Image:
    """PNG-ready RGB image: header with the reward, word-wrapped prompt coloured by word loss, colour legend."""
    lo, hi = color_range(result, vmin, vmax)
    font, small = find_font(font_size, font_path), find_font(max(10, font_size - 3), font_path)
    pad, gap, line_h = 12, 3, font_size + 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    header_h = font_size + 2 * pad
    boxes = _layout(probe, result.words, font, width, pad, gap, line_h, header_h, result.prompt)
    body_bottom = (boxes[-1][3] if boxes else header_h) + pad
    legend_h = 44
    img = Image.new("RGB", (width, body_bottom + legend_h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    head = title or f"PromptEcho reward {result.reward:.3f}"
    extra = f"  ({result.reduction} CE over {result.n_tokens} tokens"
    extra += f", {result.truncated_tokens} truncated)" if result.truncated_tokens else ")"
    d.text((pad, pad), head, fill=(0, 0, 0), font=font)
    d.text((pad + d.textlength(head, font=font) + 6, pad + 2), extra, fill=(90, 90, 90), font=small)
    for w, (x0, y0, x1, y1) in zip(result.words, boxes):
        bg = loss_to_rgb(w.loss, lo, hi)
        d.rounded_rectangle((x0, y0, x1, y1), radius=4, fill=bg)
        d.text((x0 + gap, y0 + (y1 - y0 - font_size) / 2 - 1), w.text, fill=text_color_for(bg), font=font)
    # legend: colour bar with its end values
    bar_x0, bar_x1, bar_y = pad + 150, width - pad - 150, body_bottom + 8
    steps = max(2, int(bar_x1 - bar_x0))
    for i in range(steps):
        c = loss_to_rgb(lo + (hi - lo) * i / (steps - 1), lo, hi)
        d.line([(bar_x0 + i, bar_y), (bar_x0 + i, bar_y + 14)], fill=c)
    d.text((pad, bar_y), f"supported {lo:.2f}", fill=(0, 0, 0), font=small)
    d.text((bar_x1 + 8, bar_y), f"{hi:.2f} unsupported", fill=(0, 0, 0), font=small)
    d.text((bar_x0, bar_y + 18), "word loss (nats, mean of its tokens)", fill=(90, 90, 90), font=small)
    return img


def heatmap_json(result: ScoreResult, vmin: Optional[float] = None, vmax: Optional[float] = None) -> dict:
    """JSON form: the full score result plus the colour scale and the colour of each word."""
    lo, hi = color_range(result, vmin, vmax)
    d = result.to_json()
    d["scale"] = {"vmin": lo, "vmax": hi}
    d["word_colors"] = ["#%02x%02x%02x" % loss_to_rgb(w.loss, lo, hi) for w in result.words]
    return d


def result_from_heatmap_json(d: dict) -> ScoreResult:
    d = {k: v for k, v in d.items() if k not in ("scale", "word_colors")}
    return ScoreResult.from_json(d)


def word_boxes(result: ScoreResult, width: int = 768, font_size: int = 16, font_path: Optional[str] = None
               ) -> List[Tuple[float, float, float, float]]:
    """Boxes render_heatmap draws for each word (for tests and click maps)."""
    font = find_font(font_size, font_path)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return _layout(probe, result.words, font, width, 12, 3, font_size + 10, font_size + 24, result.prompt)
