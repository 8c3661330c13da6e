"""Kontext, fill and control token preparation against diffusers' pipelines, with shared random weights."""

import pytest
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxFillPipeline,
                       FluxKontextPipeline, FluxTransformer2DModel)  # fmt: skip
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from conftest import randomize_
from flowfactory.conditioning import Conditioning, kontext
from flowfactory.config import ModelConfig, input_channels
from flowfactory.errors import UserError
from flowfactory.models.autoencoder import AutoEncoder, AutoEncoderParams
from flowfactory.models.convert import flux_to_diffusers
from flowfactory.models.flux import Flux, FluxParams
from flowfactory.models.text import EmbeddedTextParams, build_text_encoder
from flowfactory.pipeline import Pipeline, pack

TOL = 1e-5  # fp32; measured ~3e-7


def build(kind: str):
    """Our pipeline and diffusers' (transformer + AutoencoderKL) with the same random weights."""
    ae_p = AutoEncoderParams(ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, norm_groups=8, scale_factor=0.9,
                             shift_factor=0.1)  # fmt: skip
    ae = randomize_(AutoEncoder(ae_p), std=0.1).eval()
    vae_cfg = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                   up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32], layers_per_block=1,
                   latent_channels=4, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                   scaling_factor=0.9, shift_factor=0.1)  # fmt: skip
    vae = AutoencoderKL(**vae_cfg).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(dict(ae.state_dict()), vae_cfg), strict=True)
    p = FluxParams(in_channels=input_channels(4, 2, 2, kind), out_channels=16, vec_in_dim=8, context_in_dim=12,
                   hidden_size=32, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 4, 4], guidance_embed=True)  # fmt: skip
    flux = randomize_(Flux(p), std=0.1).eval()
    text = EmbeddedTextParams(vocab_size=64, dim=12, depth=1, num_heads=2, max_len=8, pooled_dim=8)
    cfg = ModelConfig(f"oracle-{kind or 'kontext'}", p, ae_p, text, resolution=16, channel_cond=kind)
    pipe = Pipeline(cfg, flux, ae, build_text_encoder(text)).eval()
    tr = FluxTransformer2DModel(patch_size=1, in_channels=p.in_channels, out_channels=16, num_layers=1,
                                num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                joint_attention_dim=12, pooled_projection_dim=8, guidance_embeds=True,
                                axes_dims_rope=(8, 4, 4)).eval()  # fmt: skip
    tr.load_state_dict(flux_to_diffusers(flux.state_dict()), strict=True)
    return pipe, vae, tr


def inputs(h=4, w=4):
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(1, h * w, 16, generator=g), txt=torch.randn(1, 5, 12, generator=g),
                pooled=torch.randn(1, 8, generator=g), t=0.7, guidance=3.5)  # fmt: skip


def ours(pipe, inp, cond, h=4, w=4):
    with torch.no_grad():
        return pipe.velocity(inp["txt"], inp["pooled"], h, w, inp["guidance"], cond)(inp["x"], inp["t"])


def theirs(tr, hidden, img_ids, inp):
    with torch.no_grad():
        return tr(hidden_states=hidden, encoder_hidden_states=inp["txt"], pooled_projections=inp["pooled"],
                  timestep=torch.tensor([inp["t"]]), img_ids=img_ids, txt_ids=torch.zeros(5, 3),
                  guidance=torch.tensor([inp["guidance"]])).sample  # fmt: skip


def pipeline(cls, vae, tr):
    return cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
               text_encoder_2=None, tokenizer_2=None, transformer=tr)  # fmt: skip


def test_kontext_matches_flux_kontext_pipeline_with_a_context_of_another_size():
    pipe, vae, tr = build("")
    inp = inputs()
    context = torch.rand(1, 3, 24, 32) * 2 - 1  # target 16x16, context 24x32
    kp = pipeline(FluxKontextPipeline, vae, tr)
    latents, image_latents, latent_ids, image_ids = kp.prepare_latents(
        context, 1, 4, 16, 16, torch.float32, torch.device("cpu"), latents=inp["x"])
    ref = theirs(tr, torch.cat([latents, image_latents], dim=1), torch.cat([latent_ids, image_ids], dim=0), inp)
    ref = ref[:, : latents.shape[1]]
    got = ours(pipe, inp, pipe.context([context]))
    assert got.shape == ref.shape == (1, 16, 16)
    assert (got - ref).abs().max().item() <= TOL


def test_fill_matches_flux_fill_pipeline_packing():
    pipe, vae, tr = build("fill")
    assert pipe.transformer.img_in.in_features == 16 + 16 + 2 * 2 * 4  # noisy + masked image + packed mask
    inp = inputs()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 3:11, 5:14] = 1
    fp = pipeline(FluxFillPipeline, vae, tr)
    masked = image * (1 - mask)
    with torch.no_grad():
        raw = vae.encode(masked).latent_dist.mean  # the pipeline samples; the mean keeps the check deterministic
        m, masked_latents = fp.prepare_mask_latents(mask, raw, 1, 4, 1, 16, 16, torch.float32, torch.device("cpu"), None)
    ids = fp._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    ref = theirs(tr, torch.cat([inp["x"], torch.cat([masked_latents, m], dim=-1)], dim=2), ids, inp)
    got = ours(pipe, inp, pipe.fill_condition(image, mask))
    assert (got - ref).abs().max().item() <= TOL


