"""Guidance distillation: the target is the teacher's CFG combination; the student learns it in one pass."""

import dataclasses

import pytest
import torch

from conftest import randomize_
from flowfactory.config import recipe
from flowfactory.flow.sampling import true_cfg
from flowfactory.pipeline import Pipeline, image_ids
from flowfactory.train.distill import GuidanceDistiller, guidance_student, teacher_cfg_target, teacher_features


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


def test_guidance_distillation_continues_a_dev_student(tmp_path):
    tea = teacher()
    dev = guidance_student(tea)
    randomize_(dev.transformer.guidance_in, std=0.1)  # a trained guidance embedding
    cfg = dataclasses.replace(recipe("tiny-dev"), steps=2, val_every=0)
    d = GuidanceDistiller(cfg, tmp_path, tea, progress=False, student=dev)
    assert d.pipe.transformer is not dev.transformer  # a copy: the dev model is left as it was
    assert all(torch.equal(v, d.pipe.transformer.state_dict()[k]) for k, v in dev.transformer.state_dict().items())
    trained = dev.transformer.guidance_in.out_layer.weight
    fresh = GuidanceDistiller(cfg, tmp_path / "fresh", tea, progress=False)  # default: the teacher, zero embedding
    assert not fresh.pipe.transformer.guidance_in.out_layer.weight.any()
    d.fit()
    assert not torch.equal(d.pipe.transformer.guidance_in.out_layer.weight, trained)  # it trains on from there
    with pytest.raises(ValueError, match="guidance-distilled"):
        GuidanceDistiller(cfg, tmp_path / "plain", tea, progress=False, student=teacher())


