"""Rectified-flow objective, schedule and solvers."""

import math

import pytest
import torch

from flowfactory.flow.objectives import (
    drop_text,
    flux_mu,
    interpolate,
    rectified_flow_loss,
    sample_timesteps,
    time_shift,
)
from flowfactory.flow.sampling import euler, get_schedule, heun, noise_like, true_cfg


@pytest.mark.parametrize("seq_len", [64, 256, 1024, 4096])
@pytest.mark.parametrize("steps", [4, 28, 50])
def test_schedule_is_the_flux_formula(seq_len, steps):
    mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256)
    expected = [1.0] + [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) for t in [1 - i / steps for i in range(1, steps)]]
    got = get_schedule(steps, seq_len)
    assert len(got) == steps + 1 and got[0] == 1.0 and got[-1] == 0.0
    assert all(abs(a - b) < 1e-9 for a, b in zip(got[:-1], expected))
    assert all(a > b for a, b in zip(got, got[1:]))


def test_schedule_without_shift_is_linear():
    assert get_schedule(4, 4096, shift=False) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_mu_endpoints():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)


def test_interpolation_and_target_conventions():
    x0, eps = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = interpolate(x0, eps, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], eps[2])
    # the exact velocity has zero loss
    assert rectified_flow_loss(eps - x0, x0, eps).abs().max() == 0


def test_timestep_samplers():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, g, "logit-normal")
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02
    u = sample_timesteps(20000, g, "uniform")
    assert abs(u.mean().item() - 0.5) < 0.01
    shifted = sample_timesteps(20000, torch.Generator().manual_seed(0), "logit-normal", shift_mu=1.15)
    assert shifted.median() > 0.7  # shifted towards noise
    with pytest.raises(ValueError):
        sample_timesteps(3, g, "cosine")
    assert torch.allclose(time_shift(0.0, 1.0, torch.tensor([0.3])), torch.tensor([0.3]))


def test_euler_and_heun_integrate_a_straight_flow_exactly():
    """For x_t = (1-t) x0 + t eps the true velocity is constant: any grid recovers x0."""
    x0, eps = torch.randn(2, 8, 3), torch.randn(2, 8, 3)
    v = lambda x, t: eps - x0  # noqa: E731
    for solver in (euler, heun):
        assert torch.allclose(solver(v, eps.clone(), get_schedule(5, 256)), x0, atol=1e-5)


def test_heun_is_second_order_on_a_curved_field():
    # dx/dt = x: exact x(0) = x(1) * e^-1
    x1 = torch.ones(1)
    ts = [1 - i / 10 for i in range(11)]
    exact = math.exp(-1)
    err_e = abs(euler(lambda x, t: x, x1, ts).item() - exact)
    err_h = abs(heun(lambda x, t: x, x1, ts).item() - exact)
    assert err_h < err_e / 5


def test_true_cfg():
    cond = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731
    uncond = lambda x, t: torch.full_like(x, 1.0)  # noqa: E731
    x = torch.zeros(3)
    assert torch.equal(true_cfg(cond, uncond, 4.0)(x, 0.5), torch.full((3,), 5.0))
    assert true_cfg(cond, uncond, 1.0) is cond


def test_seeded_noise_and_text_dropout():
    assert torch.equal(noise_like((2, 3), 7), noise_like((2, 3), 7))
    assert not torch.equal(noise_like((2, 3), 7), noise_like((2, 3), 8))
    prompts = [f"p{i}" for i in range(2000)]
    dropped = drop_text(prompts, 0.1, torch.Generator().manual_seed(0))
    frac = sum(p == "" for p in dropped) / len(prompts)
    assert 0.08 < frac < 0.12
    assert drop_text(prompts, 0.0) == prompts
