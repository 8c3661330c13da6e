"""Redux (image variation): the projection matches diffusers' ReduxImageEncoder; training moves only
the Redux encoder; `vary` runs; the variation benchmark's scorer and command."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
from PIL import Image
from test_cli import assert_one_line_error, run

from conftest import randomize_
from flowfactory.config import recipe, tiny_latent
from flowfactory.data.shapes import Scene, place, render
from flowfactory.eval.run import _cases, variation_kept
from flowfactory.models.redux import ReduxEncoder, ReduxParams, latent_features
from flowfactory.pipeline import Pipeline
from flowfactory.train.trainer import Trainer


def test_projection_matches_diffusers_redux_encoder():
    ours = randomize_(ReduxEncoder(ReduxParams(redux_dim=24, txt_dim=16)), std=0.1)
    theirs = ReduxImageEncoder(redux_dim=24, txt_in_features=16)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names as the released Redux file
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        assert (ours(x) - theirs(x).image_embeds).abs().max() <= 1e-6


def redux_cfg(patch: int = 1):
    model = dataclasses.replace(tiny_latent(), name="tiny-redux", redux_grid=2, redux_patch=patch)
    return dataclasses.replace(recipe("shapes-redux"), model=model, image_size=16, batch_size=4, steps=5,
                               val_every=0, checkpoint_every=1000, ema_decay=0.0, lr=1e-2, warmup=1,
                               export_dtype="fp32")  # fmt: skip


@pytest.mark.parametrize("patch", [1, 2])
def test_redux_training_moves_only_the_encoder(tmp_path, patch):
    cfg = redux_cfg(patch)
    init = Pipeline.from_config(cfg.model)
    randomize_(init.transformer, std=0.1)
    before = {k: v.clone() for k, v in init.transformer.state_dict().items()}
    red0 = {k: v.clone() for k, v in init.redux.state_dict().items()}
    tr = Trainer(cfg, tmp_path, progress=False, init=init)
    assert tr.params and all(any(p is q for q in init.redux.parameters()) for p in tr.params)
    tr.fit()
    assert all(torch.equal(v, init.transformer.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, init.redux.state_dict()[k]) for k, v in red0.items())
    out = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000005.safetensors")
    assert torch.equal(out.redux.redux_up.weight, init.redux.redux_up.weight)
    assert out.cfg.redux_patch == patch and out.redux.params.redux_dim == 4 * patch**2  # tiny-latent: 4 channels
    if patch > 1:  # the learned positions trained (from zero) and were saved
        assert init.redux.pos.abs().max() > 0 and torch.equal(out.redux.pos, init.redux.pos)


def test_patch_features_keep_each_cells_pixels_and_positions_tell_cells_apart():
    z = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    assert torch.equal(latent_features(z, 2), z.reshape(1, 2, 2, 2, 2, 2).mean((3, 5)).flatten(2).transpose(1, 2))
    f = latent_features(z, 2, patch=2)  # [1, 4 cells, 2 channels x 2 x 2]
    assert f.shape == (1, 4, 8)
    assert torch.equal(f[0, 1], z[0, :, 0:2, 2:4].flatten())  # cell (row 0, col 1): its channels' 2 x 2 pixels
    assert torch.equal(latent_features(z, 1, patch=4)[0, 0], z[0].flatten())  # one token: the whole latent
    enc = ReduxEncoder(ReduxParams(redux_dim=8, txt_dim=16, grid=2, positions=True))
    same = torch.randn(1, 1, 8).expand(1, 4, 8)
    assert torch.equal(enc(same)[0, 0], enc(same)[0, 3])  # zero-initialised positions: no change until trained
    randomize_(enc, std=0.1)
    assert not torch.allclose(enc(same)[0, 0], enc(same)[0, 3])  # the same patch in another cell: another token
    with pytest.raises(ValueError, match="positions"):
        enc(torch.randn(1, 9, 8))


def test_vary_command(tmp_path):
    pipe = Pipeline.from_config(redux_cfg().model)
    pipe.save(tmp_path / "redux.safetensors")
    Pipeline.from_config(tiny_latent()).save(tmp_path / "plain.safetensors")
    Image.new("RGB", (16, 16), (230, 40, 40)).save(tmp_path / "in.png")
    rc, _, err = run("vary", str(tmp_path / "in.png"), "--checkpoint", str(tmp_path / "redux.safetensors"), "--steps",
                     "2", "-o", str(tmp_path / "out.png"))  # fmt: skip
    assert rc == 0, err
    assert Image.open(tmp_path / "out.png").size == (16, 16)
    assert_one_line_error(*run("vary", str(tmp_path / "in.png"), "--checkpoint", str(tmp_path / "plain.safetensors"))[::2],
                          "no image-variation")  # fmt: skip


def test_a_text_to_image_model_gains_a_redux_encoder(tmp_path):
    """`train --recipe shapes-redux --init CKPT` starts from a plain model: `with_redux` adds the
    encoder, keeps the transformer, and names the model as the recipe does."""
    base = Pipeline.from_config(tiny_latent())
    red = base.with_redux(2)
    assert red.cfg.name == "tiny-latent-redux" and red.cfg.redux_grid == 2 and red.redux is not None
    assert red.transformer is base.transformer
    red.save(tmp_path / "r.safetensors")
    assert Pipeline.from_checkpoint(tmp_path / "r.safetensors").redux is not None


def test_variation_scorer_is_layout_free_and_content_exact():
    rng = np.random.default_rng(0)
    for scene, _, i in _cases(60, seed=1):
        moved = []
        for o in scene.objects:
            moved += [p for p in [place(rng, o, moved)] if p is not None]
        if len(moved) < len(scene.objects):  # no room for a new layout
            continue
        assert variation_kept(scene, render(Scene(scene.background, tuple(moved)), 64)) == dict.fromkeys(
            ("objects_kept", "colours_kept", "count_kept", "background_kept"), True)  # fmt: skip
        one_less = Scene(scene.background, scene.objects[:i] + scene.objects[i + 1 :])
        got = variation_kept(scene, render(one_less, 64))
        assert not got["objects_kept"] and not got["count_kept"] and got["background_kept"]
        other_bg = "black" if scene.background != "black" else "white"
        assert not variation_kept(scene, render(Scene(other_bg, scene.objects), 64))["objects_kept"]


def test_eval_variation_command(tmp_path):
    Pipeline.from_config(redux_cfg().model).save(tmp_path / "redux.safetensors")
    Pipeline.from_config(tiny_latent()).save(tmp_path / "plain.safetensors")
    rc, out, err = run("eval", "variation", "--checkpoint", str(tmp_path / "redux.safetensors"), "--pairs", "4",
                       "--steps", "2", "--out", str(tmp_path / "v"), "--json")  # fmt: skip
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["cases"] == 4 and summary["conditioning"] == "image"
    assert all(0 <= summary[k] <= 1 for k in ("objects_kept", "colours_kept", "count_kept", "background_kept"))
    assert json.loads((tmp_path / "v" / "variation.json").read_text())["summary"] == summary
    assert (tmp_path / "v" / "variation.png").exists()
    assert_one_line_error(*run("eval", "variation", "--checkpoint", str(tmp_path / "plain.safetensors"))[::2],
                          "no Redux encoder")  # fmt: skip