def test_ladd_discriminator_learns_teacher_frozen_student_moves(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    tea = teacher()
    before = {k: v.clone() for k, v in tea.state_dict().items()}
    tr = LADDTrainer(dataclasses.replace(recipe("tiny-schnell"), ladd_d_lr_mult=10.0), tmp_path, tea, progress=False)
    student0 = {k: v.clone() for k, v in tr.pipe.transformer.state_dict().items()}
    m = tr.train_step()
    lr_g, lr_d = tr.opt.param_groups[0]["lr"], tr.opt_d.param_groups[0]["lr"]
    assert lr_g > 0 and lr_d == pytest.approx(10 * lr_g)  # the discriminator's own learning rate
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


def test_ladd_distillation_term_uses_the_noise_each_teacher_sample_was_solved_from(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=2.0, teacher_steps=1, teacher_guidance=1.0)
    tea = teacher()
    tr = LADDTrainer(cfg, tmp_path, tea, progress=False)
    prompts, side = ["a red circle", "two blue squares"], cfg.image_size // cfg.model.stride
    x0, z = tr.teacher_latents(prompts, 3, 0), tr.teacher_noise(2, 3, 0)
    txt, pooled = tea.encode_text(prompts)
    with torch.no_grad():  # one Euler step of the teacher from t = 1: x0 = z - v_T(z, 1)
        assert torch.allclose(x0, z - tea.velocity(txt, pooled, side, side)(z, 1.0), atol=1e-5)
    seen, model = [], tr.model
    tr.model = lambda x_t, ids, p, t, *a: (seen.append((x_t.detach(), list(p), t)), model(x_t, ids, p, t, *a))[1]
    m = tr.train_step()
    x_t, p, t = seen[0]
    x0, z = tr.teacher_latents(p, 0, 0), tr.teacher_noise(len(p), 0, 0)
    assert torch.allclose(x_t, (1 - t[:, None, None]) * x0 + t[:, None, None] * z, atol=1e-5)  # reflow pairs
    assert m["distill_loss"] > 0 and m["loss"] == pytest.approx(m["g_loss"] + 2.0 * m["distill_loss"], rel=1e-5)


def test_ladd_without_the_adversarial_term_trains_the_distillation_term_alone(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=3.0, ladd_adv_weight=0.0, teacher_steps=1)
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    disc0 = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    student0 = {k: v.clone() for k, v in tr.pipe.transformer.state_dict().items()}
    calls, features = [], teacher_features
    import flowfactory.train.distill as distill

    distill.teacher_features = lambda *a, **k: (calls.append(1), features(*a, **k))[1]
    try:
        m = tr.train_step()
    finally:
        distill.teacher_features = features
    assert not calls and "d_loss" not in m and m["g_loss"] == 0.0  # no discriminator pass at all
    assert m["loss"] == pytest.approx(3.0 * m["distill_loss"], rel=1e-6) and m["distill_loss"] > 0
    assert all(torch.equal(v, tr.disc.state_dict()[k]) for k, v in disc0.items())
    assert any(not torch.equal(v, tr.pipe.transformer.state_dict()[k]) for k, v in student0.items())
    with pytest.raises(ValueError, match="adversarial or a distillation weight"):
        LADDTrainer(dataclasses.replace(cfg, ladd_distill_weight=0.0), tmp_path / "b", teacher(), progress=False)


def test_ladd_shifted_schedule_trains_at_the_timesteps_the_student_samples(tmp_path):
    from flowfactory.flow.sampling import get_schedule
    from flowfactory.train.distill import STUDENT_TIMESTEPS, LADDTrainer, student_timesteps

    assert student_timesteps(16, shift=False) == STUDENT_TIMESTEPS
    shifted = student_timesteps(16, shift=True)
    assert shifted[0] == 1.0 and all(a > b for a, b in zip(shifted, STUDENT_TIMESTEPS[1:] + (0.0,)))
    assert shifted[1] == pytest.approx(0.8261, abs=1e-4) and shifted[3] == pytest.approx(0.3454, abs=1e-4)
    cfg = dataclasses.replace(recipe("tiny-schnell"), steps=3, ladd_schedule_shift=True)
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    side = cfg.image_size // cfg.model.stride
    assert tr.timesteps == tuple(get_schedule(4, side * side)[:-1])  # the sampler's own 4-step schedule
    seen, forward = [], tr.model.forward
    tr.model.forward = lambda *a, **k: (seen.append(a[3]), forward(*a, **k))[1]
    for _ in range(3):
        tr.train_step()
    ts = {round(float(t), 6) for batch in seen for t in batch}
    assert ts and ts <= {round(t, 6) for t in tr.timesteps} and len(ts) > 1
    out = Pipeline.from_checkpoint(tr.export())
    assert out.cfg.schedule_shift is True and out.cfg.schedule_mu == 0.0  # it samples the schedule it was trained at


def test_ladd_fixed_schedule_shift_is_trained_at_and_sampled(tmp_path):
    from flowfactory.flow.sampling import get_schedule
    from flowfactory.train.distill import LADDTrainer, student_timesteps

    fixed = student_timesteps(16, shift=True, mu=1.15)  # mu fixed, whatever the token count
    assert fixed == pytest.approx((1.0, 0.9046, 0.7595, 0.5128), abs=1e-4) == student_timesteps(1024, True, mu=1.15)
    assert get_schedule(2, 16, mu=1.15) == pytest.approx([1.0, fixed[2], 0.0])  # 2 steps: a subset of 4
    cfg = dataclasses.replace(recipe("tiny-schnell"), steps=1, ladd_schedule_shift=True, ladd_schedule_mu=1.15)
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    assert tr.timesteps == pytest.approx(fixed)
    tr.train_step()
    out = Pipeline.from_checkpoint(tr.export())
    assert out.cfg.schedule_shift and out.cfg.schedule_mu == 1.15
    seen, solver = [], __import__("flowfactory.pipeline", fromlist=["SOLVERS"]).SOLVERS
    euler = solver["euler"]
    solver["euler"] = lambda v, x, ts: (seen.append(ts), euler(v, x, ts))[1]
    try:
        out.generate(["a red circle"], 16, 16, steps=4, guidance=1.0)
    finally:
        solver["euler"] = euler
    assert seen[0] == pytest.approx([*fixed, 0.0])  # it samples the timesteps it was trained at
    with pytest.raises(ValueError, match="needs ladd_schedule_shift"):
        LADDTrainer(dataclasses.replace(cfg, ladd_schedule_shift=False), tmp_path / "b", teacher(), progress=False)


def test_ladd_on_policy_inputs_are_the_students_own_sampler_states(tmp_path):
    """`ladd_on_policy`: the distillation term's input at the k-th timestep is where the student's own Euler
    sampler, started from the teacher's noise, stands after k steps (at t = 1: the noise itself)."""
    from flowfactory.flow.sampling import euler
    from flowfactory.train.distill import LADDTrainer

    tea = teacher()
    dev = guidance_student(tea)
    randomize_(dev.transformer.guidance_in, std=0.1)
    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=1.0, ladd_on_policy=True, teacher_steps=1,
                              ladd_schedule_shift=True, teacher_guidance=2.5)  # fmt: skip
    tr = LADDTrainer(cfg, tmp_path, tea, progress=False, student=dev)
    prompts = ["a red circle", "two blue squares", "a green triangle", "one yellow circle"]
    side = cfg.image_size // cfg.model.stride
    z, ts = tr.teacher_noise(4, 0, 0), tr.timesteps
    t = torch.tensor([ts[3], ts[0], ts[1], ts[2]])
    x = tr.student_path(z, t, image_ids(4, side, side), prompts)
    for i, k in enumerate([3, 0, 1, 2]):
        txt, pooled = tr.pipe.encode_text([prompts[i]])
        with torch.no_grad():
            own = euler(tr.pipe.velocity(txt, pooled, side, side, guidance=2.5), z[i : i + 1], list(ts[: k + 1]))
        assert torch.allclose(x[i : i + 1], own, atol=1e-5), k
    assert torch.equal(x[1], z[1]) and not torch.allclose(x[0], z[0])
    seen, model = [], tr.model
    tr.model = lambda x_t, ids, p, t, *a: (seen.append((x_t.detach(), t)), model(x_t, ids, p, t, *a))[1]
    m = tr.train_step()
    x_t, t = seen[-1]  # the graded pass comes after the path's passes
    assert len(seen) > 1 or bool((t == 1).all())
    z = tr.teacher_noise(x_t.shape[0], 0, 0)
    assert torch.allclose(x_t[t == 1], z[t == 1], atol=1e-6) and m["distill_loss"] > 0


