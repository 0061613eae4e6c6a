"""Rule-based ShapesWorld oracle: recover objects from pixels (colour segmentation + shape descriptors,
no learned model) and check a caption atom by atom."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import List, Union

import numpy as np

from .render import IMAGE_SIZE
from .world import (COLORS, GRID, REGION_CELL, CountAtom, Description, PositionAtom, RelationAtom,
                    atoms_from_caption)

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32) / 255.0
_NAMES = list(COLORS)
MIN_ALPHA = 0.5  # a pixel belongs to an object when at least half covered
MIN_PIXELS = 6  # at 48 px; smaller blobs are noise
SIZE_SPLIT = 10.5  # px at 48 px: small objects are 8 px, large 12 px


@dataclass(frozen=True)
class Detected:
    color: str
    shape: str
    size: str
    row: int
    col: int
    cx: float
    cy: float
    pixels: int


@dataclass(frozen=True)
class NothingElseAtom:
    """No object of a kind that the caption does not mention."""


@dataclass
class OracleResult:
    atoms: list
    satisfied: List[bool]
    objects: List[Detected]

    @property
    def fraction(self) -> float:
        return float(np.mean(self.satisfied)) if self.satisfied else 0.0

    @property
    def correct(self) -> bool:
        return all(self.satisfied)


def _as_array(image) -> np.ndarray:
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    if a.max() > 1.5:
        a = a / 255.0
    if a.shape[0] != IMAGE_SIZE:  # nearest resample keeps colours pure
        from PIL import Image
        a = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR),
                       dtype=np.float32) / 255.0
    return a


def _label_pixels(a: np.ndarray):
    """Per pixel: best palette colour and its coverage alpha (pixel ~= alpha * colour on black)."""
    p = a.reshape(-1, 3)
    dots = p @ _PALETTE.T  # (N, K)
    norms = (_PALETTE ** 2).sum(1)
    alpha = np.clip(dots / norms, 0, 1)
    resid = ((p[:, None, :] - alpha[..., None] * _PALETTE[None]) ** 2).sum(-1)
    best = resid.argmin(1)
    al = alpha[np.arange(len(p)), best]
    h, w = a.shape[:2]
    return best.reshape(h, w), al.reshape(h, w)


def _components(mask: np.ndarray):
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, q = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        yield comp


def _classify_shape(alpha: np.ndarray, ys, xs) -> tuple:
    """Shape from two scale-free descriptors of the blob:
    - vertical offset of the mass centre from the box centre (triangles are apex-up: d/6 lower);
    - box fill + the share of mass outside the inscribed diamond (diamond ~0.6, circle ~1.1, square ~1.45)."""
    y0, y1, x0, x1 = min(ys), max(ys), min(xs), max(xs)
    d = max(y1 - y0 + 1, x1 - x0 + 1)
    Y0, X0 = max(y0 - 1, 0), max(x0 - 1, 0)
    win = alpha[Y0:y1 + 2, X0:x1 + 2]  # box grown by one pixel: the anti-aliased rim counts
    gy, gx = np.mgrid[Y0:Y0 + win.shape[0], X0:X0 + win.shape[1]]
    mass = win.sum()
    cy, cx = (win * gy).sum() / mass, (win * gx).sum() / mass
    offset = (cy - (y0 + y1) / 2) / d
    outside = (win * ((np.abs(gy - cy) + np.abs(gx - cx)) > d / 2)).sum() / mass
    fill = len(ys) / ((y1 - y0 + 1) * (x1 - x0 + 1))
    if offset > 0.06:
        shape = "triangle"
    elif fill + outside < 0.8:
        shape = "diamond"
    elif fill + outside < 1.3:
        shape = "circle"
    else:
        shape = "square"
    return shape, d, cy, cx


def detect(image) -> List[Detected]:
    """Objects found in an image (any size; analysed at 48 px)."""
    a = _as_array(image)
    labels, alpha = _label_pixels(a)
    out = []
    for k, name in enumerate(_NAMES):
        col_alpha = np.where(labels == k, alpha, 0.0)
        for comp in _components(col_alpha >= MIN_ALPHA):
            if len(comp) < MIN_PIXELS:
                continue
            ys, xs = [c[0] for c in comp], [c[1] for c in comp]
            shape, d, cy, cx = _classify_shape(col_alpha, ys, xs)
            cell = IMAGE_SIZE / GRID
            row, col = min(int(cy // cell), GRID - 1), min(int(cx // cell), GRID - 1)
            out.append(Detected(name, shape, "large" if d >= SIZE_SPLIT else "small", row, col,
                                float(cx), float(cy), len(comp)))
    return out


def _relation_holds(a: Detected, rel: str, b: Detected) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[rel]


def check_objects(objects: List[Detected], desc: Description) -> OracleResult:
    def unique(cs):
        m = [o for o in objects if (o.color, o.shape) == cs]
        return m[0] if len(m) == 1 else None

    atoms, ok = [], []
    for g in desc.groups:
        n = sum((o.color, o.shape, o.size) == (g.color, g.shape, g.size) for o in objects)
        atoms.append(g)
        ok.append(n == g.count)
    for p in desc.positions:
        o = unique((p.color, p.shape))
        atoms.append(p)
        ok.append(o is not None and (o.row, o.col) == REGION_CELL[p.region])
    for r in desc.relations:
        a, b = unique(r.a), unique(r.b)
        atoms.append(r)
        ok.append(a is not None and b is not None and _relation_holds(a, r.relation, b))
    kinds = {(g.color, g.shape, g.size) for g in desc.groups}
    atoms.append(NothingElseAtom())
    ok.append(all((o.color, o.shape, o.size) in kinds for o in objects))
    return OracleResult(atoms, ok, objects)


def check(image, caption_or_desc: Union[str, Description]) -> OracleResult:
    """Check an image against a caption (parsed with atoms_from_caption) or a Description."""
    desc = atoms_from_caption(caption_or_desc) if isinstance(caption_or_desc, str) else caption_or_desc
    return check_objects(detect(image), desc)


def oracle_reward(images, prompts) -> List[float]:
    """Reward-registry form: fraction of satisfied atoms per (image, prompt)."""
    return [check(im, p).fraction for im, p in zip(images, prompts)]


__all__ = ["Detected", "OracleResult", "NothingElseAtom", "detect", "check", "check_objects", "oracle_reward",
           "CountAtom", "PositionAtom", "RelationAtom"]
