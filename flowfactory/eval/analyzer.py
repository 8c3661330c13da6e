"""Parse an image of the shapes world back into a `Scene`.

Steps: classify every pixel by its nearest palette / background colour (after a 3x3
median filter against noise); the background is the commonest background colour;
foreground pixels form objects by 8-connected components of the mask closed
vertically (so the stripes of a striped shape stay one object); each object is then
read as a character (several colours matching a sprite), a digit (3:5 aspect, matched
against the font) or a shape (fill ratio and silhouette of the hole-filled mask),
with its pattern (coverage and empty rows), size and centre.

Never raises on odd input (noise, blank, photos): it returns what it finds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from flowfactory.data.shapes import (
    BACKGROUNDS,
    CHAR_CELL,
    CHARACTERS,
    COLORS,
    DIGIT_FONT,
    SIZES,
    STRIPE,
    Obj,
    Scene,
    _LETTER,
)

_NAMES = list(COLORS) + list(BACKGROUNDS)
_RGB = np.array([COLORS[c] for c in COLORS] + [BACKGROUNDS[b] for b in BACKGROUNDS], dtype=np.float32)
_N_COLORS = len(COLORS)
MAX_DIST = 90.0  # RGB distance beyond which a pixel is "unknown"


def to_uint8(image) -> np.ndarray:
    """Accepts uint8 `[H, W, 3]`, float `[H, W, 3]` in [0, 1], or a tensor `[3, H, W]` in [-1, 1]."""
    if hasattr(image, "detach"):
        image = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return a


def classify_pixels(img: np.ndarray) -> np.ndarray:
    """uint8 `[H, W, 3]` -> label per pixel: palette index, background index (offset), or -1.

    The palette colours are >= 125 apart in RGB, so pixel noise of sigma 0.05 (~22 in RGB
    distance) never flips a label; blurred edge pixels may, and are outvoted per object.
    """
    d = ((img.astype(np.float32)[..., None, :] - _RGB) ** 2).sum(-1)
    labels = d.argmin(-1)
    labels[np.sqrt(d.min(-1)) > MAX_DIST] = -1
    return labels


def _grid_colors(labels: np.ndarray, box: tuple[slice, slice], rows: int, cols: int) -> list[list[int]]:
    """Majority label in each cell of a rows x cols grid over the box (-1: background / none)."""
    sub = labels[box]
    h, w = sub.shape
    out = []
    for r in range(rows):
        line = []
        for c in range(cols):
            cell = sub[r * h // rows : max(r * h // rows + 1, (r + 1) * h // rows),
                       c * w // cols : max(c * w // cols + 1, (c + 1) * w // cols)]  # fmt: skip
            vals = cell[(cell >= 0) & (cell < _N_COLORS)]
            line.append(int(np.bincount(vals).argmax()) if vals.size * 2 >= cell.size else -1)
        out.append(line)
    return out


def _match_character(labels: np.ndarray, box) -> tuple[str, float]:
    grid = _grid_colors(labels, box, 5, 5)
    best, score = "", 0.0
    for name, rows in CHARACTERS.items():
        want = [[-1 if ch == "." else list(COLORS).index(_LETTER[ch]) for ch in row] for row in rows]
        s = sum(g == w for gr, wr in zip(grid, want) for g, w in zip(gr, wr)) / 25
        if s > score:
            best, score = name, s
    return best, score


def _match_digit(mask: np.ndarray) -> tuple[str, float]:
    h, w = mask.shape
    grid = [[mask[r * h // 5 : max(r * h // 5 + 1, (r + 1) * h // 5), c * w // 3 : max(c * w // 3 + 1, (c + 1) * w // 3)].mean() > 0.5
             for c in range(3)] for r in range(5)]  # fmt: skip
    best, score = "", 0.0
    for d, rows in DIGIT_FONT.items():
        s = sum(g == (ch == "#") for gr, row in zip(grid, rows) for g, ch in zip(gr, row)) / 15
        if s > score:
            best, score = d, s
    return best, score


def _shape(filled: np.ndarray) -> str:
    """Silhouette -> shape: fill ratio of the box (square 1, circle pi/4, cross 5/9, triangle 1/2),
    then top-vs-bottom width to tell the apex-up triangle from the cross."""
    h = filled.shape[0]
    ratio = filled.mean()
    if ratio > 0.9:
        return "square"
    if ratio > 0.66:
        return "circle"
    k = max(1, h // 6)
    return "triangle" if filled[-k:].mean() - filled[:k].mean() > 0.3 else "cross"


def _pattern(obj: np.ndarray, filled: np.ndarray) -> str:
    coverage = obj.sum() / max(1, filled.sum())
    if coverage > 0.85:
        return "solid"
    rows = filled.any(1)
    row_cov = obj[rows].sum(1) / np.maximum(1, filled[rows].sum(1))
    empty = (row_cov < 0.12).mean()  # stripes leave empty rows; an outline leaves none
    return "striped" if empty > 0.25 else "outline"


def analyze(image) -> Scene:
    """Image of the shapes world -> Scene (object centres in canvas fractions)."""
    img = to_uint8(image)
    h, w = img.shape[:2]
    if h < 8 or w < 8:
        return Scene("black", ())
    labels = classify_pixels(img)
    scale = 64 / h
    bg_counts = [(labels == _N_COLORS + i).sum() for i in range(len(BACKGROUNDS))]
    background = list(BACKGROUNDS)[int(np.argmax(bg_counts))]
    fg = (labels >= 0) & (labels < _N_COLORS)
    gap = max(1, round(STRIPE / scale))
    # close the stripes' gaps vertically, and grow by one pixel so that sprite cells touching
    # at a corner stay together (objects are >= 4 px apart, so they stay apart)
    closed = ndimage.binary_closing(fg, structure=np.ones((gap + 1, 1), bool)) | fg
    comps, _ = ndimage.label(ndimage.binary_dilation(closed, structure=np.ones((3, 3), bool)))
    objects: list[Obj] = []
    min_area = 12 / scale**2
    for i, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None:
            continue
        ys, xs = np.nonzero((comps[box] == i) & closed[box])
        if ys.size == 0:
            continue
        box = (slice(box[0].start + ys.min(), box[0].start + ys.max() + 1),
               slice(box[1].start + xs.min(), box[1].start + xs.max() + 1))  # fmt: skip (the tight box)
        region = (comps[box] == i) & closed[box]
        obj = region & fg[box]
        if obj.sum() < min_area:
            continue
        bh, bw = (box[0].stop - box[0].start) * scale, (box[1].stop - box[1].start) * scale
        cy = (box[0].start + box[0].stop) / 2 / h
        cx = (box[1].start + box[1].stop) / 2 / w
        obj_labels = np.where(region, labels[box], -1)
        counts = np.bincount(obj_labels[obj].ravel(), minlength=_N_COLORS)[:_N_COLORS]
        color = list(COLORS)[int(counts.argmax())]
        if max(bh, bw) > SIZES["large"] + 6:  # bigger than any object of the world: not one of them
            objects.append(Obj("blob", cx, cy, color=color))
            continue
        multicolor = (counts / max(1, counts.sum()) > 0.05).sum() > 1
        if multicolor and abs(bh - 5 * CHAR_CELL) < 5 and abs(bw - 5 * CHAR_CELL) < 5:
            name, score = _match_character(obj_labels, (slice(None), slice(None)))
            if score >= 0.85:
                objects.append(Obj("character", cx, cy, character=name))
                continue
        if bh > 1.3 * bw:
            digit, score = _match_digit(obj)
            if score >= 0.8:
                objects.append(Obj("digit", cx, cy, color=color, digit=digit, size="small" if bh < 15 else "large"))
                continue
        filled = ndimage.binary_fill_holes(region)
        size = "small" if max(bh, bw) < SIZES["small"] + 3 else "large"
        objects.append(Obj("shape", cx, cy, color=color, shape=_shape(filled), size=size, pattern=_pattern(obj, filled)))
    return Scene(background, tuple(sorted(objects, key=lambda o: (o.cy, o.cx))))


def same_scene(a: Scene, b: Scene) -> bool:
    """Equal backgrounds and equal multisets of objects (identity only; positions ignored)."""
    return a.canonical() == b.canonical()
