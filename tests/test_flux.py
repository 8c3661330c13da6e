"""The transformer against diffusers' FluxTransformer2DModel (the independent oracle)."""

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

from conftest import flux_inputs, randomize_
from flowfactory.config import model_config
from flowfactory.models.convert import flux_from_diffusers, flux_to_diffusers
from flowfactory.models.flux import Flux, FluxParams, count_params, forward_flops


def small_params(guidance: bool) -> FluxParams:
    return FluxParams(in_channels=16, out_channels=16, vec_in_dim=8, context_in_dim=12, hidden_size=32, num_heads=2,
                      depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6], guidance_embed=guidance)


def diffusers_model(p: FluxParams) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=p.in_channels, out_channels=p.out_channels, num_layers=p.depth,
        num_single_layers=p.depth_single_blocks, attention_head_dim=p.hidden_size // p.num_heads,
        num_attention_heads=p.num_heads, joint_attention_dim=p.context_in_dim, pooled_projection_dim=p.vec_in_dim,
        guidance_embeds=p.guidance_embed, axes_dims_rope=tuple(p.axes_dim),
    ).eval()


def run_diffusers(model, inp, h, w):
    return model(
        hidden_states=inp["img"], encoder_hidden_states=inp["txt"], pooled_projections=inp["y"],
        timestep=inp["timesteps"], img_ids=inp["img_ids"][0], txt_ids=inp["txt_ids"][0], guidance=inp["guidance"],
    ).sample


@pytest.mark.parametrize("guidance", [True, False])
@pytest.mark.parametrize("hw", [(4, 4), (3, 5), (6, 2)])
def test_matches_diffusers(guidance, hw):
    p = small_params(guidance)
    ours = randomize_(Flux(p)).eval()
    theirs = diffusers_model(p)
    theirs.load_state_dict(flux_to_diffusers(ours.state_dict()), strict=True)
    inp = flux_inputs(p, 2, *hw, n_txt=7)
    with torch.no_grad():
        a = ours(**inp)
        b = run_diffusers(theirs, inp, *hw)
    assert a.shape == (2, hw[0] * hw[1], p.out_channels)
    assert (a - b).abs().max().item() <= 1e-4


def test_converter_roundtrip_is_exact():
    sd = randomize_(Flux(small_params(True))).state_dict()
    back = flux_from_diffusers(flux_to_diffusers(sd))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_real_width_against_diffusers_own_converter():
    """Hidden 3072 (the released width), 1 double + 1 single block, diffusers' converter on our state dict."""
    p = FluxParams(in_channels=64, out_channels=64, vec_in_dim=32, context_in_dim=64, depth=1, depth_single_blocks=1)
    ours = Flux(p).eval()
    randomize_(ours, std=0.02)
    theirs = diffusers_model(p)
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(ours.state_dict()))
    theirs.load_state_dict(converted, strict=True)
    ours_converted = flux_to_diffusers(ours.state_dict())
    assert set(ours_converted) == set(converted)
    inp = flux_inputs(p, 1, 4, 6, n_txt=8)
    with torch.no_grad():
        a, b = ours(**inp), run_diffusers(theirs, inp, 4, 6)
    assert (a - b).abs().max().item() <= 1e-4


def test_released_shapes_on_meta_device():
    with torch.device("meta"):
        dev = Flux(model_config("flux1-dev").flux)
        schnell = Flux(model_config("flux1-schnell").flux)
    assert abs(count_params(dev) - 11.9e9) <= 0.1e9
    assert not any(k.startswith("guidance_in.") for k in schnell.state_dict())
    assert any(k.startswith("guidance_in.") for k in dev.state_dict())
    # SPECS.md: about 74 TFLOP at 1024^2 with 512 text tokens
    assert abs(forward_flops(model_config("flux1-dev").flux, 4096, 512) / 1e12 - 74) < 1


def test_per_token_timesteps_equal_per_sample_when_constant():
    p = small_params(True)
    m = randomize_(Flux(p)).eval()
    inp = flux_inputs(p, 2, 3, 4, n_txt=5)
    per_token = dict(inp, timesteps=inp["timesteps"][:, None].expand(-1, 12).contiguous())
    with torch.no_grad():
        a, b = m(**inp), m(**per_token)
    assert torch.allclose(a, b, atol=1e-4)  # float32 rounding on outputs of magnitude ~5
    varied = dict(inp, timesteps=torch.rand(2, 12))
    with torch.no_grad():
        assert not torch.allclose(m(**varied), a, atol=1e-3)


def test_guidance_required_and_bad_params():
    p = small_params(True)
    m = Flux(p)
    inp = flux_inputs(p, 1, 2, 2, n_txt=3)
    with pytest.raises(ValueError, match="guidance"):
        m(**dict(inp, guidance=None))
    with pytest.raises(ValueError, match="head dim"):
        FluxParams(hidden_size=64, num_heads=2, axes_dim=[4, 6, 6])
