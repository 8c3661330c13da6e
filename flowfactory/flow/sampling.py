"""Schedules, solvers and guidance for rectified flow.

Every solver has one signature, `solver(velocity, x, timesteps) -> x`, where `velocity(x, t)`
is any callable returning the model's velocity at scalar time `t`. Guidance is composed
around the callable (`true_cfg`, `embedded_guidance`), so solvers and guidance swap freely.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from flowfactory.flow.objectives import flux_mu, time_shift

Velocity = Callable[[Tensor, float], Tensor]


class Solver(Protocol):
    def __call__(self, velocity: Velocity, x: Tensor, timesteps: list[float]) -> Tensor: ...


def get_schedule(num_steps: int, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
                 shift: bool = True, mu: float | None = None) -> list[float]:  # fmt: skip
    """`linspace(1, 0, N + 1)`, resolution-shifted as in FLUX.1 ([schnell] samples without the shift);
    `mu` fixes the shift instead of deriving it from the token count (SD3's `shift` s is `mu = ln s`)."""
    t = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    if shift:
        mu = flux_mu(image_seq_len, base_shift, max_shift) if mu is None else mu
        t = torch.where((t > 0) & (t < 1), time_shift(mu, 1.0, t.clamp(1e-12, 1 - 1e-12)), t)
    return t.tolist()


@torch.no_grad()
def euler(velocity: Velocity, x: Tensor, timesteps: list[float]) -> Tensor:
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:]):
        x = x + (t_next - t_cur) * velocity(x, t_cur)
    return x


@torch.no_grad()
def heun(velocity: Velocity, x: Tensor, timesteps: list[float]) -> Tensor:
    """Second order (trapezoidal); the last step into t = 0 is a plain Euler step."""
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:]):
        v = velocity(x, t_cur)
        x_pred = x + (t_next - t_cur) * v
        if t_next > 0:
            x_pred = x + (t_next - t_cur) * 0.5 * (v + velocity(x_pred, t_next))
        x = x_pred
    return x


SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun}


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance: `v_u + s (v_c - v_u)` (also the guidance-distillation target)."""
    return v_uncond + scale * (v_cond - v_uncond)


def true_cfg(cond: Velocity, uncond: Velocity, scale: float) -> Velocity:
    """Classifier-free guidance, two passes per step (scale 1: no guidance, one pass)."""
    if scale == 1.0:
        return cond

    def guided(x: Tensor, t: float) -> Tensor:
        return cfg_combine(cond(x, t), uncond(x, t), scale)

    return guided


def noise_like(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
    """Seeded starting noise, drawn on the CPU so a seed gives the same image on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
