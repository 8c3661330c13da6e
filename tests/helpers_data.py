"""Image folders for the data tests: several aspect ratios, every awkward file kind, captions."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(230, 40, 40), (40, 190, 60), (40, 90, 230), (240, 210, 40), (160, 60, 210), (40, 210, 220)]


def picture(h: int, w: int, seed: int) -> Image.Image:
    """A distinct image: a coloured background with a rectangle placed by the seed."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = COLOURS[seed % len(COLOURS)]
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    a[y : y + h // 2, x : x + w // 2] = COLOURS[(seed * 7 + 3) % len(COLOURS)]
    a[: h // 8, : w // 8] = rng.integers(0, 255, 3)
    return Image.fromarray(a)


def aspect_folder(root: Path, sizes=((32, 32), (24, 48), (48, 24), (20, 40)), per: int = 6) -> list[Path]:
    """`per` PNG images of each (h, w), each with a sidecar caption."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (h, w) in enumerate(sizes):
        for j in range(per):
            p = root / f"img_{k}_{j}.png"
            picture(h, w, 100 * k + j).save(p)
            p.with_suffix(".txt").write_text(f"picture {k} number {j}")
            out.append(p)
    return out


def awkward_folder(root: Path) -> dict[str, Path]:
    """One file of each kind a real folder holds: the readable ones and the broken ones."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}

    def save(name, im, **kw):
        files[name] = root / name
        im.save(files[name], **kw)

    save("rgb.png", picture(32, 32, 1))
    save("rgb2.png", picture(32, 32, 2))
    save("cmyk.jpg", picture(32, 32, 3).convert("CMYK"), quality=95)
    save("grey16.png", Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)))
    pal = picture(32, 32, 4).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    save("palette.png", pal, transparency=0)
    save("rgba.png", picture(32, 32, 5).convert("RGBA"))
    save("huge.jpg", picture(3000, 3000, 6), quality=80)
    buf = io.BytesIO()
    picture(32, 32, 7).save(buf, format="PNG")
    files["truncated.png"] = root / "truncated.png"
    files["truncated.png"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["zero.jpg"] = root / "zero.jpg"
    files["zero.jpg"].write_bytes(b"")
    files["corrupt.png"] = root / "corrupt.png"
    files["corrupt.png"].write_bytes(np.random.default_rng(0).integers(0, 255, 500, dtype=np.uint8).tobytes())
    for name, p in files.items():
        p.with_suffix(".txt").write_text(f"the file {name}")
    return files


def write_shards(root: Path, shards: int, per_shard: int) -> str:
    """webdataset tar shards of PNG + caption; returns the brace pattern."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"s{s:03d}_{j:03d}"
                buf = io.BytesIO()
                picture(24, 24, s * 1000 + j).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("json", json.dumps({"caption": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / f"shard-{{000..{shards - 1:03d}}}.tar")


def brightness(image: Image.Image, caption: str) -> float:
    """A stand-in scorer for curation tests (a user would plug an aesthetic or safety model)."""
    return float(np.asarray(image).mean() / 255.0)
