"""The analyzer parses rendered scenes back exactly, under noise and blur too, and never crashes."""

import numpy as np
import pytest
from scipy import ndimage

from flowfactory.data.shapes import Obj, Scene, ShapesDataset, render
from flowfactory.eval.analyzer import analyze, same_scene


def noisy(img: np.ndarray, rng: np.random.Generator, sigma=0.05, blur=0.5) -> np.ndarray:
    f = ndimage.gaussian_filter(img.astype(np.float32) / 255, sigma=(blur, blur, 0))
    return np.clip(f + rng.normal(0, sigma, f.shape), 0, 1)


def test_parses_1000_random_scenes():
    ds = ShapesDataset(seed=777)
    rng = np.random.default_rng(0)
    clean = noisy_ok = 0
    for i in range(1000):
        scene, _ = ds.scene(i)
        img = render(scene)
        clean += same_scene(analyze(img), scene)
        noisy_ok += same_scene(analyze(noisy(img, rng)), scene)
    assert clean >= 990, clean
    assert noisy_ok >= 950, noisy_ok


def test_positions_and_attributes():
    s = Scene("black", (Obj("shape", 0.25, 0.3, color="cyan", shape="triangle", size="large", pattern="striped"),
                        Obj("digit", 0.75, 0.7, color="yellow", digit="4", size="large")))  # fmt: skip
    p = analyze(render(s))
    assert same_scene(p, s)
    tri = next(o for o in p.objects if o.kind == "shape")
    assert abs(tri.cx - 0.25) < 0.03 and abs(tri.cy - 0.3) < 0.03


def test_works_at_other_canvas_sizes():
    ds = ShapesDataset(seed=9)
    ok = sum(same_scene(analyze(render(ds.scene(i)[0], 128)), ds.scene(i)[0]) for i in range(100))
    assert ok >= 97


@pytest.mark.parametrize("image", [
    np.zeros((64, 64, 3), np.uint8),
    np.full((64, 64, 3), 255, np.uint8),
    np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8),
    np.random.default_rng(1).random((50, 70, 3)),  # float, odd size
    np.linspace(0, 255, 96 * 96 * 3).reshape(96, 96, 3).astype(np.uint8),  # a smooth "photo"
    np.zeros((3, 3, 3), np.uint8),
    np.zeros((64, 64), np.uint8),  # grey-scale
])  # fmt: skip
def test_never_crashes_on_foreign_images(image):
    scene = analyze(image)
    assert isinstance(scene, Scene)

