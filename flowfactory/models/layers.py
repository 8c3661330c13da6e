"""Math primitives and building blocks of the FLUX.1 transformer.

Everything here is a pure tensor function or a small module with the reference
parameter names (black-forest-labs/flux `modules/layers.py`), so that released
checkpoints load with `strict=True`:

- `timestep_embedding`: 256-d sinusoidal embedding of t (scaled by 1000).
- `rope` / `apply_rope` / `EmbedND`: rotary embedding over several position axes.
- `attention`: SDPA over `[B, H, L, D]` heads, RoPE applied first.
- `Modulation`: adaLN shift/scale/gate, per sample `[B, D]` or per token `[B, L, D]`.
- `DoubleStreamBlock`, `SingleStreamBlock`, `LastLayer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of `t` (any shape) -> `[*t.shape, dim]`, `[cos | sin]` halves."""
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb.to(t.dtype) if torch.is_floating_point(t) else emb


def rope(pos: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotation angles for positions `[B, L]` on `dim` channels -> (cos, sin), each `[B, L, dim/2]`."""
    assert dim % 2 == 0, "rope axis dim must be even"
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**scale)
    angles = pos.to(torch.float64)[..., None] * omega
    return torch.cos(angles).float(), torch.sin(angles).float()


class EmbedND(nn.Module):
    """RoPE over several position axes (FLUX.1: (t, h, w) with dims (16, 56, 56)).

    ids `[B, L, n_axes]` -> (cos, sin), each `[B, 1, L, head_dim/2]`, broadcast over heads.
    """

    def __init__(self, dim: int, theta: float, axes_dim: list[int]):
        super().__init__()
        self.dim = dim
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        parts = [rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim)]
        cos = torch.cat([c for c, _ in parts], dim=-1)
        sin = torch.cat([s for _, s in parts], dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)


def apply_rope(x: Tensor, pe: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate consecutive channel pairs (x0, x1) of `x` `[B, H, L, D]` by the angles in `pe`."""
    cos, sin = pe
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: tuple[Tensor, Tensor]) -> Tensor:
    """Joint attention with RoPE: q, k, v `[B, H, L, D]` -> `[B, L, H*D]`."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v)
    return rearrange(x, "B H L D -> B L (H D)")


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_dtype = x.dtype
        x = x.float()
        rrms = torch.rsqrt(torch.mean(x**2, dim=-1, keepdim=True) + 1e-6)
        return (x * rrms).to(dtype=x_dtype) * self.scale


class QKNorm(nn.Module):
    """RMSNorm on queries and keys: keeps attention logits bounded in bf16 at high resolution."""

    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Holds the QKV projection, QK norm and output projection of one stream."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(head_dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`[B, L, C]` -> normalised q, k and v, each `[B, H, L, D]`."""
        q, k, v = rearrange(self.qkv(x), "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor

    def modulate(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    """adaLN parameters from the conditioning vector.

    `vec` is `[B, D]` (one timestep per sample, the default) or `[B, L, D]` (one per
    token, for per-token timesteps); outputs broadcast against `[B, L, D]` tokens.
    """

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))
        if out.ndim == 2:
            out = out[:, None, :]
        chunks = out.chunk(self.multiplier, dim=-1)
        return ModulationOut(*chunks[:3]), ModulationOut(*chunks[3:]) if self.is_double else None


def _mlp(hidden_size: int, mlp_hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, mlp_hidden_dim, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(mlp_hidden_dim, hidden_size, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """Separate weights for the image and text streams, one joint attention over `[txt, img]`."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False):
        super().__init__()
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.img_mlp = _mlp(hidden_size, mlp_hidden_dim)

        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden_dim)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """img `[B, Li, C]`, txt `[B, Lt, C]`, vec `[B, C]` or per token `[B, Lt + Li, C]`."""
        n_txt = txt.shape[1]
        txt_vec, img_vec = (vec[:, :n_txt], vec[:, n_txt:]) if vec.ndim == 3 else (vec, vec)
        img_mod1, img_mod2 = self.img_mod(img_vec)
        txt_mod1, txt_mod2 = self.txt_mod(txt_vec)

        img_q, img_k, img_v = self.img_attn.qkv_heads(img_mod1.modulate(self.img_norm1(img)))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(txt_mod1.modulate(self.txt_norm1(txt)))
        attn = attention(
            torch.cat((txt_q, img_q), dim=2),
            torch.cat((txt_k, img_k), dim=2),
            torch.cat((txt_v, img_v), dim=2),
            pe,
        )
        txt_attn, img_attn = attn[:, :n_txt], attn[:, n_txt:]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(img_mod2.modulate(self.img_norm2(img)))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(txt_mod2.modulate(self.txt_norm2(txt)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP on the joint sequence, fused input (`linear1`) and output (`linear2`)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.hidden_dim = hidden_size
        self.num_heads = num_heads
        head_dim = hidden_size // num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(head_dim)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: tuple[Tensor, Tensor]) -> Tensor:
        mod, _ = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1(mod.modulate(self.pre_norm(x))), [3 * self.hidden_dim, self.mlp_hidden_dim], dim=-1
        )
        q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe)
        output = self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))
        return x + mod.gate * output


class LastLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        mod = self.adaLN_modulation(vec)
        if mod.ndim == 2:
            mod = mod[:, None, :]
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear((1 + scale) * self.norm_final(x) + shift)
