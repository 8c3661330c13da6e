"""Multi-aspect buckets (SDXL): near-constant pixel count, sides multiples of the model stride.

An image goes to the bucket closest in log aspect ratio, is resized to cover it and cropped;
the resize and crop are recorded as SDXL micro-conditioning
`(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`. Each batch comes from one bucket.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

Micro = tuple[int, int, int, int, int, int]  # orig_h, orig_w, crop_top, crop_left, target_h, target_w


def make_buckets(side: int, stride: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(height, width) buckets of about `side`^2 pixels, aspect ratio within [1/max_ratio, max_ratio]."""
    if side % stride:
        raise ValueError(f"bucket side {side} is not a multiple of the stride {stride}")
    area = side * side
    out = set()
    for h in range(stride, side + 1, stride):  # landscape and square; portrait by mirroring
        w = int(area / h) // stride * stride  # the largest width that keeps h * w <= area
        if w / h <= max_ratio:
            out.add((h, w))
            out.add((w, h))
    return sorted(out, key=lambda hw: hw[0] / hw[1])


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket closest in log aspect ratio."""
    r = math.log(height / width)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - r))


def resize_crop(im: Image.Image, target: tuple[int, int], rng: np.random.Generator | None) -> tuple[Image.Image, Micro]:
    """Resize to cover `target` (h, w) and crop (random with `rng`, else centred)."""
    th, tw = target
    w, h = im.size
    scale = max(th / h, tw / w)
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (rw, rh) != (w, h):
        im = im.resize((rw, rh), Image.BICUBIC, reducing_gap=3.0)
    top = int(rng.integers(0, rh - th + 1)) if rng is not None else (rh - th) // 2
    left = int(rng.integers(0, rw - tw + 1)) if rng is not None else (rw - tw) // 2
    return im.crop((left, top, left + tw, top + th)), (h, w, top, left, th, tw)


class BucketPlan:
    """Global batches by step, each from one bucket: a pure function of (seed, step).

    Each epoch shuffles every bucket's members, cuts them into batches (a bucket's last, partial
    batch is completed with its first members), and shuffles the order of all batches.
    """

    def __init__(self, bucket_of: list[int], batch_size: int, seed: int):
        self.members: dict[int, np.ndarray] = {}
        for b in sorted(set(bucket_of)):
            self.members[b] = np.array([i for i, x in enumerate(bucket_of) if x == b])
        self.batch_size, self.seed = batch_size, seed
        self.per_epoch = sum(math.ceil(len(m) / batch_size) for m in self.members.values())
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def epoch(self, e: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != e:
            rng = np.random.default_rng([self.seed, e])
            batches = []
            for m in self.members.values():
                m = rng.permutation(m)
                n = math.ceil(len(m) / self.batch_size) * self.batch_size
                m = np.resize(m, n)  # wraps around: completes the last batch with the first members
                batches += list(m.reshape(-1, self.batch_size))
            order = rng.permutation(len(batches))
            self._epoch = (e, [batches[i] for i in order])
        return self._epoch[1]

    def batch(self, step: int) -> list[int]:
        e, k = divmod(step, self.per_epoch)
        return [int(i) for i in self.epoch(e)[k]]
