"""Image files: tensors in [-1, 1] <-> PNG, and sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowfactory.errors import UserError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[B, 3, H, W]` in [-1, 1] -> uint8 `[B, H, W, 3]`."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """One image `[3, H, W]` in [-1, 1] -> PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)


def save_grid(images: torch.Tensor, path: str | Path, cols: int | None = None) -> None:
    b, _, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, im in enumerate(to_uint8(images)):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PNG/JPEG -> `[3, H, W]` in [-1, 1], optionally resized to (height, width)."""
    try:
        im = Image.open(path).convert("RGB")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if size:
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1
