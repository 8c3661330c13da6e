"""Fill and control data for the shapes world, their scorers on ground truth, and training on them."""

import dataclasses

import numpy as np
import pytest

from flowfactory.config import recipe, tiny_latent, with_channel_cond
from flowfactory.data.shapes import BACKGROUNDS, render
from flowfactory.data.sources import DataOptions, StructureSource
from flowfactory.data.structure import depth_map, edge_map, object_mask
from flowfactory.errors import UserError
from flowfactory.eval.run import _cases, control_passes, fill_passes
from flowfactory.train.trainer import Trainer


def test_scorers_pass_on_ground_truth_and_fail_without_the_object():
    cases = _cases(100, seed=0)
    for scene, _, i in cases:
        img = render(scene, 64)
        assert fill_passes(scene, i, img) and control_passes(scene, img)
        m = object_mask(scene, i, 64)
        erased = img.copy()
        erased[m > 0] = BACKGROUNDS[scene.background]
        assert not fill_passes(scene, i, erased)
        assert not control_passes(scene, erased, identity=False)  # an object missing: positions not followed
        recoloured = render(dataclasses.replace(scene, objects=tuple(
            dataclasses.replace(o, color="red" if o.color != "red" else "blue") if j == i and o.color else o
            for j, o in enumerate(scene.objects))), 64)  # fmt: skip
        if scene.objects[i].color:  # the object's place is right, its identity is not
            assert control_passes(scene, recoloured, identity=False) and not control_passes(scene, recoloured)


def test_maps_mark_objects():
    scene, _, i = _cases(1, seed=3)[0]
    img = render(scene, 64)
    e, d, m = edge_map(img), depth_map(scene, 64), object_mask(scene, i, 64)
    assert e.max() == 255 and (e > 0).mean() < 0.5
    assert d.max() > 96 and set(np.unique(d[..., 0])) >= {0}
    o = scene.objects[i]
    assert m[int(o.cy * 64), int(o.cx * 64)] == 1 and m.mean() < 0.5


def test_fill_and_control_models_train_on_their_data(tmp_path):
    base = dataclasses.replace(recipe("tiny-shapes"), image_size=16, steps=3, batch_size=4, val_every=0,
                               dataset_size=0)  # fmt: skip
    fill = dataclasses.replace(base, model=with_channel_cond(tiny_latent(), "fill"), dataset="fills")
    assert Trainer(fill, tmp_path / "fill", progress=False).fit()["loss"] > 0
    ctl = dataclasses.replace(base, model=with_channel_cond(tiny_latent(), "control"), dataset="controls:edges",
                              lora_rank=2, train_text_encoder=False)  # fmt: skip
    tr = Trainer(ctl, tmp_path / "ctl", progress=False)
    assert any(p.shape == tr.pipe.transformer.img_in.weight.shape for p in tr.params)  # img_in trains in full
    assert tr.fit()["loss"] > 0
    src = StructureSource(DataOptions(16, 4), "fills")
    masks = [src.sample(i).mask for i in range(40)]
    assert all(m.shape == (1, 16, 16) and 0 < m.mean() < 1 for m in masks)
    wrong = dataclasses.replace(base, model=tiny_latent(), dataset="fills")
    with pytest.raises(UserError, match="the data gives fill"):
        Trainer(wrong, tmp_path / "w", progress=False).fit()
