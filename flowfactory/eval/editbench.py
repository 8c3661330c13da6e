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


def matches(edited: Scene, pair: EditPair, tol: float = POS_TOL) -> bool:
    target = pair.target
    if edited.canonical() != target.canonical():
        return False
    remaining = list(edited.objects)
    fixed = [o for i, o in enumerate(target.objects) if i not in pair.free]
    for o in fixed:  # every placed object needs a same-identity partner within tol
        near = [(abs(e.cx - o.cx) + abs(e.cy - o.cy), k) for k, e in enumerate(remaining) if _identity(e) == _identity(o)]
        near = [(d, k) for d, k in near if d <= 2 * tol and max(abs(remaining[k].cx - o.cx), abs(remaining[k].cy - o.cy)) <= tol]
        if not near:
            return False
        remaining.pop(min(near)[1])
    return True


def untouched_psnr(edited: np.ndarray, pair: EditPair, size: int = 64) -> float:
    """PSNR (dB) between the edited image and the target over pixels the edit does not change."""
    src, tgt = render(pair.source, size), render(pair.target, size)
    keep = (src == tgt).all(-1)
    if not keep.any():
        return float("nan")
    mse = ((edited[keep].astype(np.float64) - tgt[keep].astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def summarize(pairs: list[EditPair], passed: list[bool], psnr: list[float]) -> dict:
    per_cat = {}
    for cat in CATEGORIES:
        vals = [v for p, v in zip(pairs, passed) if p.category == cat]
        if vals:
            per_cat[cat] = sum(vals) / len(vals)
    finite = [v for v in psnr if np.isfinite(v)]
    return {
        "tasks": per_cat,
        "overall": sum(passed) / len(passed),
        "untouched_psnr_db": float(np.mean(finite)) if finite else float("inf"),
        "pairs": len(pairs),
    }
