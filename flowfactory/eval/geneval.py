"""geneval-mini: GenEval's six tasks on the shapes world, scored by the analyzer.

Tasks: single_object, two_object, counting, colors, position, color_attr. The prompt set
is fixed (a seeded draw from templates): 320 in-distribution prompts and 90 held-out
ones (colour-shape pairs and relations that never occur in training). Overall accuracy
is the mean of the task accuracies, as in GenEval.

    flowfactory eval geneval --checkpoint CKPT --out results/geneval
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from flowfactory.data.shapes import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_PAIRS,
    HELD_OUT_RELATIONS,
    NUMBERS,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    place,
)

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
IN_DIST_COUNTS = {"single_object": 40, "two_object": 40, "counting": 60, "colors": 60, "position": 60, "color_attr": 60}
HELD_OUT_COUNTS = {"colors": 30, "position": 30, "color_attr": 30}
MIN_OFFSET = 0.05  # a relation holds when the centres differ by >= 5% of the canvas along its axis


@dataclass(frozen=True)
class Prompt:
    task: str
    text: str
    objects: tuple[tuple[str | None, str], ...]  # (colour or None, shape) per named object
    count: int = 1
    relation: str = ""  # position: objects[0] RELATION objects[1]
    held_out: bool = False
    size: str | None = None  # when named, every object must have this size


def _plural(shape: str) -> str:
    return shape + ("es" if shape == "cross" else "s")


def _suffix(rng: np.random.Generator) -> str:
    bg = rng.integers(len(BACKGROUNDS) + 1)
    return "" if bg == len(BACKGROUNDS) else f" on a {list(BACKGROUNDS)[bg]} background"


def _pair(rng: np.random.Generator, held_out: bool) -> tuple[str, str]:
    pairs = [p for p in itertools.product(COLORS, SHAPES) if (p in HELD_OUT_PAIRS) == held_out]
    return pairs[rng.integers(len(pairs))]


def _draw(task: str, rng: np.random.Generator, held_out: bool) -> Prompt:
    shape = lambda: SHAPES[rng.integers(len(SHAPES))]  # noqa: E731
    size = [None, *SIZES][rng.integers(len(SIZES) + 1)]
    sized = f"{size} " if size else ""
    if task == "single_object":
        s = shape()
        return Prompt(task, f"a {sized}{s}{_suffix(rng)}", ((None, s),), size=size)
    if task == "two_object":
        a, b = rng.choice(len(SHAPES), 2, replace=False)
        return Prompt(task, f"a {SHAPES[a]} and a {SHAPES[b]}{_suffix(rng)}", ((None, SHAPES[a]), (None, SHAPES[b])))
    if task == "counting":
        n, s = int(rng.integers(2, 5)), shape()
        c = _pair(rng, False)[0] if rng.random() < 0.5 else None
        while c is not None and (c, s) in HELD_OUT_PAIRS:
            c = _pair(rng, False)[0]
        text = f"{NUMBERS[n]} {c + ' ' if c else ''}{_plural(s)}{_suffix(rng)}"
        return Prompt(task, text, ((c, s),), count=n)
    if task == "colors":
        c, s = _pair(rng, held_out)
        return Prompt(task, f"a {sized}{c} {s}{_suffix(rng)}", ((c, s),), held_out=held_out, size=size)
    if task == "color_attr":
        while True:
            (c1, s1), (c2, s2) = _pair(rng, held_out), _pair(rng, False)
            if (c1, s1) != (c2, s2) and s1 != s2:
                break
        if rng.random() < 0.5:
            (c1, s1), (c2, s2) = (c2, s2), (c1, s1)
        return Prompt(task, f"a {c1} {s1} and a {c2} {s2}{_suffix(rng)}", ((c1, s1), (c2, s2)), held_out=held_out)
    if task == "position":
        while True:
            (c1, s1), (c2, s2) = _pair(rng, False), _pair(rng, False)
            rel = RELATIONS[rng.integers(len(RELATIONS))]
            if s1 != s2 and ((s1, rel, s2) in HELD_OUT_RELATIONS) == held_out:
                break
        return Prompt(task, f"a {c1} {s1} {rel} a {c2} {s2}{_suffix(rng)}", ((c1, s1), (c2, s2)), relation=rel,
                      held_out=held_out)  # fmt: skip
    raise ValueError(f"unknown task {task}")


def prompt_set(seed: int = 0) -> list[Prompt]:
    """The fixed benchmark prompts: in-distribution first, then held-out (unique texts)."""
    out: list[Prompt] = []
    seen: set[str] = set()
    for held_out, counts in ((False, IN_DIST_COUNTS), (True, HELD_OUT_COUNTS)):
        for ti, task in enumerate(TASKS):
            rng = np.random.default_rng([seed, ti, int(held_out)])
            n, tries = 0, 0
            while n < counts.get(task, 0) and tries < 10_000:
                p, tries = _draw(task, rng, held_out), tries + 1
                if p.text not in seen:
                    seen.add(p.text)
                    out.append(p)
                    n += 1
    return out


def _matches(o: Obj, color: str | None, shape: str, size: str | None = None) -> bool:
    return o.kind == "shape" and o.shape == shape and color in (None, o.color) and size in (None, o.size)


def holds(rel: str, a: Obj, b: Obj, min_offset: float = MIN_OFFSET) -> bool:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[rel] >= min_offset


def score(p: Prompt, scene: Scene, min_offset: float = MIN_OFFSET) -> bool:
    """Does the parsed scene satisfy the prompt? (Exactly the named objects, GenEval-style.)"""
    objs = scene.objects
    if p.task == "counting":
        return len(objs) == p.count and all(_matches(o, *p.objects[0]) for o in objs)
    if len(objs) != len(p.objects):
        return False
    if len(objs) == 1:
        return _matches(objs[0], *p.objects[0], p.size)
    a, b = objs
    for x, y in ((a, b), (b, a)):
        if _matches(x, *p.objects[0]) and _matches(y, *p.objects[1]):
            if not p.relation or holds(p.relation, x, y, min_offset):
                return True
    return False


def partial_credit(p: Prompt, scene: Scene, min_offset: float = MIN_OFFSET) -> float:
    """How much of the prompt the scene satisfies, in [0, 1] (1 exactly when `score` passes): the
    mean of its parts: each named object present (matched to distinct objects; counting: the
    share of the count present), the number of objects right, and the relation (if any) holding.
    A graded judge for preference pairs where exact passes are rare."""
    objs = scene.objects
    if p.task == "counting":
        found = sum(_matches(o, *p.objects[0]) for o in objs)
        parts = [min(found, p.count) / p.count, float(len(objs) == p.count and found == len(objs))]
        return sum(parts) / len(parts)
    size = p.size if len(p.objects) == 1 else None
    free, found = list(objs), []
    for color, shape in p.objects:
        hit = next((o for o in free if _matches(o, color, shape, size)), None)
        found.append(hit)
        if hit is not None:
            free.remove(hit)
    parts = [float(h is not None) for h in found] + [float(len(objs) == len(p.objects))]
    if p.relation:
        parts.append(float(all(h is not None for h in found) and holds(p.relation, found[0], found[1], min_offset)))
    return 1.0 if score(p, scene, min_offset) else min(sum(parts) / len(parts), 1 - 1e-6)


FAILURES = ("count", "shape", "colour", "size", "relation")  # in the order `failure` checks them


def failure(p: Prompt, scene: Scene, min_offset: float = MIN_OFFSET) -> str:
    """Why the parsed scene fails the prompt: its first unmet requirement among `FAILURES` (the
    number of objects, then the named shapes, colours, size, relation), or "" when it passes."""
    if score(p, scene, min_offset):
        return ""
    if len(scene.objects) != (p.count if p.task == "counting" else len(p.objects)):
        return "count"
    loosened = {"shape": dataclasses.replace(p, objects=tuple((None, s) for _, s in p.objects), size=None, relation=""),
                "colour": dataclasses.replace(p, size=None, relation=""),
                "size": dataclasses.replace(p, relation="")}  # fmt: skip
    return next((why for why, q in loosened.items() if not score(q, scene, min_offset)), "relation")


def summarize_failures(prompts: list[Prompt], reasons: list[list[str]]) -> dict:
    """Per task (both splits): the share of its images failing for each reason of `FAILURES`."""
    out = {}
    for task in TASKS:
        vals = [r for p, rs in zip(prompts, reasons) if p.task == task for r in rs]
        if vals:
            out[task] = {why: vals.count(why) / len(vals) for why in FAILURES}
    return out


def solve(p: Prompt, rng: np.random.Generator, tries: int = 1000) -> Scene:
    """A scene that satisfies the prompt (for the ground-truth check of the scorer)."""
    named = [(c or str(rng.choice([k for k in COLORS if (k, s) not in HELD_OUT_PAIRS or p.held_out])), s)
             for c, s in p.objects]  # fmt: skip
    if p.task == "counting":
        named = named * p.count
    bg = next((b for b in BACKGROUNDS if f"on a {b} background" in p.text), str(rng.choice(list(BACKGROUNDS))))
    size = p.size or ("small" if len(named) > 2 else str(rng.choice(list(SIZES))))
    for _ in range(tries):
        placed: list[Obj] = []
        for c, s in named:
            o = place(rng, Obj("shape", 0.5, 0.5, color=c, shape=s, size=size), placed)
            if o is None:
                break
            placed.append(o)
        scene = Scene(bg, tuple(placed))
        if len(placed) == len(named) and score(p, scene, min_offset=2 * MIN_OFFSET):  # clear of the threshold
            return scene
    raise RuntimeError(f"no scene found for {p.text!r}")


def summarize(prompts: list[Prompt], passed: list[list[bool]]) -> dict:
    """Accuracy per task and overall (mean of task accuracies), per split."""
    out = {}
    for split, held in (("in_distribution", False), ("held_out", True)):
        per_task = {}
        for task in TASKS:
            vals = [v for p, vs in zip(prompts, passed) if p.task == task and p.held_out == held for v in vs]
            if vals:
                per_task[task] = sum(vals) / len(vals)
        if per_task:
            out[split] = {"tasks": per_task, "overall": sum(per_task.values()) / len(per_task),
                          "prompts": sum(p.held_out == held for p in prompts)}  # fmt: skip
    return out

