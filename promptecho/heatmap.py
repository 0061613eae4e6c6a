"""Token heatmap: the prompt with each word's background coloured by its PromptEcho loss (PNG and JSON).

Colour map: a magma-like ramp running from pale (low loss: the image supports the word) to dark purple
(high loss: the image does not support it). Lightness decreases monotonically, so the order survives
grey-scale printing and most colour-vision deficiencies.
"""
from __future__ import annotations

import logging
import math
import os
import unicodedata
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from .results import ScoreResult
from .scoring import display_pieces

log = logging.getLogger("promptecho")

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


def _font_files(path: Optional[str] = None) -> List[str]:
    """Candidate font files in order of preference (user's choice, $PROMPTECHO_FONT, CJK-capable, Latin)."""
    out = []
    for p in ([path] if path else []) + [os.environ.get("PROMPTECHO_FONT", "")] + list(_FONT_CANDIDATES):
        if p and os.path.isfile(p) and p not in out:
            out.append(p)
    return out


def _load(p: str, size: int):
    try:
        return ImageFont.truetype(p, size)
    except OSError:
        return None


def missing_glyphs(font, text: str) -> List[str]:
    """Characters of `text` the font has no glyph for (it would draw its 'missing' box instead).

    A missing character renders exactly like a code point no font defines (U+10FFFD, private use),
    so comparing the two bitmaps needs no font-table parser."""
    try:
        ref = _glyph(font, "\U0010FFFD")
    except Exception:  # bitmap-only fonts: assume covered rather than fail
        return []
    out = []
    for ch in sorted(set(text)):
        # ASCII is in every font; marks and format characters (ZWJ, variation selectors) draw nothing anyway
        if ch.isspace() or ord(ch) < 0x80 or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        if _glyph(font, ch) == ref:
            out.append(ch)
    return out


def _glyph(font, ch: str) -> bytes:
    size = int(getattr(font, "size", 16)) * 2 + 4
    im = Image.new("L", (size, size))
    ImageDraw.Draw(im).text((2, 2), ch, fill=255, font=font)
    return im.tobytes()


def find_font(size: int, path: Optional[str] = None, text: str = ""):
    """The first installed font that covers every character of `text` (CJK needs e.g. Debian's fonts-noto-cjk
    or fonts-wqy-zenhei); failing that, the one that covers most. PIL's built-in font if no TrueType file exists.
    Never downloads anything. Returns (font, characters it cannot draw)."""
    best = None
    for p in _font_files(path):
        font = _load(p, size)
        if font is None:
            continue
        miss = missing_glyphs(font, text) if text else []
        if not miss:
            return font, []
        if best is None or len(miss) < len(best[1]):
            best = (font, miss)
    if best is not None:
        return best
    font = ImageFont.load_default(size)
    return font, missing_glyphs(font, text) if text else []


def font_note(missing: Sequence[str]) -> Optional[str]:
    """One line for the image (and logs) saying which characters could not be drawn, and how to fix it."""
    if not missing:
        return None
    # code points, since the characters themselves cannot be drawn either
    shown = " ".join(f"U+{ord(c):04X}" for c in missing[:8]) + (" …" if len(missing) > 8 else "")
    return (f"note: no installed font has glyphs for {len(missing)} character(s) ({shown}); they show as boxes. "
            "Install a font such as fonts-noto-cjk, or set PROMPTECHO_FONT=/path/to/font.ttf")


def color_range(result: ScoreResult, vmin: Optional[float] = None, vmax: Optional[float] = None):
    """Default scale: 0 to the largest word loss (at least 1 nat), so the worst word is darkest."""
    losses = [w.loss for w in result.words if not math.isnan(w.loss)]
    lo = 0.0 if vmin is None else vmin
    hi = max([1.0] + losses) if vmax is None else vmax
    return lo, max(hi, lo + 1e-6)


_PAD, _GAP = 12, 3


def _fonts(result: ScoreResult, font_size: int, font_path: Optional[str]):
    """Body and small font chosen for the prompt's characters, plus the characters neither can draw."""
    font, missing = find_font(font_size, font_path, result.prompt)
    small, _ = find_font(max(10, font_size - 3), getattr(font, "path", None) or font_path)
    return font, small, missing


