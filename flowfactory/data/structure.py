"""Structure from shapes-world scenes, for fill and control training and their benchmarks.

- `object_mask`: a box around one object (a few pixels of margin): the region to inpaint.
- `edge_map`: white outlines of every object on black (the world's Canny).
- `depth_map`: each object's silhouette filled with a grey level by its area rank (larger =
  nearer = brighter), background black (the world's depth estimate: object order and size).
Control encoders are functions `image (uint8 [H, W, 3]) -> uint8 [H, W, 3]` in CONTROL_ENCODERS;
real ones (a Canny filter, a depth network) plug in under a new name.
"""

from __future__ import annotations

import numpy as np

from flowfactory.data.shapes import BACKGROUNDS, Scene, render


def _silhouettes(scene: Scene, size: int) -> list[np.ndarray]:
    """One boolean mask per object (where rendering it changes the background)."""
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.int16)
    out = []
    for o in scene.objects:
        img = render(Scene(scene.background, (o,)), size).astype(np.int16)
        out.append(np.abs(img - bg).sum(-1) > 0)
    return out


def object_mask(scene: Scene, index: int, size: int = 64, margin: int = 3) -> np.ndarray:
    """float32 `[size, size]`, 1 inside the box around object `index` (plus `margin` pixels)."""
    sil = _silhouettes(scene, size)[index]
    ys, xs = np.nonzero(sil)
    m = np.zeros((size, size), np.float32)
    m[max(0, ys.min() - margin) : ys.max() + margin + 1, max(0, xs.min() - margin) : xs.max() + margin + 1] = 1
    return m


def edge_map(image: np.ndarray) -> np.ndarray:
    """Outlines: pixels whose colour differs from a 4-neighbour's."""
    a = image.astype(np.int16)
    e = np.zeros(a.shape[:2], bool)
    e[1:] |= np.abs(a[1:] - a[:-1]).sum(-1) > 30
    e[:-1] |= np.abs(a[1:] - a[:-1]).sum(-1) > 30
    e[:, 1:] |= np.abs(a[:, 1:] - a[:, :-1]).sum(-1) > 30
    e[:, :-1] |= np.abs(a[:, 1:] - a[:, :-1]).sum(-1) > 30
    return np.repeat((e * 255).astype(np.uint8)[..., None], 3, axis=-1)


def depth_map(scene: Scene, size: int = 64) -> np.ndarray:
    sils = _silhouettes(scene, size)
    order = np.argsort([s.sum() for s in sils])  # smallest first: the largest is nearest, brightest
    d = np.zeros((size, size), np.uint8)
    for rank, i in enumerate(order):
        d[sils[i]] = 96 + round(159 * (rank + 1) / len(sils))
    return np.repeat(d[..., None], 3, axis=-1)


CONTROL_ENCODERS = {
    "edges": lambda scene, size: edge_map(render(scene, size)),
    "depth": depth_map,
}
