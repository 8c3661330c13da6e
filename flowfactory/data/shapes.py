"""The shapes world: procedural scenes of coloured shapes with captions from a grammar.

Every value of the world is defined here (and documented in the README): exact RGB
palette, shapes, sizes, relations, the caption grammar. Sample `i` of a dataset with
seed `s` is a pure function of `(s, i)`, so any rank, worker or resumed run sees the
same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
SIZES: dict[str, int] = {"small": 12, "large": 22}  # bounding-box side in pixels at a 64-px canvas
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    cx: float  # centre, in canvas fractions [0, 1]
    cy: float


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...] = field(default_factory=tuple)


def shape_mask(shape: str, cx: float, cy: float, side: float, n: int) -> np.ndarray:
    """Boolean `[n, n]` mask of one shape with centre (cx, cy) and bounding box `side`, in pixels."""
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


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Scene -> uint8 RGB `[size, size, 3]`."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        side = SIZES[o.size] * size / 64
        img[shape_mask(o.shape, o.cx * size, o.cy * size, side, size)] = COLORS[o.color]
    return img


def _overlaps(a: Obj, b: Obj, margin: float = 2 / 64) -> bool:
    ra, rb = SIZES[a.size] / 128, SIZES[b.size] / 128
    return abs(a.cx - b.cx) < ra + rb + margin and abs(a.cy - b.cy) < ra + rb + margin


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    n = int(rng.integers(1, max_objects + 1))
    objs: list[Obj] = []
    while len(objs) < n:
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size] / 128
        o = Obj(str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), size,
                float(rng.uniform(r + 0.02, 1 - r - 0.02)), float(rng.uniform(r + 0.02, 1 - r - 0.02)))  # fmt: skip
        if not any(_overlaps(o, p) for p in objs):
            objs.append(o)
    return Scene(str(rng.choice(list(BACKGROUNDS))), tuple(objs))


def relation(a: Obj, b: Obj) -> str:
    """The dominant spatial relation of a to b."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def describe(o: Obj, with_size: bool) -> str:
    return f"a {o.size + ' ' if with_size else ''}{o.color} {o.shape}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    with_size = bool(rng.random() < 0.5)
    if len(scene.objects) == 1:
        text = describe(scene.objects[0], with_size)
    else:
        a, b = scene.objects[:2]
        text = f"{describe(a, with_size)} {relation(a, b)} {describe(b, with_size)}"
    if rng.random() < 0.5:
        text += f" on a {scene.background} background"
    return text


class ShapesDataset(torch.utils.data.Dataset):
    """Sample i -> (image `[3, H, W]` in [-1, 1], caption), a pure function of (seed, i).

    `length` 0 means endless (any index is valid); otherwise indices wrap around `length`.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, length: int = 0, max_objects: int = 2):
        self.image_size = image_size
        self.seed = seed
        self.length = length
        self.max_objects = max_objects

    def __len__(self) -> int:
        return self.length or 2**62

    def scene(self, i: int) -> tuple[Scene, str]:
        if self.length:
            i %= self.length
        rng = np.random.default_rng([self.seed, i])
        s = sample_scene(rng, self.max_objects)
        return s, caption(s, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        s, text = self.scene(i)
        img = torch.from_numpy(render(s, self.image_size)).permute(2, 0, 1).float() / 127.5 - 1
        return img, text
