"""The FLUX.1 latent autoencoder (KL-regularised, f = 2^(len(ch_mult) - 1)).

Reference parameter names (black-forest-labs/flux `modules/autoencoder.py`), so the
released `ae.safetensors` loads with `strict=True`; every width, depth and the number of
downsamplings are parameters, so small ones train on a CPU.

`encode(x)`: image `[B, in_channels, H, W]` in [-1, 1] -> `scale * (z - shift)`,
`[B, z_channels, H/f, W/f]`. `decode(z)` inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class AutoEncoderParams:
    resolution: int = 256  # nominal training resolution (informational, as in the reference)
    in_channels: int = 3
    ch: int = 128  # base width
    out_ch: int = 3
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])  # width multiplier per level; f = 2^(levels-1)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611  # latents are scale * (z - shift): roughly unit variance for the transformer
    shift_factor: float = 0.1159
    norm_groups: int = 32  # GroupNorm groups (32 in FLUX.1; smaller for tiny CPU models)

    def __post_init__(self):
        self.ch_mult = list(self.ch_mult)
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise ValueError(f"width ch*mult={self.ch * m} is not divisible by norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    def __init__(self, in_channels: int, groups: int):
        super().__init__()
        self.norm = _norm(in_channels, groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        q, k, v = (rearrange(f(h_), "b c h w -> b 1 (h w) c").contiguous() for f in (self.q, self.k, self.v))
        h_ = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(rearrange(h_, "b 1 (h w) c -> b c h w", h=h, w=w))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        # no asymmetric padding in torch conv: pad (right, bottom) by hand
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(block_in: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(block_in, block_in, groups)
    mid.attn_1 = AttnBlock(block_in, groups)
    mid.block_2 = ResnetBlock(block_in, block_in, groups)
    return mid


class Encoder(nn.Module):
    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        g = p.norm_groups
        self.num_resolutions = len(p.ch_mult)
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1, *p.ch_mult)
        self.down = nn.ModuleList()
        block_in = p.ch
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            block_in = p.ch * in_ch_mult[i_level]
            block_out = p.ch * p.ch_mult[i_level]
            for _ in range(p.num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
            down = nn.Module()
            down.block = block
            down.attn = nn.ModuleList()
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
            self.down.append(down)
        self.mid = _mid(block_in, g)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 2 * p.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for block in down.block:
                h = block(h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        g = p.norm_groups
        self.num_resolutions = len(p.ch_mult)
        block_in = p.ch * p.ch_mult[-1]
        self.conv_in = nn.Conv2d(p.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _mid(block_in, g)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            block_out = p.ch * p.ch_mult[i_level]
            for _ in range(p.num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
            up = nn.Module()
            up.block = block
            up.attn = nn.ModuleList()
            if i_level != 0:
                up.upsample = Upsample(block_in)
            self.up.insert(0, up)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, p.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            for block in self.up[i_level].block:
                h = block(h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class DiagonalGaussian(nn.Module):
    """Splits encoder output `[B, 2z, h, w]` into mean and log-variance; samples or takes the mean."""

    def forward(self, z: Tensor, sample: bool = False) -> Tensor:
        mean, logvar = torch.chunk(z, 2, dim=1)
        if not sample:
            return mean
        return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)


class AutoEncoder(nn.Module):
    def __init__(self, params: AutoEncoderParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)
        self.reg = DiagonalGaussian()
        self.scale_factor = params.scale_factor
        self.shift_factor = params.shift_factor

    def encode(self, x: Tensor, sample: bool = False) -> Tensor:
        """Image in [-1, 1] -> normalised latent (the posterior mean unless `sample`)."""
        return self.scale_factor * (self.reg(self.encoder(x), sample=sample) - self.shift_factor)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z / self.scale_factor + self.shift_factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
