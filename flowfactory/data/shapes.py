"""The shapes world: procedural scenes of coloured shapes, digits and characters with captions.

Every value of the world is defined in this module (and documented in the README):
exact RGB palette, shapes, sizes, fill patterns, the digit font, the characters, the
caption grammar and the held-out combinations. Sample `i` of a dataset with seed `s`
is a pure function of `(s, i)`, so any rank, worker or resumed run sees the same data.

Geometry is defined at a 64-px canvas and scales with the canvas size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (16, 16, 16), "gray": (128, 128, 128), "white": (240, 240, 240)}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES: dict[str, int] = {"small": 12, "large": 22}  # bounding-box side in pixels at 64 px
PATTERNS = ("solid", "striped", "outline")
STRIPE = 2  # striped: 2 px of colour, 2 px of background, horizontal (at 64 px)
OUTLINE = 2  # outline: a 2-px border, the inside left as background (at 64 px)
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
MARGIN = 4  # minimum gap between objects' bounding boxes, px at 64

# Digits: a 3x5 bitmap font, drawn at 2 px per cell (small, 6x10) or 4 px (large, 12x20).
DIGIT_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
DIGIT_CELL = {"small": 2, "large": 4}

# Characters: fixed 5x5 sprites of palette colours (letters: r g b y p c; '.' = background),
# 4 px per cell (20x20 at 64 px). Their identity survives a move to any scene.
CHARACTERS: dict[str, tuple[str, ...]] = {
    "robot": (".yyy.", ".yyy.", "bbbbb", ".bbb.", ".b.b."),
    "tree": (".ggg.", "ggggg", "ggggg", "..y..", "..y.."),
    "ghost": (".ppp.", "pcpcp", "ppppp", "ppppp", "p.p.p"),
    "flower": (".r.r.", "rryrr", ".r.r.", "..g..", ".ggg."),
}
CHAR_CELL = 4
_LETTER = {c[0]: c for c in COLORS}
_LETTER["p"], _LETTER["b"] = "purple", "blue"

# Never in training scenes or captions: for held-out (compositional) evaluation.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("cyan", "square"), ("yellow", "cross"), ("green", "circle")}
)
HELD_OUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {("circle", "above", "triangle"), ("square", "left of", "cross"), ("cross", "below", "circle")}
)


@dataclass(frozen=True)
class Obj:
    """One object. `kind`: "shape" (color, shape, size, pattern), "digit" (color, digit, size), "character"."""

    kind: str
    cx: float  # centre, in canvas fractions [0, 1]
    cy: float
    color: str = ""
    shape: str = ""
    size: str = "large"
    pattern: str = "solid"
    digit: str = ""
    character: str = ""

    def extent(self) -> tuple[float, float]:
        """Bounding-box (width, height) in pixels at 64 px."""
        if self.kind == "digit":
            c = DIGIT_CELL[self.size]
            return 3 * c, 5 * c
        if self.kind == "character":
            return 5 * CHAR_CELL, 5 * CHAR_CELL
        return SIZES[self.size], SIZES[self.size]

    def noun(self) -> str:
        if self.kind == "digit":
            return f"digit {self.digit}"
        if self.kind == "character":
            return self.character
        return self.shape


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)

    def canonical(self) -> tuple:
        """Order-free identity for comparing scenes (positions left out)."""
        return self.background, tuple(sorted(_identity(o) for o in self.objects))


def _identity(o: Obj) -> tuple:
    return (o.kind, o.color, o.shape, o.size, o.pattern if o.kind == "shape" else "", o.digit, o.character)


# ---------------------------------------------------------------------------------------------
# Rendering


def shape_mask(shape: str, cx: float, cy: float, side: float, n: int) -> np.ndarray:
    """Boolean `[n, n]` mask of a filled shape with centre (cx, cy) and bounding box `side`, in pixels."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx, dy, r = xx - cx, yy - cy, side / 2
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex up: half-width grows from 0 at the top to r at the bottom
        return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":
        arm = r / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        m = out.copy()
        m[1:] &= out[:-1]
        m[:-1] &= out[1:]
        m[:, 1:] &= out[:, :-1]
        m[:, :-1] &= out[:, 1:]
        out = m
    return out