def test_ladd_path_grad_trains_the_steps_before_the_graded_one(tmp_path):
    """`ladd_path_grad`: the same states as the on-policy path, with the graph kept, so the distillation
    term at a later timestep reaches the student's weights through its earlier steps too."""
    from flowfactory.train.distill import LADDTrainer

    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=1.0, ladd_on_policy=True, teacher_steps=1,
                              ladd_path_grad=True)  # fmt: skip
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    side, prompts = cfg.image_size // cfg.model.stride, ["a red circle", "two blue squares"]
    z, ids = tr.teacher_noise(2, 0, 0), image_ids(2, side, side)
    t = torch.tensor([tr.timesteps[2], tr.timesteps[0]])
    x = tr.student_path(z, t, ids, prompts, grad=True)
    assert torch.allclose(x, tr.student_path(z, t, ids, prompts), atol=1e-6) and x.requires_grad
    assert not tr.student_path(z, t, ids, prompts).requires_grad
    x[0].square().sum().backward()  # the state after two steps depends on the weights that took them
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)
    m = tr.train_step()
    assert m["distill_loss"] > 0
    with pytest.raises(ValueError, match="needs ladd_on_policy"):
        LADDTrainer(dataclasses.replace(cfg, ladd_on_policy=False), tmp_path / "b", teacher(), progress=False)


