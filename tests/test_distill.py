"""Guidance distillation: the target is the teacher's CFG combination; the student learns it in one pass."""

import dataclasses

import torch

from conftest import randomize_
from flowfactory.config import recipe
from flowfactory.flow.sampling import true_cfg
from flowfactory.pipeline import Pipeline, image_ids
from flowfactory.train.distill import GuidanceDistiller, guidance_student, teacher_cfg_target


def teacher():
    pipe = Pipeline.from_config(recipe("tiny-dev").model)
    randomize_(pipe.transformer, std=0.1)
    return pipe.eval()


def test_target_equals_the_teachers_cfg_velocity():
    tea = teacher()
    x = torch.randn(2, 64, 12)
    t = torch.tensor([0.3, 0.8])
    prompts = ["a red circle", "two blue squares"]
    for g in (1.0, 3.5):
        target = teacher_cfg_target(tea, x, image_ids(2, 8, 8), prompts, t, torch.full((2,), g))
        for i in range(2):  # the sampler's CFG path, one sample at a time
            txt, pooled = tea.encode_text([prompts[i]])
            txt_u, pooled_u = tea.encode_text([""])
            v = true_cfg(tea.velocity(txt, pooled, 8, 8), tea.velocity(txt_u, pooled_u, 8, 8), g)
            with torch.no_grad():
                assert torch.allclose(v(x[i : i + 1], float(t[i])), target[i : i + 1], atol=1e-5)


def test_student_starts_as_the_teacher_conditional_and_learns_the_guided_target(tmp_path):
    tea = teacher()
    stu = guidance_student(tea)
    x, ids, t = torch.randn(1, 64, 12), image_ids(1, 8, 8), torch.tensor([0.5])
    txt, pooled = tea.encode_text(["a red circle"])
    with torch.no_grad():
        v_t = tea.transformer(x, ids, txt, torch.zeros(1, txt.shape[1], 3), t, pooled)
        v_s = stu.transformer(x, ids, txt, torch.zeros(1, txt.shape[1], 3), t, pooled, torch.tensor([4.0]))
    assert torch.allclose(v_t, v_s, atol=1e-6)
    before = {k: v.clone() for k, v in tea.state_dict().items()}
    d = GuidanceDistiller(dataclasses.replace(recipe("tiny-dev"), steps=60), tmp_path, tea, progress=False)
    first = d.validation_loss()
    d.fit()
    assert d.validation_loss() < 0.8 * first
    assert all(torch.equal(v, tea.state_dict()[k]) for k, v in before.items())  # the teacher stays frozen
    out = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000060.safetensors")
    assert out.cfg.flux.guidance_embed
    images, _ = out.generate(["a red circle"], 16, 16, steps=2, guidance=3.0)  # one pass per step
    assert images.shape == (1, 3, 16, 16)


def test_ladd_discriminator_learns_teacher_frozen_student_moves(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    tea = teacher()
    before = {k: v.clone() for k, v in tea.state_dict().items()}
    tr = LADDTrainer(recipe("tiny-schnell"), tmp_path, tea, progress=False)
    student0 = {k: v.clone() for k, v in tr.pipe.transformer.state_dict().items()}
    m = tr.train_step()
    assert {"d_loss", "g_loss", "d_real", "d_fake", "d_accuracy"} <= set(m)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.disc.parameters() if p.ndim > 1)
    assert any(not torch.equal(v, tr.pipe.transformer.state_dict()[k]) for k, v in student0.items())
    tr.fit()
    assert all(torch.equal(v, tea.state_dict()[k]) for k, v in before.items())  # the teacher stays frozen
    out = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000006.safetensors")
    assert out.cfg.schedule_shift is False  # few-step students sample on the plain schedule
    for steps in (1, 2, 4):
        images, _ = out.generate(["a red circle"], 16, 16, steps=steps, guidance=1.0)
        assert images.shape == (1, 3, 16, 16)
