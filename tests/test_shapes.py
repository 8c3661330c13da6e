"""The shapes world: exact palette, determinism, grammar, held-out combinations."""

import numpy as np

from flowfactory.data.shapes import (
    BACKGROUNDS,
    COLORS,
    HELD_OUT_PAIRS,
    HELD_OUT_RELATIONS,
    NUMBERS,
    SHAPES,
    Obj,
    Scene,
    ShapesDataset,
    overlaps,
    relation,
    render,
)
from flowfactory.eval.geneval import prompt_set


def test_exact_palette_and_background():
    img = render(Scene("gray", (Obj("shape", 0.5, 0.5, color="purple", shape="square", size="large"),)))
    assert tuple(img[0, 0]) == BACKGROUNDS["gray"] == (128, 128, 128)
    assert tuple(img[32, 32]) == COLORS["purple"] == (160, 60, 210)
    assert abs((img == COLORS["purple"]).all(-1).sum() - 22 * 22) <= 2 * 23  # a 22-px square, give or take an edge


def test_samples_are_pure_functions_of_seed_and_index():
    a, b, c = ShapesDataset(seed=3), ShapesDataset(seed=3), ShapesDataset(seed=4)
    for i in (0, 17, 10**9):
        assert a.scene(i) == b.scene(i)
    assert [a.scene(i) for i in range(20)] != [c.scene(i) for i in range(20)]
    img, text = a[5]
    assert img.shape == (3, 64, 64) and -1 <= img.min() and img.max() <= 1 and text


def test_objects_never_overlap_and_stay_inside():
    ds = ShapesDataset(seed=1)
    for i in range(500):
        s, _ = ds.scene(i)
        assert 1 <= len(s.objects) <= 4
        for j, a in enumerate(s.objects):
            w, h = a.extent()
            assert w / 2 <= a.cx * 64 <= 64 - w / 2 and h / 2 <= a.cy * 64 <= 64 - h / 2
            assert not any(overlaps(a, b) for b in s.objects[j + 1 :])


def test_held_out_combinations_never_appear_in_training():
    ds = ShapesDataset(seed=0)
    held_words = {f"{c} {s}" for c, s in HELD_OUT_PAIRS}
    for i in range(3000):
        s, text = ds.scene(i)
        for o in s.objects:
            assert (o.color, o.shape) not in HELD_OUT_PAIRS
        assert not any(w in text for w in held_words), text
        shapes = [o for o in s.objects if o.kind == "shape"]
        if len(shapes) == 2 and any(r in text for r in ("left of", "right of", "above", "below")):
            a, b = shapes
            assert (a.shape, relation(a, b), b.shape) not in HELD_OUT_RELATIONS


def test_caption_grammar_covers_every_scene_kind():
    texts = [ShapesDataset(seed=2).scene(i)[1] for i in range(400)]
    for needle in ("digit", "robot", "tree", "ghost", "flower", "two ", "three ", "striped", "outline", " and ",
                   "above", "background"):  # fmt: skip
        assert any(needle in t for t in texts), needle


def _wording(text: str) -> str:
    """A caption with its colours, shapes, numbers, backgrounds and sizes replaced by placeholders."""
    slots = {**dict.fromkeys(COLORS, "C"), **dict.fromkeys(BACKGROUNDS, "B"), **dict.fromkeys(NUMBERS.values(), "N"),
             **dict.fromkeys(SHAPES, "S"), **{s + ("es" if s == "cross" else "s"): "S" for s in SHAPES},
             "small": "Z", "large": "Z"}  # fmt: skip
    return " ".join(slots.get(w, w) for w in text.replace(",", "").split())


def test_training_captions_cover_the_benchmark_wordings():
    """Every in-distribution geneval-mini prompt is worded the way some training caption is (the
    colourless "a triangle and a square" once never was): held out are combinations, not wordings."""
    ds = ShapesDataset(seed=0)
    seen = {_wording(ds.scene(i)[1]) for i in range(20000)}
    missing = {_wording(p.text) for p in prompt_set() if not p.held_out} - seen
    assert not missing


def test_rendering_scales_with_canvas():
    s = Scene("white", (Obj("shape", 0.5, 0.5, color="red", shape="circle", size="large"),))
    small, big = render(s, 64), render(s, 128)
    frac = lambda im: (im == COLORS["red"]).all(-1).mean()  # noqa: E731
    assert abs(frac(small) - frac(big)) < 0.01
    assert np.isclose(frac(small), np.pi * 11**2 / 64**2, rtol=0.1)