def pattern_mask(mask: np.ndarray, pattern: str, scale: float) -> np.ndarray:
    if pattern == "solid":
        return mask
    if pattern == "striped":
        ys = np.nonzero(mask.any(1))[0]
        rows = (np.arange(mask.shape[0]) - (ys[0] if len(ys) else 0)) // max(1, round(STRIPE * scale)) % 2 == 0
        return mask & rows[:, None]
    if pattern == "outline":
        return mask & ~_erode(mask, max(1, round(OUTLINE * scale)))
    raise ValueError(f"unknown pattern {pattern}")


def _sprite(rows: tuple[str, ...], cell: int) -> list[tuple[int, int, str]]:
    return [(x, y, ch) for y, row in enumerate(rows) for x, ch in enumerate(row) if ch != "."]


def render_object(img: np.ndarray, o: Obj) -> None:
    n = img.shape[0]
    scale = n / 64
    w, h = (e * scale for e in o.extent())
    if o.kind == "shape":
        m = pattern_mask(shape_mask(o.shape, o.cx * n, o.cy * n, w, n), o.pattern, scale)
        img[m] = COLORS[o.color]
        return
    rows, cell = (DIGIT_FONT[o.digit], DIGIT_CELL[o.size]) if o.kind == "digit" else (CHARACTERS[o.character], CHAR_CELL)
    c = cell * scale
    x0, y0 = round(o.cx * n - w / 2), round(o.cy * n - h / 2)
    for x, y, ch in _sprite(rows, cell):
        color = COLORS[o.color] if o.kind == "digit" else COLORS[_LETTER[ch]]
        img[round(y0 + y * c) : round(y0 + (y + 1) * c), round(x0 + x * c) : round(x0 + (x + 1) * c)] = color


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Scene -> uint8 RGB `[size, size, 3]`."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        render_object(img, o)
    return img


# ---------------------------------------------------------------------------------------------
# Sampling scenes


def overlaps(a: Obj, b: Obj, margin: float = MARGIN) -> bool:
    (wa, ha), (wb, hb) = a.extent(), b.extent()
    return abs(a.cx - b.cx) * 64 < (wa + wb) / 2 + margin and abs(a.cy - b.cy) * 64 < (ha + hb) / 2 + margin


def place(rng: np.random.Generator, o: Obj, others: list[Obj], tries: int = 100) -> Obj | None:
    """`o` at a random position inside the canvas, clear of `others` (None if there is no room)."""
    w, h = o.extent()
    for _ in range(tries):
        cand = replace(o, cx=float(rng.uniform((w / 2 + 2) / 64, 1 - (w / 2 + 2) / 64)),
                       cy=float(rng.uniform((h / 2 + 2) / 64, 1 - (h / 2 + 2) / 64)))  # fmt: skip
        if not any(overlaps(cand, p) for p in others):
            return cand
    return None


