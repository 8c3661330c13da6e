"""Conditioning composed outside the network: the transformer's inputs are prepared here.

SDXL micro-conditioning: the six sizes `(orig_h, orig_w, crop_top, crop_left, target_h,
target_w)` are each sinusoid-embedded (`micro_dim` channels) and concatenated to the pooled
text vector, so they reach the modulation through the model's own `vector_in` MLP (whose
`vec_in_dim` grows by `6 * micro_dim`). A model without it keeps the reference shape, so FLUX.1
checkpoints still load strictly. At inference crop = (0, 0) and orig = target.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowfactory.models.layers import timestep_embedding

MICRO_FIELDS = ("orig_h", "orig_w", "crop_top", "crop_left", "target_h", "target_w")


def micro_embedding(micro: Tensor, dim: int) -> Tensor:
    """`[B, 6]` sizes in pixels -> `[B, 6 * dim]`."""
    return timestep_embedding(micro.float(), dim, time_factor=1.0).flatten(1)


def inference_micro(batch: int, height: int, width: int, device=None) -> Tensor:
    return torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32, device=device)


def with_micro(pooled: Tensor, micro: Tensor | None, dim: int) -> Tensor:
    """The model's `y`: the pooled text vector, with the embedded micro-conditioning when `dim` > 0."""
    if dim == 0:
        return pooled
    if micro is None:
        raise ValueError("this model takes micro-conditioning: pass the six sizes")
    return torch.cat([pooled, micro_embedding(micro.to(pooled.device), dim).to(pooled.dtype)], dim=-1)
