"""Edit pairs and clips of the shapes world.

Edit pairs come in the five KontextBench categories, in its proportions (local 416,
global 262, text 92, style reference 63, character reference 193 of 1,026):

- local: recolour, add, remove or move one object;
- global: change the background, mirror the scene left-right, rotate it 90 degrees
  (objects keep their upright orientation; their positions transform);
- text: change a digit;
- style reference: give one object the fill pattern of the reference image's object;
- character reference: put the reference image's character into the scene.

Each pair carries the instruction, the source and target scenes (and the reference
scene, if any). `free` lists target objects whose position the instruction leaves
open (an added object), so scoring ignores where they went.
Clips: 8-16 frames of objects moving in straight lines, with captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from flowfactory.data.shapes import (
    BACKGROUNDS,
    CHARACTERS,
    COLORS,
    DIGIT_FONT,
    HELD_OUT_PAIRS,
    Obj,
    Scene,
    overlaps,
    place,
    random_shape,
    sample_scene,
)

CATEGORIES = {"local": 416, "global": 262, "text": 92, "style": 63, "character": 193}


@dataclass(frozen=True)
class EditPair:
    category: str
    op: str
    instruction: str
    source: Scene
    target: Scene
    reference: Scene | None = None
    free: tuple[int, ...] = field(default_factory=tuple)  # target object indices with an open position


def _name(o: Obj) -> str:
    if o.kind == "digit":
        return f"the digit {o.digit}"
    if o.kind == "character":
        return f"the {o.character}"
    return f"the {o.color} {o.shape}"


def _unique(scene: Scene) -> list[int]:
    """Indices of shape objects that a colour + shape name picks out unambiguously."""
    keys = [(o.kind, o.color, o.shape) for o in scene.objects]
    return [i for i, o in enumerate(scene.objects) if o.kind == "shape" and keys.count(keys[i]) == 1]


def _swap(scene: Scene, i: int, o: Obj | None) -> Scene:
    objs = list(scene.objects)
    if o is None:
        objs.pop(i)
    else:
        objs[i] = o
    return Scene(scene.background, tuple(objs))


def _shape_scene(rng: np.random.Generator) -> Scene:
    return sample_scene(rng, "multi" if rng.random() < 0.4 else str(rng.choice(["single", "relation"])))


def _local(rng: np.random.Generator) -> EditPair | None:
    src = _shape_scene(rng)
    op = str(rng.choice(["recolor", "add", "remove", "move"]))
    cands = _unique(src)
    if op == "add":
        if len(src.objects) >= 4:
            return None
        new = place(rng, random_shape(rng, pattern="solid"), list(src.objects))
        if new is None or any((o.color, o.shape) == (new.color, new.shape) for o in src.objects):
            return None
        tgt = Scene(src.background, (*src.objects, new))
        return EditPair("local", op, f"add a {new.size} {new.color} {new.shape}", src, tgt, free=(len(src.objects),))
    if not cands:
        return None
    i = int(rng.choice(cands))
    o = src.objects[i]
    if op == "recolor":
        colors = [c for c in COLORS if c != o.color and (c, o.shape) not in HELD_OUT_PAIRS]
        c = str(rng.choice(colors))
        if any((p.color, p.shape) == (c, o.shape) for p in src.objects):
            return None
        return EditPair("local", op, f"make {_name(o)} {c}", src, _swap(src, i, replace(o, color=c)))
    if op == "remove":
        if len(src.objects) == 1:
            return None
        return EditPair("local", op, f"remove {_name(o)}", src, _swap(src, i, None))
    direction = str(rng.choice(["left", "right", "up", "down"]))
    d = 0.25
    dx, dy = {"left": (-d, 0), "right": (d, 0), "up": (0, -d), "down": (0, d)}[direction]
    moved = replace(o, cx=o.cx + dx, cy=o.cy + dy)
    w, h = (e / 64 for e in o.extent())
    inside = w / 2 <= moved.cx <= 1 - w / 2 and h / 2 <= moved.cy <= 1 - h / 2
    others = [p for j, p in enumerate(src.objects) if j != i]
    if not inside or any(overlaps(moved, p) for p in others):
        return None
    return EditPair("local", op, f"move {_name(o)} {direction}", src, _swap(src, i, moved))


def _global(rng: np.random.Generator) -> EditPair | None:
    src = sample_scene(rng, str(rng.choice(["single", "relation", "multi", "count", "character"])))
    op = str(rng.choice(["background", "mirror", "rotate"]))
    if op == "background":
        bg = str(rng.choice([b for b in BACKGROUNDS if b != src.background]))
        return EditPair("global", op, f"change the background to {bg}", src, Scene(bg, src.objects))
    if op == "mirror":
        tgt = Scene(src.background, tuple(replace(o, cx=1 - o.cx) for o in src.objects))
        return EditPair("global", op, "mirror the scene left to right", src, tgt)
    # rotate the layout 90 degrees clockwise: (x, y) -> (1 - y, x)
    tgt = Scene(src.background, tuple(replace(o, cx=1 - o.cy, cy=o.cx) for o in src.objects))
    return EditPair("global", op, "rotate the scene 90 degrees clockwise", src, tgt)


def _text(rng: np.random.Generator) -> EditPair | None:
    src = sample_scene(rng, "digit")
    o = src.objects[0]
    d = str(rng.choice([k for k in DIGIT_FONT if k != o.digit]))
    return EditPair("text", "digit", f"change the digit {o.digit} to {d}", src, _swap(src, 0, replace(o, digit=d)))


def _style(rng: np.random.Generator) -> EditPair | None:
    src = sample_scene(rng, str(rng.choice(["single", "relation"])))
    cands = [i for i in _unique(src) if src.objects[i].size == "large" and src.objects[i].pattern == "solid"]
    if not cands:
        return None
    i = int(rng.choice(cands))
    pattern = str(rng.choice(["striped", "outline"]))
    ref_obj = replace(random_shape(rng), size="large", pattern=pattern)
    ref = Scene(str(rng.choice(list(BACKGROUNDS))), (replace(ref_obj, cx=0.5, cy=0.5),))
    tgt = _swap(src, i, replace(src.objects[i], pattern=pattern))
    return EditPair("style", pattern, f"give {_name(src.objects[i])} the pattern of the reference", src, tgt, ref)


def _character(rng: np.random.Generator) -> EditPair | None:
    src = _shape_scene(rng)
    if len(src.objects) >= 4:
        return None
    name = str(rng.choice(list(CHARACTERS)))
    ref = sample_scene(rng, "character")
    ref = Scene(ref.background, (replace(ref.objects[0], character=name),))
    new = place(rng, Obj("character", 0.5, 0.5, character=name), list(src.objects))
    if new is None:
        return None
    tgt = Scene(src.background, (*src.objects, new))
    return EditPair("character", name, "put the character from the reference into the scene", src, tgt, ref,
                    free=(len(src.objects),))  # fmt: skip


_MAKERS = {"local": _local, "global": _global, "text": _text, "style": _style, "character": _character}


def sample_edit(rng: np.random.Generator, category: str | None = None) -> EditPair:
    """An edit pair of the given category, or of one drawn in KontextBench's proportions."""
    if category is None:
        w = np.array(list(CATEGORIES.values()), dtype=float)
        category = list(CATEGORIES)[rng.choice(len(w), p=w / w.sum())]
    while True:
        pair = _MAKERS[category](rng)
        if pair is not None:
            return pair