def relation(a: Obj, b: Obj) -> str:
    """The dominant spatial relation of a to b."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def random_shape(rng: np.random.Generator, held_out: bool = False, pattern: str | None = None) -> Obj:
    """A random shape object; its (colour, shape) pair is held out or allowed as asked."""
    while True:
        color, shape = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
        if ((color, shape) in HELD_OUT_PAIRS) == held_out:
            break
    size = str(rng.choice(list(SIZES)))
    # patterns only on large shapes: three 2-px stripes on a 12-px shape do not read as a shape
    pat = pattern or (str(rng.choice(PATTERNS, p=[0.6, 0.2, 0.2])) if size == "large" else "solid")
    return Obj("shape", 0.5, 0.5, color=color, shape=shape, size=size, pattern=pat)


def _fill(rng: np.random.Generator, objs: list[Obj]) -> list[Obj] | None:
    placed: list[Obj] = []
    for o in objs:
        p = place(rng, o, placed)
        if p is None:
            return None
        placed.append(p)
    return placed


SCENE_KINDS = ("single", "count", "relation", "multi", "digit", "character")
SCENE_WEIGHTS = (0.25, 0.2, 0.25, 0.1, 0.1, 0.1)


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    """A training scene (no held-out combination in it) of the given or a random kind."""
    kind = kind or str(rng.choice(SCENE_KINDS, p=SCENE_WEIGHTS))
    bg = str(rng.choice(list(BACKGROUNDS)))
    while True:
        if kind == "single":
            objs = [random_shape(rng)]
        elif kind == "count":
            objs = [random_shape(rng, pattern="solid")] * int(rng.integers(2, 5))
        elif kind == "relation":
            objs = [random_shape(rng, pattern="solid"), random_shape(rng, pattern="solid")]
        elif kind == "multi":
            objs = [random_shape(rng) for _ in range(int(rng.integers(3, 5)))]
        elif kind == "digit":
            objs = [Obj("digit", 0.5, 0.5, color=str(rng.choice(list(COLORS))), digit=str(rng.integers(10)),
                        size=str(rng.choice(list(SIZES))))]  # fmt: skip
        elif kind == "character":
            objs = [Obj("character", 0.5, 0.5, character=str(rng.choice(list(CHARACTERS))))]
        else:
            raise ValueError(f"unknown scene kind {kind}")
        placed = _fill(rng, objs)
        if placed is None:
            continue
        if kind == "relation":
            a, b = placed
            if a.shape == b.shape and a.color == b.color:
                continue
            if (a.shape, relation(a, b), b.shape) in HELD_OUT_RELATIONS:
                continue
        return Scene(bg, tuple(placed))


# ---------------------------------------------------------------------------------------------
# Captions


def phrase(o: Obj, with_size: bool = False, with_color: bool = True, article: str = "a") -> str:
    """Noun phrase: "a small red circle", "a striped blue square", "a red square outline",
    "the digit 7 in blue", "the robot"."""
    if o.kind == "digit":
        return f"the digit {o.digit} in {o.color}"
    if o.kind == "character":
        return f"the {o.character}"
    words = [article] + ([o.size] if with_size else []) + (["striped"] if o.pattern == "striped" else [])
    words += ([o.color] if with_color else []) + [o.shape] + (["outline"] if o.pattern == "outline" else [])
    return " ".join(words)


def plural(o: Obj, n: int, with_size: bool = False, with_color: bool = True) -> str:
    noun = o.shape + ("es" if o.shape == "cross" else "s")
    return " ".join([NUMBERS[n]] + ([o.size] if with_size else []) + ([o.color] if with_color else []) + [noun])


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption from the grammar, with random paraphrase choices (size, colour, wording)."""
    objs = scene.objects
    with_size = bool(rng.random() < 0.5)
    with_color = bool(rng.random() < 0.9)
    first = objs[0]
    if len(objs) > 1 and all(_identity(o) == _identity(first) for o in objs):
        text = plural(first, len(objs), with_size, with_color)
    elif len(objs) == 2 and first.kind == "shape":
        a, b = objs
        joiner = relation(a, b) if rng.random() < 0.7 else "and"
        text = f"{phrase(a, with_size, with_color)} {joiner} {phrase(b, with_size, with_color)}"
    elif len(objs) > 2:
        parts = [phrase(o, with_size) for o in objs]
        text = ", ".join(parts[:-1]) + " and " + parts[-1]
    elif first.kind == "digit":
        text = phrase(first) if rng.random() < 0.5 else f"a {first.color} {first.digit}"
    else:
        text = phrase(first, with_size, with_color or first.kind != "shape")
        if first.kind == "shape" and rng.random() < 0.3:
            text = "one" + text[1:]
    if rng.random() < 0.5:
        text += f" on a {scene.background} background"
    return text


class ShapesDataset(torch.utils.data.Dataset):
    """Sample i -> (image `[3, H, W]` in [-1, 1], caption), a pure function of (seed, i).

    `length` 0 means endless (any index is valid); otherwise indices wrap around `length`.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, length: int = 0):
        self.image_size = image_size
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length or 2**62

    def scene(self, i: int) -> tuple[Scene, str]:
        if self.length:
            i %= self.length
        rng = np.random.default_rng([self.seed, i])
        s = sample_scene(rng)
        return s, caption(s, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        s, text = self.scene(i)
        img = torch.from_numpy(render(s, self.image_size)).permute(2, 0, 1).float() / 127.5 - 1
        return img, text
