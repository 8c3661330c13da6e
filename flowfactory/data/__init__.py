"""Data sources. `build_dataset(name, ...)` picks one by the recipe's `dataset` field."""

from __future__ import annotations

from flowfactory.data.shapes import ShapesDataset
from flowfactory.errors import UserError

DATASETS = {"shapes": ShapesDataset}


def build_dataset(name: str, image_size: int, seed: int, length: int = 0):
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}' (choose from: {', '.join(DATASETS)})")
    return DATASETS[name](image_size=image_size, seed=seed, length=length)
