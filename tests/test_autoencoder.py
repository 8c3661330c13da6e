"""The autoencoder against diffusers' AutoencoderKL loaded through `convert_ldm_vae_checkpoint`."""

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from conftest import randomize_
from flowfactory.models.autoencoder import AutoEncoder, AutoEncoderParams
from flowfactory.models.convert import ConversionError, ae_from_diffusers, ae_to_diffusers


@pytest.fixture
def pair():
    p = AutoEncoderParams(ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=4, norm_groups=8)
    ours = randomize_(AutoEncoder(p), std=0.1).eval()
    cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
               up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 32], layers_per_block=1,
               latent_channels=4, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False)
    theirs = AutoencoderKL(**cfg).eval()
    theirs.load_state_dict(convert_ldm_vae_checkpoint(dict(ours.state_dict()), cfg), strict=True)
    return p, ours, theirs, cfg


def test_encode_decode_match_diffusers(pair):
    p, ours, theirs, _ = pair
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        z = ours.encode(x)
        z_ref = p.scale_factor * (theirs.encode(x).latent_dist.mean - p.shift_factor)
        assert z.shape == (2, 4, 8, 6)
        assert (z - z_ref).abs().max().item() <= 1e-4
        rec = ours.decode(z)
        rec_ref = theirs.decode(z / p.scale_factor + p.shift_factor).sample
        assert (rec - rec_ref).abs().max().item() <= 1e-4


def test_our_converter_equals_diffusers_converter_and_roundtrips(pair):
    _, ours, _, cfg = pair
    sd = ours.state_dict()
    theirs = convert_ldm_vae_checkpoint(dict(sd), cfg)
    mine = ae_to_diffusers(sd)
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    back = ae_from_diffusers(mine)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_released_autoencoder_layout():
    with torch.device("meta"):
        ae = AutoEncoder(AutoEncoderParams())
    sd = ae.state_dict()
    assert sd["encoder.conv_out.weight"].shape == (32, 512, 3, 3)  # 2 x 16 latent channels
    assert sd["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert ae.params.downsample == 8


def test_bad_state_dicts_are_rejected():
    with pytest.raises(ConversionError):
        ae_to_diffusers({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="norm_groups"):
        AutoEncoderParams(ch=12, norm_groups=8)