def test_ladd_all_steps_grades_every_state_of_the_students_sampler(tmp_path):
    """`ladd_all_steps`: the predictions at the K states of the student's own sampler, the last being its
    finished K-step sample; the distillation term is their mean error against the teacher's sample, and
    with the path gradient the first step's weights feed the last prediction too."""
    from flowfactory.flow.sampling import euler
    from flowfactory.train.distill import LADDTrainer

    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=1.0, ladd_on_policy=True, teacher_steps=1,
                              ladd_path_grad=True, ladd_all_steps=True, ladd_adv_weight=0.0)  # fmt: skip
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    side, prompts = cfg.image_size // cfg.model.stride, ["a red circle", "two blue squares"]
    z, ids, ts = tr.teacher_noise(2, 0, 0), image_ids(2, side, side), tr.timesteps
    preds = tr.student_predictions(z, ids, prompts, grad=True)
    assert preds.shape == (len(ts), *z.shape) and preds.requires_grad
    txt, pooled = tr.pipe.encode_text(prompts)
    with torch.no_grad():
        sample = euler(tr.pipe.velocity(txt, pooled, side, side), z, [*ts, 0.0])
        at_k = [tr.student_path(z, torch.full((2,), t_k), ids, prompts) for t_k in ts]
    assert torch.allclose(preds[-1], sample, atol=1e-5)  # the last prediction is the K-step sample
    for k, t_k in enumerate(ts):  # each prediction is x - t v at the sampler's own state
        v = tr.model(at_k[k], ids, prompts, torch.full((2,), t_k), None)
        assert torch.allclose(preds[k], at_k[k] - t_k * v, atol=1e-5), k
    first = tr.student_predictions(z, ids, prompts, grad=False)
    assert torch.allclose(first, preds, atol=1e-6)
    tr.model.zero_grad()
    first[-1].square().sum().backward()  # without the path gradient the last state is detached ...
    no_path = {n: p.grad for n, p in tr.model.named_parameters()}
    tr.model.zero_grad()
    preds[-1].square().sum().backward()  # ... with it, the earlier steps add to the same weights' gradients
    assert any(g is not None and not torch.allclose(p.grad, g) for (n, p), g in
               zip(tr.model.named_parameters(), no_path.values()) if p.grad is not None)  # fmt: skip
    tr.model.zero_grad()
    seen, model = [], tr.model
    tr.model = lambda x_t, ids, p, t, *a: (seen.append(t), model(x_t, ids, p, t, *a))[1]
    m = tr.train_step()
    assert [s[0].item() for s in seen] == pytest.approx(list(ts)) and m["distill_loss"] > 0
    with pytest.raises(ValueError, match="needs ladd_on_policy"):
        LADDTrainer(dataclasses.replace(cfg, ladd_on_policy=False, ladd_path_grad=False), tmp_path / "b", teacher(),
                    progress=False)  # fmt: skip


def test_ladd_final_only_grades_the_finished_sample_through_every_pass(tmp_path):
    """`ladd_final_only`: every sample is graded at the last state of the student's path, so the distillation
    term is the error of its finished K-step Euler sample against the teacher's, one pass per timestep."""
    from flowfactory.flow.sampling import euler
    from flowfactory.train.distill import LADDTrainer

    cfg = dataclasses.replace(recipe("tiny-schnell"), ladd_distill_weight=1.0, ladd_on_policy=True, teacher_steps=1,
                              ladd_path_grad=True, ladd_final_only=True, ladd_adv_weight=0.0)  # fmt: skip
    tr = LADDTrainer(cfg, tmp_path, teacher(), progress=False)
    n, side, ts = cfg.batch_size, cfg.image_size // cfg.model.stride, tr.timesteps
    prompts = tr.encode(tr.samples(0, 0, n)).prompts
    z, x0 = tr.teacher_noise(n, 0, 0), tr.teacher_latents(prompts, 0, 0).float()
    txt, pooled = tr.pipe.encode_text(prompts)
    with torch.no_grad():
        sample = euler(tr.pipe.velocity(txt, pooled, side, side), z, [*ts, 0.0])
    seen, model = [], tr.model
    tr.model = lambda x_t, ids, p, t, *a: (seen.append(t), model(x_t, ids, p, t, *a))[1]
    m = tr.train_step()
    assert [s.tolist() for s in seen] == [[t_k] * n for t_k in ts]  # K passes, every sample at every timestep
    assert m["distill_loss"] == pytest.approx((sample - x0).square().mean().item(), rel=1e-4)
    for bad in (dict(ladd_path_grad=False), dict(ladd_all_steps=True)):
        with pytest.raises(ValueError, match="ladd_final_only .* needs ladd_path_grad"):
            LADDTrainer(dataclasses.replace(cfg, **bad), tmp_path / "b", teacher(), progress=False)


