"""LoRA: low-rank adapters on a frozen model's linear layers, applied from outside the model.

    lora = apply_lora(flux, rank=16, alpha=16, targets=ATTENTION)   # freezes the base
    ... train the lora parameters ...
    save_lora(flux, "style.safetensors", base_name="demo")
    load_lora(other_flux, "style.safetensors", base_name="demo")
    merge_lora(flux); unmerge_lora(flux)                             # fold in / restore exactly

`y = W x + b + (alpha / rank) * B A x`, A `[rank, in]` (Kaiming init), B `[out, rank]` (zeros, so a
fresh adapter changes nothing). Adapted layers keep their `weight` / `bias` names, so the base
state dict is unchanged; `remove_lora` restores plain `nn.Linear` layers. Some adapters also
train whole tensors (Control-LoRA widens `img_in` for the control channels): those are listed
with `train_full` and saved in full.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from flowfactory.checkpoint import atomic_write
from flowfactory.errors import UserError

FORMAT = "flowfactory-lora-1"
ATTENTION = r"(img_attn|txt_attn)\.(qkv|proj)$|single_blocks\.\d+\.linear1$"
ALL_LINEAR = r"(img_attn|txt_attn)\.(qkv|proj)$|(img_mlp|txt_mlp)\.[02]$|linear[12]$|(img_mod|txt_mod|modulation)\.lin$"
TARGETS = {"attention": ATTENTION, "all-linear": ALL_LINEAR}


class LoRALinear(nn.Linear):
    """An `nn.Linear` (sharing the base layer's parameters) with a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged: Tensor | None = None  # the base weight, kept while merged, to restore it exactly

    def delta(self) -> Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.merged is None:
            y = y + self.scale * ((x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype))
        return y


def _adapted(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(model: nn.Module, rank: int = 16, alpha: float | None = None, targets: str = ATTENTION,
               train_full: tuple[str, ...] = ()) -> list[nn.Parameter]:  # fmt: skip
    """Freeze `model`, wrap the linear layers whose names match `targets` (a regex, or a name in
    TARGETS); `train_full` names parameters trained whole. Returns the trainable parameters."""
    if rank < 1:
        raise UserError(f"LoRA rank must be at least 1, got {rank}")
    pattern = re.compile(TARGETS.get(targets, targets))
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
             and pattern.search(n)]  # fmt: skip
    if not names:
        raise UserError(f"LoRA targets '{targets}' match no linear layer of the model")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(getattr(owner, child), rank, rank if alpha is None else alpha))
    params = dict(model.named_parameters())
    for n in train_full:
        if n not in params:
            raise UserError(f"no parameter '{n}' to train in full")
        params[n].requires_grad_(True)
    model._lora_config = {"rank": rank, "alpha": rank if alpha is None else alpha, "targets": targets,
                          "train_full": list(train_full)}  # fmt: skip
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (the base is kept to `unmerge_lora` exactly)."""
    for m in _adapted(model).values():
        if m.merged is None:
            m.merged = m.weight.detach().clone()
            m.weight.add_(m.delta().to(m.weight.dtype))


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    for m in _adapted(model).values():
        if m.merged is not None:
            m.weight.copy_(m.merged)
            m.merged = None


def remove_lora(model: nn.Module, merge: bool = False) -> None:
    """Back to plain `nn.Linear` layers, with the adapters folded in when `merge`."""
    for name, m in _adapted(model).items():
        with torch.no_grad():
            if m.merged is not None:
                m.weight.copy_(m.merged)
            if merge:
                m.weight.add_(m.delta().to(m.weight.dtype))
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight, lin.bias = m.weight, m.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, lin)
    model.__dict__.pop("_lora_config", None)


def fingerprint(model: nn.Module) -> str:
    """Identifies a base architecture: the names and shapes of its parameters, LoRA excluded."""
    items = sorted((n, tuple(p.shape)) for n, p in model.named_parameters() if "lora_" not in n)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    cfg = getattr(model, "_lora_config", None)
    if cfg is None:
        raise UserError("the model has no LoRA adapters")
    sd = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n or n in cfg["train_full"]}
    return sd


def save_lora(model: nn.Module, path: str | Path, base_name: str, base_fingerprint: str | None = None) -> int:
    """Write the adapters (and fully trained tensors) with the base they belong to; returns bytes written."""
    cfg = model._lora_config
    sd = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    meta = {"format": FORMAT, "base": base_name, "fingerprint": base_fingerprint or fingerprint(model),
            "lora_config": json.dumps(cfg)}  # fmt: skip
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    return Path(path).stat().st_size


def read_lora(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, Exception) as e:  # safetensors raises its own error type for corrupt files
        raise UserError(f"cannot read LoRA file {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a flowfactory LoRA file")
    return meta, tensors


def load_lora(model: nn.Module, path: str | Path, base_name: str, base_fingerprint: str | None = None) -> None:
    """Apply a saved LoRA to `model` (a base of the same architecture), with a clear error otherwise."""
    meta, tensors = read_lora(path)
    mine = base_fingerprint or fingerprint(model)
    if meta["fingerprint"] != mine:
        raise UserError(f"LoRA {path} was trained for base '{meta['base']}' (fingerprint {meta['fingerprint']}); "
                        f"this model is '{base_name}' ({mine})")  # fmt: skip
    cfg = json.loads(meta["lora_config"])
    apply_lora(model, cfg["rank"], cfg["alpha"], cfg["targets"], tuple(cfg["train_full"]))
    missing, unexpected = [], []
    own = dict(model.named_parameters())
    for k, v in tensors.items():
        if k not in own or own[k].shape != v.shape:
            unexpected.append(k)
            continue
        with torch.no_grad():
            own[k].copy_(v)
    expected = set(lora_state_dict(model))
    missing = sorted(expected - set(tensors))
    if missing or unexpected:
        raise UserError(f"LoRA {path} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")


@torch.no_grad()
def widen_img_in(flux: nn.Module, in_channels: int) -> None:
    """Control-LoRA: widen the input projection for extra input channels (the new columns start at
    zero, so the widened model computes exactly what the base did until they are trained)."""
    old = flux.img_in
    if in_channels <= old.in_features:
        raise UserError(f"img_in already takes {old.in_features} channels (asked for {in_channels})")
    new = nn.Linear(in_channels, old.out_features, bias=old.bias is not None, device=old.weight.device,
                    dtype=old.weight.dtype)  # fmt: skip
    new.weight.zero_()
    new.weight[:, : old.in_features] = old.weight
    if old.bias is not None:
        new.bias.copy_(old.bias)
    flux.img_in = new
    flux.in_channels = in_channels
