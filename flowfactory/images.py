"""Image files: tensors in [-1, 1] <-> PNG, and sample grids."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from flowfactory.errors import UserError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`[B, 3, H, W]` in [-1, 1] -> uint8 `[B, H, W, 3]`."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def check_output_path(path: str | Path) -> Path:
    """`path` as an image file to write: its extension must name a format Pillow writes (.png,
    .jpg, .webp, ...). Checked before any work, so a typo costs no generation."""
    path = Path(path)
    writable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if path.suffix.lower() not in writable:
        raise UserError(f"cannot write {path}: '{path.suffix or '(no extension)'}' is not an image format "
                        "(use .png, .jpg or .webp)")  # fmt: skip
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    return path


def _write(array: np.ndarray, path: str | Path) -> None:
    """Write atomically (a reader never sees half a file), the format from the extension."""
    from flowfactory.checkpoint import atomic_write

    path = check_output_path(path)
    fmt = Image.registered_extensions()[path.suffix.lower()]
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt))


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """One image `[3, H, W]` in [-1, 1] -> an image file (format from the extension)."""
    _write(to_uint8(image[None])[0], path)


def save_grid(images: torch.Tensor, path: str | Path, cols: int | None = None) -> None:
    b, _, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, im in enumerate(to_uint8(images)):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    _write(grid, path)


MAX_PIXELS = 1 << 28  # larger images are refused as decompression bombs (268M pixels, 16k x 16k)


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, empty, not an image, too large)."""


def decode_rgb(data: bytes | str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Image bytes or a path -> an 8-bit RGB PIL image, whatever the file's mode.

    EXIF orientation is applied; 16-bit and float images are scaled to 8 bits; palette, CMYK,
    grey and alpha images are converted (alpha composited on white). Raises `ImageDecodeError`.
    """
    try:
        src = io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb")
    except OSError as e:
        raise ImageDecodeError(str(e)) from None
    with src, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(src)
            if im.width * im.height > max_pixels:
                raise ImageDecodeError(f"{im.width}x{im.height} is over the {max_pixels}-pixel limit")
            im.load()
            im = ImageOps.exif_transpose(im)
        except ImageDecodeError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
            raise ImageDecodeError(str(e) or type(e).__name__) from None
    return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> `[3, H, W]` in [-1, 1]."""
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file -> `[3, H, W]` in [-1, 1], optionally resized to (height, width)."""
    try:
        im = decode_rgb(Path(path))
    except ImageDecodeError as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if size:
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return to_tensor(im)
