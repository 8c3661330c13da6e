"""LoRA: a fresh adapter changes nothing, merge / unmerge is exact, files round-trip and refuse other bases."""

import pytest
import torch

from conftest import flux_inputs, randomize_
from flowfactory.config import model_config
from flowfactory.errors import UserError
from flowfactory.models.flux import Flux
from flowfactory.models.lora import (LoRALinear, apply_lora, fingerprint, load_lora, merge_lora, remove_lora,
                                     save_lora, unmerge_lora, widen_img_in)  # fmt: skip


def model(name="tiny"):
    return randomize_(Flux(model_config(name).flux)).eval()


def run(m, inp):
    with torch.no_grad():
        return m(**inp)


def trained_lora(m, rank=4):
    params = apply_lora(m, rank=rank, alpha=8, targets="all-linear")
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return params


def test_fresh_adapter_is_identity_and_only_adapters_train():
    m = model()
    inp = flux_inputs(m.params, 2, 4, 4, 5)
    before = run(m, inp)
    params = apply_lora(m, rank=4, targets="attention")
    assert torch.allclose(run(m, inp), before, atol=1e-6)  # (bitwise only up to kernel choice across thread counts)
    assert params and all("lora_" in n for n, p in m.named_parameters() if p.requires_grad)
    assert "double_blocks.0.img_attn.qkv.weight" in m.state_dict()  # base names unchanged
    m(**inp).square().mean().backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in m.named_parameters() if "lora_" not in n)


def test_merge_then_unmerge_restores_the_base_exactly():
    m = model()
    inp = flux_inputs(m.params, 1, 3, 5, 4)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    trained_lora(m)
    adapted = run(m, inp)
    merge_lora(m)
    assert (run(m, inp) - adapted).abs().max() < 1e-5  # merged weights compute the same function
    unmerge_lora(m)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in base.items())
    assert torch.allclose(run(m, inp), adapted, atol=1e-6)
    remove_lora(m)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert all(torch.equal(m.state_dict()[k], v) for k, v in base.items())


def test_save_load_roundtrip_and_other_base_refused(tmp_path):
    m = model()
    inp = flux_inputs(m.params, 1, 4, 4, 5)
    fresh = Flux(m.params).eval()
    fresh.load_state_dict(m.state_dict())
    trained_lora(m)
    size = save_lora(m, tmp_path / "a.safetensors", base_name="tiny")
    n_lora = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    n_base = sum(p.numel() for n, p in m.named_parameters() if "lora_" not in n)
    assert size < 4 * n_lora + 4096 and n_lora < n_base
    load_lora(fresh, tmp_path / "a.safetensors", base_name="tiny")
    assert torch.allclose(run(fresh, inp), run(m, inp), atol=1e-6)
    with pytest.raises(UserError, match="trained for base 'tiny'"):
        load_lora(model("demo"), tmp_path / "a.safetensors", base_name="demo")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="cannot read LoRA"):
        load_lora(model(), tmp_path / "bad.safetensors", base_name="tiny")
    with pytest.raises(UserError, match="match no linear"):
        apply_lora(model(), targets="nothing_like_this")


def test_control_lora_widens_img_in_without_changing_the_base_output(tmp_path):
    m = model()
    base_sd = {k: v.clone() for k, v in m.state_dict().items()}
    inp = flux_inputs(m.params, 1, 4, 4, 5)
    before = run(m, inp)
    base_fp = fingerprint(m)
    widen_img_in(m, 2 * m.params.in_channels)
    inp2 = dict(inp, img=torch.cat([inp["img"], torch.randn_like(inp["img"])], dim=-1))
    assert torch.allclose(run(m, inp2), before, atol=1e-6)  # zero columns: the control input starts silent
    params = apply_lora(m, rank=2, targets="attention", train_full=("img_in.weight",))
    assert any(p.shape == m.img_in.weight.shape for p in params)
    with torch.no_grad():
        m.img_in.weight.normal_()
    save_lora(m, tmp_path / "control.safetensors", "tiny", base_fp)  # identified by the unwidened base
    other = Flux(m.params).eval()
    other.load_state_dict(base_sd)
    assert fingerprint(other) == base_fp
    widen_img_in(other, 2 * m.params.in_channels)
    load_lora(other, tmp_path / "control.safetensors", "tiny", base_fp)
    assert torch.allclose(run(other, inp2), run(m, inp2), atol=1e-6)