def test_control_matches_flux_control_pipeline_packing():
    pipe, vae, tr = build("control")
    assert pipe.transformer.img_in.in_features == 32
    inp = inputs()
    control = torch.rand(1, 3, 16, 16) * 2 - 1
    cp = pipeline(FluxControlPipeline, vae, tr)
    img = cp.prepare_image(image=control, width=16, height=16, batch_size=1, num_images_per_prompt=1,
                           device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    with torch.no_grad():
        z = (vae.encode(img).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    packed = cp._pack_latents(z, 1, tr.config.in_channels // 8, 8, 8)
    ids = cp._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32)
    ref = theirs(tr, torch.cat([inp["x"], packed], dim=2), ids, inp)
    got = ours(pipe, inp, pipe.control_condition(control))
    assert (got - ref).abs().max().item() <= TOL


def test_multi_reference_ids_follow_the_model_offset():
    z = [torch.randn(2, 4, 4, 6), torch.randn(2, 4, 8, 4), torch.randn(2, 4, 2, 2)]
    for offset in (1, 10):  # FLUX.1 Kontext, FLUX.2
        c = kontext(z, patch=2, offset=offset)
        assert c.tokens.shape == (2, 6 + 8 + 1, 16)
        assert c.token_ids[0, :, 0].tolist() == [offset] * 6 + [2 * offset] * 8 + [3 * offset]
        assert c.token_ids[0, 6:14, 1].max() == 3 and c.token_ids[0, 6:14, 2].max() == 1  # rows, cols of image 2
        assert torch.equal(c.tokens[:, :6], pack(z[0]))


def test_conditioning_only_adds_inputs_and_slices_the_target():
    c = Conditioning(tokens=torch.ones(1, 3, 16), token_ids=torch.ones(1, 3, 3), channels=torch.zeros(1, 4, 2),
                     txt=torch.ones(1, 2, 12))  # fmt: skip
    x, ids, txt, tids = c.apply(torch.randn(1, 4, 14), torch.zeros(1, 4, 3), torch.randn(1, 5, 12), torch.zeros(1, 5, 3))
    assert x.shape == (1, 7, 16) and ids.shape == (1, 7, 3) and txt.shape == (1, 7, 12) and tids.shape == (1, 7, 3)


def test_bad_conditioning_inputs_are_clear_errors():
    pipe, _, _ = build("fill")
    image = torch.zeros(1, 3, 16, 16)
    with pytest.raises(UserError, match="same size"):
        pipe.fill_condition(image, torch.zeros(1, 1, 8, 16))
    with pytest.raises(UserError, match="needs a mask"):
        pipe.generate(["a red circle"], 16, 16, steps=1)
    with pytest.raises(UserError, match="not a control model"):
        pipe.control_condition(image)
    with pytest.raises(UserError, match="at most 4"):
        pipe.context([image] * 5)
    with pytest.raises(UserError, match="multiple of the model's stride"):
        pipe.context([torch.zeros(1, 3, 10, 16)])
    images, _ = pipe.generate(["a red circle"], 16, 16, steps=2, cond=pipe.fill_condition(image, torch.ones(1, 1, 16, 16)))
    assert images.shape == (1, 3, 16, 16)


def test_kontext_training_keeps_context_clean_and_learns_on_target_tokens(tmp_path):
    import dataclasses

    from flowfactory.config import recipe
    from flowfactory.train.trainer import Trainer

    cfg = dataclasses.replace(recipe("tiny-edits"), t2i_ratio=0.3)
    tr = Trainer(cfg, tmp_path, progress=False)
    kinds = []
    for step in range(12):
        samples = tr.data.get(step, 0, cfg.batch_size)
        counts = {len(s.context or []) for s in samples}
        assert len(counts) == 1  # a batch never mixes context counts
        kinds.append(counts.pop())
    assert {0, 1} <= set(kinds)  # plain text-to-image batches are mixed in
    step = kinds.index(1)
    b, text, noise, t = tr.batch(step, 0)
    src = torch.stack([s.context[0] for s in tr.data.get(step, 0, cfg.batch_size)])
    with torch.no_grad():
        clean = pack(tr.pipe.encode_images(src))
    assert torch.equal(b.cond.tokens, clean)  # context tokens are the clean latents, never noised
    assert b.cond.token_ids[0, :, 0].unique().tolist() == [1.0]
    first = tr.loss(b, text, noise, t).item()
    tr.fit(40)
    assert tr.loss(b, text, noise, t).item() < first
    with torch.no_grad():
        pred = tr.model(b.x0, image_ids_for(b), text, t, None, b.micro, b.cond)
        other = dataclasses.replace(b.cond, tokens=torch.randn_like(b.cond.tokens))
        pred2 = tr.model(b.x0, image_ids_for(b), text, t, None, b.micro, other)
    assert pred.shape == b.x0.shape  # the output (and the loss) covers the target tokens only
    assert not torch.allclose(pred, pred2)  # and depends on the context


def image_ids_for(b):
    from flowfactory.pipeline import image_ids

    return image_ids(b.x0.shape[0], b.h, b.w)