def edit_set(n: int = 200, seed: int = 0) -> list[EditPair]:
    """A fixed benchmark set: each category's share of n in KontextBench's proportions."""
    total = sum(CATEGORIES.values())
    counts = {c: round(n * k / total) for c, k in CATEGORIES.items()}
    counts["local"] += n - sum(counts.values())
    out = []
    for ci, (cat, k) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, 99, ci])
        out += [sample_edit(rng, cat) for _ in range(k)]
    return out


# ---------------------------------------------------------------------------------------------
# Clips

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def sample_clip(rng: np.random.Generator, frames: int | None = None) -> tuple[list[Scene], str]:
    """8-16 frames of one or two shapes moving in straight lines -> (scenes, caption)."""
    frames = frames or int(rng.integers(8, 17))
    n = int(rng.integers(1, 3))
    while True:
        scene = sample_scene(rng, "single" if n == 1 else "relation")
        moves = [str(rng.choice(list(DIRECTIONS))) for _ in scene.objects]
        speed = 0.3 / frames  # a third of the canvas over the clip
        seq = []
        for f in range(frames):
            objs = tuple(replace(o, cx=o.cx + DIRECTIONS[m][0] * speed * f, cy=o.cy + DIRECTIONS[m][1] * speed * f)
                         for o, m in zip(scene.objects, moves))  # fmt: skip
            seq.append(Scene(scene.background, objs))
        inside = all(e / 128 <= c <= 1 - e / 128 for s in seq for o in s.objects
                     for c, e in ((o.cx, o.extent()[0]), (o.cy, o.extent()[1])))  # fmt: skip
        if inside and not (n == 2 and any(overlaps(*s.objects) for s in seq)):
            parts = [f"a {o.color} {o.shape} moving {m}" for o, m in zip(scene.objects, moves)]
            return seq, " and ".join(parts) + f" on a {scene.background} background"
