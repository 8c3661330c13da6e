"""Conditioning composed outside the network: the transformer's inputs are prepared here.

Token layout (FLUX): latents are packed into 2x2 patches (`pack`), image tokens carry RoPE ids
`(index, row, col)` and text tokens zeros. A `Conditioning` adds, around an unchanged
transformer: clean context tokens appended to the image stream (Kontext, multi-reference),
channels concatenated to every noisy token (fill, control), extra text tokens (Redux).

SDXL micro-conditioning: the six sizes `(orig_h, orig_w, crop_top, crop_left, target_h,
target_w)` are each sinusoid-embedded (`micro_dim` channels) and concatenated to the pooled
text vector, so they reach the modulation through the model's own `vector_in` MLP (whose
`vec_in_dim` grows by `6 * micro_dim`). A model without it keeps the reference shape, so FLUX.1
checkpoints still load strictly. At inference crop = (0, 0) and orig = target.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from einops import rearrange, repeat
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


# ---------------------------------------------------------------------------------------------
# Tokens and ids


def pack(z: Tensor, patch: int = 2) -> Tensor:
    return rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=patch, pw=patch)


def unpack(x: Tensor, h: int, w: int, patch: int = 2) -> Tensor:
    """Inverse of `pack` for a latent of `h x w` tokens."""
    return rearrange(x, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=patch, pw=patch)


def image_ids(batch: int, h: int, w: int, offset: float = 0.0, device=None) -> Tensor:
    """RoPE positions `(offset, row, col)` for `h x w` tokens -> `[B, h*w, 3]`."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 0] = offset
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return repeat(ids, "h w c -> b (h w) c", b=batch)


def text_ids(txt: Tensor) -> Tensor:
    return torch.zeros(txt.shape[0], txt.shape[1], 3, device=txt.device)


def pack_mask(mask: Tensor, downsample: int, patch: int = 2) -> Tensor:
    """Pixel mask `[B, 1, H, W]` -> `[B, L, f*f*p*p]`: each latent pixel's f x f mask block as channels,
    then packed like the latents (the FLUX.1 Fill layout: 256 channels at f = 8)."""
    m = rearrange(mask[:, 0], "b (h fh) (w fw) -> b (fh fw) h w", fh=downsample, fw=downsample)
    return pack(m, patch)


# ---------------------------------------------------------------------------------------------
# Conditioning


@dataclass
class Conditioning:
    """Inputs composed around the transformer (all optional, batch-first)."""

    tokens: Tensor | None = None  # [B, Lc, C] clean context tokens appended to the image stream
    token_ids: Tensor | None = None  # [B, Lc, 3] their RoPE ids (index, row, col)
    channels: Tensor | None = None  # [B, L, Cx] concatenated to every noisy image token
    txt: Tensor | None = None  # [B, Lt, D] extra text-stream tokens
    image_features: Tensor | None = None  # [B, N, F] Redux features, for a model to project into `txt`

    def apply(self, x: Tensor, ids: Tensor, txt: Tensor, txt_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Noisy target tokens and ids -> the transformer's inputs; its output's first `x.shape[1]`
        tokens are the target's velocity."""
        if self.image_features is not None:
            raise ValueError("project Redux image features with the model's Redux encoder before applying them")
        if self.channels is not None:
            x = torch.cat([x, self.channels.to(x)], dim=-1)
        if self.tokens is not None:
            x = torch.cat([x, self.tokens.to(x)], dim=1)
            ids = torch.cat([ids, self.token_ids.to(ids)], dim=1)
        if self.txt is not None:
            txt = torch.cat([txt, self.txt.to(txt)], dim=1)
            txt_ids = torch.cat([txt_ids, torch.zeros(*self.txt.shape[:2], 3).to(txt_ids)], dim=1)
        return x, ids, txt, txt_ids

    def __add__(self, other: "Conditioning") -> "Conditioning":
        def cat(a, b, dim):
            return b if a is None else a if b is None else torch.cat([a, b], dim=dim)

        return Conditioning(cat(self.tokens, other.tokens, 1), cat(self.token_ids, other.token_ids, 1),
                            cat(self.channels, other.channels, -1), cat(self.txt, other.txt, 1),
                            cat(self.image_features, other.image_features, 1))  # fmt: skip

    def per_sample(self, f) -> "Conditioning":
        """`f` applied to every tensor along the batch dimension."""
        return Conditioning(*(None if (v := getattr(self, k.name)) is None else f(v) for k in fields(self)))

    def repeat(self, n: int) -> "Conditioning":
        """The same conditioning for `n` images per given one (batch `B` -> `B * n`)."""
        return self.per_sample(lambda t: t.repeat_interleave(n, dim=0))

    def select(self, rows: Tensor) -> "Conditioning":
        """The conditioning of the samples at `rows`."""
        return self.per_sample(lambda t: t[rows])


def conditioned(transformer, x: Tensor, ids: Tensor, txt: Tensor, txt_ids: Tensor, t: Tensor, y: Tensor,
                guidance: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:  # fmt: skip
    """The transformer on noisy target tokens with `cond` composed around it; the target's velocity."""
    if cond is None:
        return transformer(x, ids, txt, txt_ids, t, y, guidance)
    xi, idsi, txti, tidsi = cond.apply(x, ids, txt, txt_ids)
    return transformer(xi, idsi, txti, tidsi, t, y, guidance)[:, : x.shape[1]]


def kontext(latents: list[Tensor], patch: int = 2, offset: int = 1) -> Conditioning:
    """Context images' latents (each `[B, C, h, w]`, any size) -> tokens with ids `(offset * i, row, col)`
    for image i = 1, 2, ... (FLUX.1 Kontext: offset 1; FLUX.2: offset 10)."""
    out = Conditioning()
    for i, z in enumerate(latents, 1):
        b, _, h, w = z.shape
        out = out + Conditioning(tokens=pack(z, patch), token_ids=image_ids(b, h // patch, w // patch, offset * i))
    return out


def fill(masked_latents: Tensor, mask: Tensor, downsample: int, patch: int = 2) -> Conditioning:
    """FLUX.1 Fill: the masked image's latents and the pixel mask (1 = repaint) as extra channels."""
    return Conditioning(channels=torch.cat([pack(masked_latents, patch), pack_mask(mask, downsample, patch)], dim=-1))


def control(control_latents: Tensor, patch: int = 2) -> Conditioning:
    """FLUX.1 Canny / Depth: the control image's latents as extra channels."""
    return Conditioning(channels=pack(control_latents, patch))