def _layout(words, font, width, line_h, text_top, prompt):
    """Positions of word boxes, wrapping at `width`; a newline in the prompt starts a new line. A word wider
    than the whole line gets a box clipped to the line (its text is clipped with it)."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x, y, boxes, prev_end = _PAD, text_top, [], 0
    for w in words:
        if "\n" in prompt[prev_end:w.start] and boxes:
            x, y = _PAD, y + line_h
        prev_end = w.end
        bw = probe.textlength(w.text, font=font) + 2 * _GAP
        if x + bw > width - _PAD and x > _PAD:
            x, y = _PAD, y + line_h
        boxes.append((x, y, min(x + bw, width - _PAD), y + line_h - 4))
        x += bw + _GAP
    return boxes


def _geometry(result, width, font_size, font_path):
    font, small, missing = _fonts(result, font_size, font_path)
    line_h, header_h = font_size + 10, font_size + 2 * _PAD
    boxes = _layout(result.words, font, width, line_h, header_h, result.prompt)
    return font, small, missing, boxes, header_h


def render_heatmap(result: ScoreResult, width: int = 768, font_size: int = 16, vmin: Optional[float] = None,
                   vmax: Optional[float] = None, title: Optional[str] = None, font_path: Optional[str] = None
                   ) -> Image.Image:
    """RGB image (save as PNG): a header with the reward, the prompt word-wrapped with each word's background
    coloured by its loss (light = supported by the image, dark = not), and a colour bar with loss values.

    Characters no installed font can draw show as boxes and a note line under the legend says so."""
    if width < 200:
        raise ValueError(f"heatmap width must be at least 200 pixels, got {width}")
    lo, hi = color_range(result, vmin, vmax)
    font, small, missing, boxes, header_h = _geometry(result, width, font_size, font_path)
    note = font_note(missing)
    if note:
        log.warning("heatmap: %s", note)
    body_bottom = (boxes[-1][3] if boxes else header_h) + _PAD
    legend_h = 58 + (font_size + 4) * (2 if note else 0)
    img = Image.new("RGB", (width, body_bottom + legend_h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    head = title or f"PromptEcho reward {result.reward:.3f}"
    extra = f"  ({result.reduction} CE over {result.n_tokens} tokens"
    extra += f", {result.truncated_tokens} truncated)" if result.truncated_tokens else ")"
    d.text((_PAD, _PAD), head, fill=(0, 0, 0), font=font)
    d.text((_PAD + d.textlength(head, font=font) + 6, _PAD + 2), extra, fill=(90, 90, 90), font=small)
    for w, (x0, y0, x1, y1) in zip(result.words, boxes):
        bg = loss_to_rgb(w.loss, lo, hi)
        d.rounded_rectangle((x0, y0, x1, y1), radius=4, fill=bg)
        ty = (y1 - y0 - font_size) / 2 - 1
        if d.textlength(w.text, font=font) + 2 * _GAP <= x1 - x0 + 0.5:
            d.text((x0 + _GAP, y0 + ty), w.text, fill=text_color_for(bg), font=font)
        else:  # a word wider than the line: draw it on its own tile, cut at the box's edge
            cell = Image.new("RGB", (max(1, int(x1 - x0) - 2), int(y1 - y0)), bg)
            ImageDraw.Draw(cell).text((_GAP, ty), w.text, fill=text_color_for(bg), font=font)
            img.paste(cell, (int(x0) + 1, int(y0)))
    # legend: colour bar with ticks at five loss values
    bar_x0, bar_x1, bar_y = _PAD + 150, width - _PAD - 150, body_bottom + 8
    steps = max(2, int(bar_x1 - bar_x0))
    for i in range(steps):
        c = loss_to_rgb(lo + (hi - lo) * i / (steps - 1), lo, hi)
        d.line([(bar_x0 + i, bar_y), (bar_x0 + i, bar_y + 14)], fill=c)
    for k in range(5):
        x = bar_x0 + (steps - 1) * k / 4
        d.line([(x, bar_y + 14), (x, bar_y + 18)], fill=(0, 0, 0))
        label = f"{lo + (hi - lo) * k / 4:.2f}"
        d.text((x - d.textlength(label, font=small) / 2, bar_y + 19), label, fill=(0, 0, 0), font=small)
    d.text((_PAD, bar_y), "supported", fill=(0, 0, 0), font=small)
    d.text((bar_x1 + 8, bar_y), "unsupported", fill=(0, 0, 0), font=small)
    d.text((_PAD, bar_y + 19), "word loss (nats)", fill=(90, 90, 90), font=small)
    if note:
        y = bar_y + 40
        for line in _wrap(note, small, width - 2 * _PAD):
            d.text((_PAD, y), line, fill=(160, 0, 0), font=small)
            y += font_size + 2
    return img


def _wrap(text: str, font, width: float) -> List[str]:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and probe.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + ([cur] if cur else [])


_VIEW_KEYS = ("scale", "word_colors", "token_pieces", "token_colors")


def heatmap_json(result: ScoreResult, vmin: Optional[float] = None, vmax: Optional[float] = None) -> dict:
    """JSON form: the full score result (tokens, spans, token losses, words, reward, ...) plus the colour scale,
    each word's colour, and per-token display text and colours (for token-level views; a character that
    byte-level BPE split over several tokens is shown once). `result_from_heatmap_json` reverses it."""
    lo, hi = color_range(result, vmin, vmax)
    d = result.to_json()
    d["scale"] = {"vmin": lo, "vmax": hi}
    d["word_colors"] = [_hex(loss_to_rgb(w.loss, lo, hi)) for w in result.words]
    d["token_pieces"] = display_pieces(result.prompt, result.spans)
    d["token_colors"] = [_hex(loss_to_rgb(x, lo, hi)) for x in result.token_losses]
    return d


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def result_from_heatmap_json(d: dict) -> ScoreResult:
    return ScoreResult.from_json({k: v for k, v in d.items() if k not in _VIEW_KEYS})


def word_boxes(result: ScoreResult, width: int = 768, font_size: int = 16, font_path: Optional[str] = None
               ) -> List[Tuple[float, float, float, float]]:
    """Boxes (x0, y0, x1, y1) render_heatmap draws for each word (for tests and click maps)."""
    return _geometry(result, width, font_size, font_path)[3]
