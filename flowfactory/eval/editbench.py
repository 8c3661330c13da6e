"""editbench-mini: instruction editing on the shapes world, KontextBench's five categories.

A pair passes when the edited image parses to the expected scene: same background, same
objects, and every object whose place the instruction fixes within `POS_TOL` of where it
should be (objects the instruction adds may go anywhere). Also reported: pixel PSNR of
the regions the edit should leave untouched.
"""

from __future__ import annotations

import numpy as np

from flowfactory.data.edits import CATEGORIES, EditPair
from flowfactory.data.shapes import Scene, _identity, render

POS_TOL = 0.08  # 5 px at 64 px


def _placed(edited: Scene, target: Scene, free: tuple[int, ...], tol: float) -> bool:
    """Every object of `target` (but those at the `free` indices) has a same-identity partner in
    `edited` within `tol` of its place, each partner used once."""
    remaining = list(edited.objects)
    fixed = [o for i, o in enumerate(target.objects) if i not in free]
    for o in fixed:
        near = [(abs(e.cx - o.cx) + abs(e.cy - o.cy), k) for k, e in enumerate(remaining)
                if _identity(e) == _identity(o) and max(abs(e.cx - o.cx), abs(e.cy - o.cy)) <= tol]  # fmt: skip
        if not near:
            return False
        remaining.pop(min(near)[1])
    return True


def matches(edited: Scene, pair: EditPair, tol: float = POS_TOL) -> bool:
    return edited.canonical() == pair.target.canonical() and _placed(edited, pair.target, pair.free, tol)


FAILURES = ("ignored", "background", "count", "kept", "edited", "position")  # in the order `failure` checks them


def _covers(found: list[tuple], wanted: list[tuple]) -> bool:
    """Is the multiset `wanted` contained in the multiset `found`?"""
    pool = list(found)
    for w in wanted:
        if w not in pool:
            return False
        pool.remove(w)
    return True


def failure(edited: Scene, pair: EditPair, tol: float = POS_TOL) -> str:
    """Why the edited scene fails the pair: its first unmet requirement among `FAILURES`, or ""
    when it passes. "ignored": the output is the source scene again (the instruction was not
    followed, the rest kept); "background", "count": the target's background or number of
    objects missed; "kept": an object the edit leaves alone lost its identity (colour, shape,
    size, pattern, digit or character); "edited": an object the edit makes or changes has the
    wrong identity; "position": every object right but one out of place."""
    target, source = pair.target, pair.source
    if matches(edited, pair, tol):
        return ""
    same_as_source = edited.canonical() == source.canonical() and _placed(edited, source, (), tol)
    if same_as_source and not (source.canonical() == target.canonical() and _placed(source, target, pair.free, tol)):
        return "ignored"
    if edited.background != target.background:
        return "background"
    if len(edited.objects) != len(target.objects):
        return "count"
    found = [_identity(o) for o in edited.objects]
    kept = [_identity(o) for i, o in enumerate(target.objects)
            if i not in pair.free and _placed(source, Scene(target.background, (o,)), (), tol)]  # fmt: skip
    if not _covers(found, kept):
        return "kept"
    if edited.canonical() != target.canonical():
        return "edited"
    return "position"


def untouched_psnr(edited: np.ndarray, pair: EditPair, size: int = 64) -> float:
    """PSNR (dB) between the edited image and the target over pixels the edit does not change."""
    src, tgt = render(pair.source, size), render(pair.target, size)
    keep = (src == tgt).all(-1)
    if not keep.any():
        return float("nan")
    mse = ((edited[keep].astype(np.float64) - tgt[keep].astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def summarize(pairs: list[EditPair], passed: list[bool], psnr: list[float], reasons: list[str] | None = None) -> dict:
    """Pass rate per category and overall, mean untouched PSNR; with `reasons` (from `failure`)
    also, per category, the share of its pairs failing for each reason of `FAILURES`."""
    per_cat, failures = {}, {}
    for cat in CATEGORIES:
        vals = [v for p, v in zip(pairs, passed) if p.category == cat]
        if vals:
            per_cat[cat] = sum(vals) / len(vals)
        whys = [r for p, r in zip(pairs, reasons or []) if p.category == cat]
        if whys:
            failures[cat] = {why: whys.count(why) / len(whys) for why in FAILURES}
    finite = [v for v in psnr if np.isfinite(v)]
    out = {
        "tasks": per_cat,
        "overall": sum(passed) / len(passed),
        "untouched_psnr_db": float(np.mean(finite)) if finite else float("inf"),
        "pairs": len(pairs),
    }
    if reasons is not None:
        out["failures"] = failures
    return out
