"""Redux (image variation): an image embedding projected into extra tokens of the text stream.

`ReduxEncoder` has the public FLUX.1 Redux layout (`redux_up`: redux_dim -> 3 x txt_dim, SiLU,
`redux_down`: -> txt_dim), so the released file loads into it at FLUX.1 width. Image features:
in the shapes world, the frozen autoencoder's latent mean average-pooled to a `grid` x `grid`
map (one token per cell, `redux_dim` = latent channels); at FLUX.1 scale, SigLIP's patch
features (1152 wide) from a local directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from einops import rearrange
from torch import Tensor, nn


@dataclass
class ReduxParams:
    redux_dim: int  # width of the image features
    txt_dim: int  # width of the text stream (the transformer's context_in_dim)
    grid: int = 4  # latent-feature images: tokens per side


class ReduxEncoder(nn.Module):
    def __init__(self, p: ReduxParams):
        super().__init__()
        self.params = p
        self.redux_up = nn.Linear(p.redux_dim, p.txt_dim * 3)
        self.redux_down = nn.Linear(p.txt_dim * 3, p.txt_dim)

    def forward(self, features: Tensor) -> Tensor:
        """Image features `[B, N, redux_dim]` -> text-stream tokens `[B, N, txt_dim]`."""
        return self.redux_down(nn.functional.silu(self.redux_up(features)))


def latent_features(latents: Tensor, grid: int) -> Tensor:
    """Autoencoder latents `[B, C, h, w]` -> `[B, grid * grid, C]` (average-pooled cells)."""
    return rearrange(nn.functional.adaptive_avg_pool2d(latents, grid), "b c h w -> b (h w) c")
