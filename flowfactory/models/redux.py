"""Redux (image variation): an image embedding projected into extra tokens of the text stream.

`ReduxEncoder` has the public FLUX.1 Redux layout (`redux_up`: redux_dim -> 3 x txt_dim, SiLU,
`redux_down`: -> txt_dim), so the released file loads into it at FLUX.1 width. Image features:
in the shapes world, the frozen autoencoder's latent mean average-pooled to a `grid` x `grid`
map (one token per cell, `redux_dim` = latent channels), or, with `patch` > 1, each cell's
`patch` x `patch` latent pixels flattened (`redux_dim` = latent channels x patch^2, ViT-style
patches) plus a learned position per cell, so a token carries the shapes inside its cell and
where the cell lies; at FLUX.1 scale, SigLIP's patch features (1152 wide) from a local directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn


@dataclass
class ReduxParams:
    redux_dim: int  # width of the image features
    txt_dim: int  # width of the text stream (the transformer's context_in_dim)
    grid: int = 4  # latent-feature images: tokens per side
    positions: bool = False  # add a learned embedding per token position (patch features; the FLUX.1 file has none)


class ReduxEncoder(nn.Module):
    def __init__(self, p: ReduxParams):
        super().__init__()
        self.params = p
        self.redux_up = nn.Linear(p.redux_dim, p.txt_dim * 3)
        self.redux_down = nn.Linear(p.txt_dim * 3, p.txt_dim)
        # zero-initialised: an untrained table changes nothing
        self.pos = nn.Parameter(torch.zeros(p.grid * p.grid, p.txt_dim)) if p.positions else None

    def forward(self, features: Tensor) -> Tensor:
        """Image features `[B, N, redux_dim]` -> text-stream tokens `[B, N, txt_dim]`."""
        out = self.redux_down(nn.functional.silu(self.redux_up(features)))
        if self.pos is not None:
            if features.shape[1] != self.pos.shape[0]:
                raise ValueError(f"{features.shape[1]} image tokens, but the encoder has {self.pos.shape[0]} positions")
            out = out + self.pos
        return out


def latent_features(latents: Tensor, grid: int, patch: int = 1) -> Tensor:
    """Autoencoder latents `[B, C, h, w]` -> `[B, grid * grid, C * patch^2]`: the latents resampled
    to `grid * patch` per side (average pooling; exact when that divides the latent size), each
    cell's `patch` x `patch` pixels flattened (patch 1: the cell's mean)."""
    z = nn.functional.adaptive_avg_pool2d(latents, grid * patch)
    return rearrange(z, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch, p2=patch)