def test_lora_training_keeps_the_base_frozen_and_exports_both_files(tmp_path):
    import dataclasses

    from flowfactory.checkpoint import load_checkpoint
    from flowfactory.config import recipe
    from flowfactory.pipeline import Pipeline
    from flowfactory.train.trainer import Trainer

    cfg = dataclasses.replace(recipe("tiny-shapes"), steps=20, lora_rank=4, val_every=0, train_text_encoder=False)
    init = Pipeline.from_config(cfg.model)
    randomize_(init.transformer, std=0.1)
    base = {k: v.clone() for k, v in init.transformer.state_dict().items()}
    tr = Trainer(cfg, tmp_path, progress=False, init=init)
    n_train = sum(p.numel() for p in tr.params)
    n_total = sum(p.numel() for p in init.transformer.parameters())
    assert 0 < n_train < 0.5 * n_total
    tr.fit()
    now = {k: v for k, v in init.transformer.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(now[k], v) for k, v in base.items())  # base untouched
    _, comps = load_checkpoint(tmp_path / "checkpoints" / "step_0000020.safetensors")
    assert not any("lora_" in k for k in comps["transformer"])  # the merged export loads as a plain model
    assert any(not torch.equal(comps["transformer"][k], base[k]) for k in base)
    merged = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000020.safetensors")
    other = Flux(init.transformer.params)
    other.load_state_dict(base)
    load_lora(other, tmp_path / "checkpoints" / "lora_step_0000020.safetensors", "tiny")
    inp = flux_inputs(other.params, 1, 4, 4, 5)
    assert torch.allclose(run(other, inp), run(merged.transformer, inp), atol=1e-5)


def test_control_lora_file_on_the_plain_base_equals_the_merged_export(tmp_path):
    """A Control-LoRA trained on a widened base: the small file applied to the plain base
    (`Pipeline.with_lora` widens it first) gives the merged export's output."""
    import dataclasses

    from flowfactory.config import recipe
    from flowfactory.pipeline import Pipeline
    from flowfactory.train.trainer import Trainer

    base = Pipeline.from_config(model_config("tiny-latent"))
    randomize_(base.transformer, std=0.1)
    base.save(tmp_path / "base.safetensors")
    cfg = dataclasses.replace(recipe("tiny-shapes"), model=model_config("tiny-control"), dataset="controls:edges",
                              dataset_size=0, steps=4, batch_size=4, lora_rank=4, val_every=0,
                              train_text_encoder=False)  # fmt: skip
    init = Pipeline.from_checkpoint(tmp_path / "base.safetensors").widened("control")
    init.cfg = dataclasses.replace(init.cfg, name="tiny-control")
    Trainer(cfg, tmp_path / "run", progress=False, init=init).fit()
    ckpts = tmp_path / "run" / "checkpoints"
    merged = Pipeline.from_checkpoint(ckpts / "step_0000004.safetensors")
    applied = Pipeline.from_checkpoint(tmp_path / "base.safetensors").with_lora(ckpts / "lora_step_0000004.safetensors")
    assert applied.cfg.channel_cond == "control" and applied.transformer.img_in.in_features == 2 * 16
    inp = flux_inputs(merged.transformer.params, 1, 4, 4, 5)
    assert torch.allclose(run(applied.transformer, inp), run(merged.transformer, inp), atol=1e-5)
    with pytest.raises(UserError, match="was trained for base"):
        Pipeline.from_config(model_config("tiny")).with_lora(ckpts / "lora_step_0000004.safetensors")