def test_ladd_student_can_start_from_the_dev_tier_at_the_teachers_scale(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    tea = teacher()
    dev = guidance_student(tea)
    randomize_(dev.transformer.guidance_in, std=0.1)  # a trained guidance embedding
    before = {k: v.clone() for k, v in tea.state_dict().items()}
    cfg = dataclasses.replace(recipe("tiny-schnell"), steps=2, teacher_guidance=3.5)
    tr = LADDTrainer(cfg, tmp_path, tea, progress=False, student=dev)
    assert tr.pipe.transformer is not dev.transformer  # a copy: the dev model is left as it was
    assert torch.equal(tr.pipe.transformer.guidance_in.out_layer.weight, dev.transformer.guidance_in.out_layer.weight)
    assert tr.student_guidance(2).tolist() == [3.5, 3.5]
    seen = []
    forward = tr.model.forward
    tr.model.forward = lambda *a, **k: (seen.append(a[4]), forward(*a, **k))[1]
    tr.fit()
    assert seen and all(g is not None and g.tolist() == [3.5] * len(g) for g in seen)
    assert all(torch.equal(v, tea.state_dict()[k]) for k, v in before.items())
    out = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000002.safetensors")
    assert out.cfg.flux.guidance_embed and out.cfg.schedule_shift is False
    with pytest.raises(ValueError, match="architecture"):
        deeper = dataclasses.replace(tea.cfg, flux=dataclasses.replace(tea.cfg.flux, depth=2))
        LADDTrainer(cfg, tmp_path / "other", tea, progress=False, student=Pipeline.from_config(deeper))


def edit_teacher():
    pipe = Pipeline.from_config(recipe("tiny-edits").model)
    randomize_(pipe.transformer, std=0.1)
    return pipe.eval()


def test_edit_target_is_the_teachers_cfg_with_the_context_in_both_branches():
    tea = edit_teacher()
    ctx = tea.context([torch.rand(2, 3, 16, 16) * 2 - 1])  # 8x8 latent -> 16 context tokens each
    x, t, g = torch.randn(2, 16, 16), torch.tensor([0.3, 0.8]), 2.5
    prompts = ["make the circle blue", "remove the square"]
    target = teacher_cfg_target(tea, x, image_ids(2, 4, 4), prompts, t, torch.full((2,), g), ctx)
    without = teacher_cfg_target(tea, x, image_ids(2, 4, 4), prompts, t, torch.full((2,), g))
    assert not torch.allclose(target, without, atol=1e-3)  # the context matters
    txt, pooled = tea.encode_text(prompts)
    txt_u, pooled_u = tea.encode_text(["", ""])
    v = true_cfg(tea.velocity(txt, pooled, 4, 4, cond=ctx), tea.velocity(txt_u, pooled_u, 4, 4, cond=ctx), g)
    with torch.no_grad():
        for i in range(2):
            assert torch.allclose(v(x, float(t[i]))[i], target[i], atol=1e-5)


def test_edit_students_train_on_pairs_and_edit(tmp_path):
    from flowfactory.train.distill import LADDTrainer

    tea = edit_teacher()
    dev = GuidanceDistiller(dataclasses.replace(recipe("tiny-edits"), steps=4, val_every=0, t2i_ratio=0.0),
                            tmp_path / "dev", tea, progress=False)  # fmt: skip
    b = dev.encode(dev.data.get(0, 0, 2))
    assert b.cond is not None and b.cond.tokens.shape[1] == 16  # the distiller's batches carry the context
    dev.fit()
    base = dataclasses.replace(recipe("tiny-edits"), steps=3, batch_size=2, t2i_ratio=0.0, teacher_steps=2)
    ladd = LADDTrainer(base, tmp_path / "schnell", tea, progress=False)
    seen = []
    real = ladd.teacher_latents
    ladd.teacher_latents = lambda *a: (seen.append(a[-1]), real(*a))[1]
    m = ladd.train_step()
    assert seen[0] is not None and seen[0].tokens.shape[:2] == (2, 16)  # the teacher samples edits of the pair
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ladd.disc.parameters() if p.ndim > 1)
    assert m["d_loss"] > 0
    txt, pooled = tea.encode_text(["make it blue"] * 2)
    feats = teacher_features(tea, torch.randn(2, 16, 16), image_ids(2, 4, 4), txt, pooled, torch.rand(2), seen[0])
    assert all(f.shape[:2] == (2, 16) for f in feats)  # the discriminator reads the target tokens only
    ladd.fit()
    src = torch.rand(1, 3, 16, 16) * 2 - 1
    for run, steps, g in (("dev", 2, 3.0), ("schnell", 1, 1.0)):
        ckpt = sorted((tmp_path / run / "checkpoints").glob("*.safetensors"))[-1]
        out = Pipeline.from_checkpoint(ckpt)
        images, _ = out.generate(["make it blue"], 16, 16, steps=steps, guidance=g, cond=out.context([src]))
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
