"""Checkpoint files: safetensors with the model config as JSON in the metadata.

A flowfactory checkpoint holds components under key prefixes (`transformer.`,
`autoencoder.`, `text_encoder.`) and its `ModelConfig`, so the file alone rebuilds the
model. Writes are atomic (temporary file + rename). Bare reference files
(`flux1-dev.safetensors`, `ae.safetensors`) load too, given the model name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flowfactory.config import ModelConfig, from_json, to_json
from flowfactory.errors import UserError

FORMAT = "flowfactory/1"
COMPONENTS = ("transformer", "autoencoder", "text_encoder")


def atomic_write(path: str | Path, write) -> None:
    """Call `write(tmp_path)` and move the result over `path` only once it is complete."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # no such directory, permission, a full disk: the old file (if any) is untouched
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: str | Path, cfg: ModelConfig, components: dict[str, dict[str, Tensor]],
                    extra_metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> None:  # fmt: skip
    """`dtype` casts floating-point tensors (bf16 halves the file); loading casts back to the model's dtype."""

    def cast(v: Tensor) -> Tensor:
        v = v.detach().to("cpu")
        return (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()

    tensors = {f"{name}.{k}": cast(v) for name, sd in components.items() for k, v in sd.items()}
    metadata = {"format": FORMAT, "model_config": to_json(cfg), **(extra_metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_checkpoint(path: str | Path) -> tuple[ModelConfig | None, dict[str, dict[str, Tensor]]]:
    """-> (config or None for a bare file, {component: state dict}); a bare file is one component."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        meta = read_metadata(path)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}") from None
    if meta.get("format") != FORMAT:
        return None, {"bare": tensors}
    cfg = from_json(meta["model_config"])
    components: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        name, _, rest = k.partition(".")
        components.setdefault(name, {})[rest] = v
    return cfg, components


def load_into(module: nn.Module, sd: dict[str, Tensor], what: str, source: str | Path) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming the first mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise UserError(f"{source}: {what} keys do not match the model config ({detail})")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise UserError(f"{source}: {what} '{k}' has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
    sd = {k: v.to(own[k].dtype) for k, v in sd.items()}  # e.g. a bf16 file into an fp32 model
    with torch.no_grad():
        module.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in module.parameters()))
