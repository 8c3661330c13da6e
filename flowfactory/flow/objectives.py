"""Rectified flow: interpolation, timestep samplers, the resolution shift and the loss.

Time convention (SPECS.md): t = 1 is pure noise, t = 0 is data,
`x_t = (1 - t) x0 + t eps`, and the model predicts the velocity `v = eps - x0`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def time_shift(mu: float, sigma: float, t: Tensor) -> Tensor:
    """`t' = e^mu / (e^mu + (1/t - 1)^sigma)`: moves mass towards noise for large images."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def flux_mu(seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15, x1: int = 256, x2: int = 4096) -> float:
    """FLUX.1's shift: mu linear in the image-token count, 0.5 at 256 tokens and 1.15 at 4096."""
    m = (max_shift - base_shift) / (x2 - x1)
    return seq_len * m + (base_shift - m * x1)


def sample_timesteps(
    n: int,
    generator: torch.Generator | None = None,
    kind: str = "logit-normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift_mu: float | None = None,
) -> Tensor:
    """Training timesteps in (0, 1): logit-normal `sigmoid(N(mean, std^2))` or uniform, optionally shifted."""
    if kind == "logit-normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    elif kind == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"unknown timestep sampler '{kind}' (logit-normal or uniform)")
    t = t.clamp(1e-5, 1 - 1e-5)
    return time_shift(shift_mu, 1.0, t) if shift_mu is not None else t


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """`x_t = (1 - t) x0 + t eps`, with t `[B]` or per token `[B, L]` broadcast over the rest."""
    t = t.reshape(*t.shape, *([1] * (x0.ndim - t.ndim)))
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    return noise - x0


def rectified_flow_loss(pred: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """Per-sample mean squared error to the velocity `eps - x0`: `[B]`."""
    return ((pred.float() - velocity_target(x0, noise).float()) ** 2).flatten(1).mean(1)


def drop_text(prompts: list[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each prompt by "" with probability p (conditioning dropout for CFG)."""
    if p <= 0:
        return list(prompts)
    keep = torch.rand(len(prompts), generator=generator) >= p
    return [q if k else "" for q, k in zip(prompts, keep.tolist())]
