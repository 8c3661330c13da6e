"""The FLUX.1 family transformer: MM-DiT with double- and single-stream blocks and 3-axis RoPE.

Parameter names and the forward signature follow black-forest-labs/flux `model.py`,
so `flux1-dev.safetensors` / `flux1-schnell.safetensors` load with `strict=True`.
The network is a pure tensor function: packing, ids, sampling and loading live elsewhere.

Shapes: img `[B, Li, in_channels]` (2x2-packed latents), img_ids `[B, Li, 3]`,
txt `[B, Lt, context_in_dim]`, txt_ids `[B, Lt, 3]`, timesteps `[B]` (or one per
image token `[B, Li]`), y `[B, vec_in_dim]`, guidance `[B]` -> `[B, Li, out_channels]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flowfactory.models.layers import (
    DoubleStreamBlock,
    EmbedND,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    timestep_embedding,
)


@dataclass
class FluxParams:
    in_channels: int = 64  # channels per packed image token (16 latent channels x 2x2 patch)
    out_channels: int = 64  # predicted velocity channels per token (FLUX.1 Fill/Control: 64 with larger in_channels)
    vec_in_dim: int = 768  # pooled text vector width (CLIP-L)
    context_in_dim: int = 4096  # text token width (T5-XXL)
    hidden_size: int = 3072  # model width; must equal num_heads * sum(axes_dim)
    mlp_ratio: float = 4.0  # MLP hidden width / hidden_size
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38  # single-stream blocks
    axes_dim: list[int] = field(default_factory=lambda: [16, 56, 56])  # RoPE dims per position axis (t, h, w)
    theta: int = 10_000  # RoPE base
    qkv_bias: bool = True
    guidance_embed: bool = True  # guidance-distilled models ([dev]) embed the guidance scale

    def __post_init__(self):
        self.axes_dim = list(self.axes_dim)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if sum(self.axes_dim) != head_dim:
            raise ValueError(f"sum(axes_dim)={sum(self.axes_dim)} must equal the head dim {head_dim}")
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"every RoPE axis dim must be even, got {self.axes_dim}")


class Flux(nn.Module):
    """Transformer model for flow matching on sequences of packed latent tokens."""

    def __init__(self, params: FluxParams):
        super().__init__()
        self.params = params
        self.in_channels = params.in_channels
        self.out_channels = params.out_channels
        self.hidden_size = params.hidden_size
        self.num_heads = params.num_heads
        self.pe_embedder = EmbedND(dim=params.hidden_size // params.num_heads, theta=params.theta, axes_dim=params.axes_dim)
        self.img_in = nn.Linear(self.in_channels, self.hidden_size, bias=True)
        self.time_in = MLPEmbedder(in_dim=256, hidden_dim=self.hidden_size)
        self.vector_in = MLPEmbedder(params.vec_in_dim, self.hidden_size)
        self.guidance_in = MLPEmbedder(in_dim=256, hidden_dim=self.hidden_size) if params.guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(params.context_in_dim, self.hidden_size)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio, params.qkv_bias)
            for _ in range(params.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(self.hidden_size, self.num_heads, params.mlp_ratio) for _ in range(params.depth_single_blocks)
        )
        self.final_layer = LastLayer(self.hidden_size, 1, self.out_channels)

    def conditioning_vector(self, n_txt: int, timesteps: Tensor, y: Tensor, guidance: Tensor | None) -> Tensor:
        """The modulation vector: `[B, C]`, or `[B, Lt + Li, C]` for per-token timesteps `[B, Li]`.

        With per-token timesteps, text tokens are modulated by the mean image timestep.
        """
        if self.params.guidance_embed:
            if guidance is None:
                raise ValueError("this model embeds the guidance scale: pass `guidance`")
        extra = self.vector_in(y)
        if self.params.guidance_embed:
            extra = extra + self.guidance_in(timestep_embedding(guidance, 256))
        if timesteps.ndim == 1:
            return self.time_in(timestep_embedding(timesteps, 256)) + extra
        txt_t = timesteps.mean(dim=1, keepdim=True).expand(-1, n_txt)
        per_token = self.time_in(timestep_embedding(torch.cat([txt_t, timesteps], dim=1), 256))
        return per_token + extra[:, None, :]

    def forward(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor | None = None,
    ) -> Tensor:
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("input img and txt tensors must have 3 dimensions [B, L, C]")
        img = self.img_in(img)
        vec = self.conditioning_vector(txt.shape[1], timesteps, y, guidance)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        n_txt = txt.shape[1]
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec=vec, pe=pe)
        img = x[:, n_txt:]
        return self.final_layer(img, vec[:, n_txt:] if vec.ndim == 3 else vec)


def init_weights(model: Flux) -> Flux:
    """Initialisation for training from scratch (adaLN-Zero, DiT style).

    Linear layers get Xavier-uniform weights and zero biases; every modulation and the
    output projection start at zero, so each block starts as the identity.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for emb in (model.time_in, model.vector_in, model.guidance_in):
        if isinstance(emb, MLPEmbedder):
            nn.init.normal_(emb.in_layer.weight, std=0.02)
            nn.init.normal_(emb.out_layer.weight, std=0.02)
    for block in model.double_blocks:
        for mod in (block.img_mod, block.txt_mod):
            nn.init.zeros_(mod.lin.weight)
            nn.init.zeros_(mod.lin.bias)
    for block in model.single_blocks:
        nn.init.zeros_(block.modulation.lin.weight)
        nn.init.zeros_(block.modulation.lin.bias)
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].weight)
    nn.init.zeros_(model.final_layer.adaLN_modulation[-1].bias)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(params: FluxParams, n_img: int, n_txt: int) -> float:
    """Matmul FLOPs of one forward pass over `n_img` image and `n_txt` text tokens.

    2 * (per-token linear weights) * tokens + 4 * blocks * hidden * tokens^2 (QK^T and AV),
    the convention of SPECS.md section 1 (about 74 TFLOP for FLUX.1 at 1024^2, 512 text tokens).
    """
    h, m = params.hidden_size, int(params.hidden_size * params.mlp_ratio)
    tokens = n_img + n_txt
    double = 2 * (3 * h * h + h * h + 2 * h * m)  # both streams: qkv + proj + mlp
    single = 3 * h * h + h * m + (h + m) * h  # linear1 + linear2
    per_token = (params.depth * double / 2 + params.depth_single_blocks * single)
    io = n_img * (params.in_channels * h + h * params.out_channels) + n_txt * params.context_in_dim * h
    attn = 4 * (params.depth + params.depth_single_blocks) * h * tokens**2
    return 2 * per_token * tokens + 2 * io + attn
