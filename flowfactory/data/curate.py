"""Curation of an image folder: a curated manifest and a report of what was dropped and why.

    flowfactory curate photos --out photos/curated.jsonl
    flowfactory train ... --data folder:photos/curated.jsonl

Checks, in order, each dropping the file with its reason: deleted (tombstoned), unreadable
(corrupt, truncated, empty, not an image), too small, too large, aspect ratio, empty caption,
caption length, exact duplicate (same bytes), near duplicate (perceptual hash within
`phash_distance` bits of a kept image; the larger image of a group is kept), and an optional
scorer (`package.module:function`, called as `function(image: PIL.Image, caption: str) -> float`)
below `min_score`.
"""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import imagehash
import numpy as np
from tqdm import tqdm

from flowfactory.checkpoint import atomic_write
from flowfactory.data.sources import IMAGE_EXTS, _read_manifest, _sidecar_caption
from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.errors import UserError
from flowfactory.images import ImageDecodeError, decode_rgb


@dataclass
class CurateOptions:
    min_side: int = 64  # shorter side, pixels
    max_pixels: int = 64_000_000
    max_aspect: float = 4.0  # long side / short side
    min_words: int = 1  # caption length bounds, in words (min_words >= 1 drops empty captions)
    max_words: int = 300
    phash_distance: int = 4  # near-duplicate threshold in bits of the 64-bit perceptual hash (-1: off)
    scorer: str = ""  # "package.module:function" (image, caption) -> float
    min_score: float = 0.0
    tombstones: str = ""


def load_scorer(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot load scorer '{spec}' (expected package.module:function): {e}") from None
    if not callable(fn):
        raise UserError(f"scorer '{spec}' is not callable")
    return fn


def curate(root: str | Path, out: str | Path, opts: CurateOptions, progress: bool = True) -> dict:
    """Curate the images under `root`; write the manifest `out` and `out` + `.report.json`."""
    root, out = Path(root).resolve(), Path(out)
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: give the manifest file to write (e.g. {out / 'curated.jsonl'})")
    scorer = load_scorer(opts.scorer) if opts.scorer else None
    tomb = Tombstones(opts.tombstones or None)
    meta = _read_manifest(root / "metadata.jsonl") if (root / "metadata.jsonl").exists() else {}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    dropped: list[dict] = []
    candidates: list[dict] = []
    seen: dict[str, str] = {}

    def drop(rel: str, reason: str, detail: str = "") -> None:
        dropped.append({"file_name": rel, "reason": reason, "detail": detail})

    for path in tqdm(files, desc="curate", disable=not progress, unit="img"):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        h = content_hash(data)
        caption = meta[rel] if rel in meta else _sidecar_caption(path)
        words = len(caption.split())
        if tomb.is_deleted(hash=h, id=rel):
            drop(rel, "deleted")
            continue
        try:
            im = decode_rgb(data)
        except ImageDecodeError as e:
            drop(rel, "unreadable", str(e))
            continue
        w, ht = im.size
        if min(w, ht) < opts.min_side:
            drop(rel, "too_small", f"{w}x{ht}")
        elif w * ht > opts.max_pixels:
            drop(rel, "too_large", f"{w}x{ht}")
        elif max(w, ht) / min(w, ht) > opts.max_aspect:
            drop(rel, "aspect", f"{w}x{ht}")
        elif not caption.strip() and opts.min_words > 0:
            drop(rel, "empty_caption")
        elif words < opts.min_words or words > opts.max_words:
            drop(rel, "caption_length", f"{words} words")
        elif h in seen:
            drop(rel, "duplicate", f"same bytes as {seen[h]}")
        else:
            seen[h] = rel
            rec = {"file_name": rel, "text": caption, "hash": h, "width": w, "height": ht}
            if opts.phash_distance >= 0:
                rec["phash"] = int(str(imagehash.phash(im)), 16)
            if scorer is not None:
                rec["score"] = float(scorer(im, caption))
            candidates.append(rec)

    kept = _near_duplicates(candidates, opts.phash_distance, drop)
    if scorer is not None:
        low = [r for r in kept if r["score"] < opts.min_score]
        for r in low:
            drop(r["file_name"], "low_score", f"{r['score']:.4g} < {opts.min_score}")
        kept = [r for r in kept if r["score"] >= opts.min_score]
    for r in kept:  # file names relative to the manifest, which the folder source reads
        r.pop("phash", None)
        r["file_name"] = Path(os.path.relpath(root / r["file_name"], out.parent.resolve())).as_posix()
    kept.sort(key=lambda r: r["file_name"])
    lines = "".join(json.dumps(r) + "\n" for r in kept)
    atomic_write(out, lambda tmp: Path(tmp).write_text(lines))
    report = {"root": str(root), "manifest": str(out), "options": asdict(opts), "total": len(files),
              "kept": len(kept), "dropped_by_reason": dict(Counter(d["reason"] for d in dropped)),
              "dropped": sorted(dropped, key=lambda d: d["file_name"])}  # fmt: skip
    atomic_write(Path(f"{out}.report.json"), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def _near_duplicates(recs: list[dict], distance: int, drop) -> list[dict]:
    """Greedy: largest images first; drop any within `distance` bits of one already kept."""
    if distance < 0:
        return recs
    order = sorted(recs, key=lambda r: (-r["width"] * r["height"], r["file_name"]))
    kept: list[dict] = []
    hashes = np.zeros(0, dtype=np.uint64)
    for r in order:
        if len(hashes):
            x = np.bitwise_xor(hashes, np.uint64(r["phash"]))
            bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
            j = int(bits.argmin())
            if bits[j] <= distance:
                drop(r["file_name"], "near_duplicate", f"{int(bits[j])} bits from {kept[j]['file_name']}")
                continue
        kept.append(r)
        hashes = np.append(hashes, np.uint64(r["phash"]))
    return kept
