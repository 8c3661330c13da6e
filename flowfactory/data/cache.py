"""Latent caching: encode a source once, train from the shards without the autoencoder.

    flowfactory cache --data folder:photos --autoencoder ae.safetensors --out cache/photos
    flowfactory train --recipe ... --data cache:cache/photos

Layout of DIR: `index.json` (settings, shard list, source position reached) and
`shard-NNNNN.safetensors` holding, for sample j of the shard, `j.latent` `[C, h, w]` and, when
the text encoder is frozen, `j.txt` `[L, D]` and `j.pooled` `[D]`; captions, keys, content
hashes and micro-conditioning are in the shard's metadata. Shards are written atomically and
the index after each one, so an interrupted build resumes where it stopped. Crops are frozen
at caching time. Tombstones are honoured when building and again when reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from flowfactory.checkpoint import atomic_write
from flowfactory.data.sources import DataOptions, Sample, _Decoded, build_source, parse_spec
from flowfactory.errors import UserError

FORMAT = "flowfactory-latent-cache-1"


def _samples(spec: str, opts: DataOptions, start: int) -> Iterator[tuple[int, Sample]]:
    """(source position, sample) for every readable sample of a single source, from `start`."""
    parts = parse_spec(spec)
    if len(parts) != 1 or parts[0][0] == "cache":
        raise UserError("cache one source at a time (folder, webdataset, preferences or shapes with a length)")
    source = build_source(parts[0][0], parts[0][1], opts)
    if hasattr(source, "stream"):
        for pos, s in enumerate(source.stream()):
            if pos >= start:
                yield pos, s
        return
    if source.bucket_of is None and not opts.length:
        raise UserError("the shapes world is endless: give it a length to cache it")
    for pos in range(start, len(source)):
        s = source.sample(pos)
        if s is not None:
            yield pos, s


@torch.no_grad()
def build_cache(spec: str, opts: DataOptions, pipe, out: str | Path, shard_size: int = 256,
                text: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """Encode `spec` through `pipe` (autoencoder; text encoder when `text`) into `out`; resumable."""
    out = Path(out)
    settings = {"format": FORMAT, "data": spec, "model": pipe.cfg.name, "image_size": opts.image_size,
                "buckets": opts.buckets, "seed": opts.seed, "text": text}  # fmt: skip
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    if index and index["settings"] != settings:
        raise UserError(f"{out} holds a cache built with other settings ({index['settings']}): use a new --out")
    index = index or {"settings": settings, "shards": [], "count": 0, "position": 0, "done": False}
    out.mkdir(parents=True, exist_ok=True)
    if text:  # for CFG dropout while training from the cache
        txt, pooled = pipe.encode_text([""])
        empty = {"txt": txt[0].cpu().contiguous(), "pooled": pooled[0].cpu().contiguous()}
        atomic_write(out / "empty_prompt.safetensors", lambda tmp: save_file(empty, tmp))
    device = next(pipe.parameters()).device
    bar = tqdm(desc="cache", initial=index["count"], disable=not progress, unit="img")
    pending: list[tuple[int, Sample]] = []

    def flush() -> None:
        tensors, meta = {}, []
        for j, (_, s) in enumerate(pending):
            z = pipe.encode_images(s.image[None].to(device))[0]
            tensors[f"{j}.latent"] = z.float().cpu().contiguous()
            if text:
                t, p = pipe.encode_text([s.caption])
                tensors[f"{j}.txt"], tensors[f"{j}.pooled"] = t[0].cpu().contiguous(), p[0].cpu().contiguous()
            meta.append({"key": s.key, "caption": s.caption, "micro": list(s.micro), "hash": s.hash})
        name = f"shard-{len(index['shards']):05d}.safetensors"
        atomic_write(out / name, lambda tmp: save_file(tensors, tmp, metadata={"samples": json.dumps(meta)}))
        index["shards"].append({"file": name, "count": len(pending)})
        index["count"] += len(pending)
        index["position"] = pending[-1][0] + 1
        atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
        bar.update(len(pending))
        pending.clear()

    for pos, s in _samples(spec, opts, index["position"]):
        pending.append((pos, s))
        if len(pending) == shard_size:
            flush()
    if pending:
        flush()
    index["done"] = True
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    bar.close()
    return index


class CachedSource(_Decoded):
    """A built cache as a map-style source: buckets are the cached latent sizes."""

    def __init__(self, path: str | Path, opts: DataOptions):
        super().__init__(opts)
        self.root = Path(path)
        index_path = self.root / "index.json"
        if not index_path.exists():
            raise UserError(f"{path} is not a latent cache (no index.json): build it with `flowfactory cache`")
        index = json.loads(index_path.read_text())
        self.settings = index["settings"]
        self.entries: list[tuple[str, int, dict]] = []  # (shard file, j, metadata)
        shapes: list[tuple] = []
        for shard in index["shards"]:
            with safe_open(self.root / shard["file"], "pt") as f:
                meta = json.loads(f.metadata()["samples"])
                for j, m in enumerate(meta):
                    self.entries.append((shard["file"], j, m))
                    shapes.append(tuple(f.get_slice(f"{j}.latent").get_shape()))
        if not self.entries:
            raise UserError(f"latent cache {path} is empty")
        kinds = sorted(set(shapes))
        self.bucket_of = [kinds.index(s) for s in shapes]
        first = {b: i for i, b in reversed(list(enumerate(self.bucket_of)))}
        self.sizes = [tuple(self.entries[first[b]][2]["micro"][4:6]) for b in range(len(kinds))]
        self.empty: tuple[torch.Tensor, torch.Tensor] | None = None
        if (self.root / "empty_prompt.safetensors").exists():
            with safe_open(self.root / "empty_prompt.safetensors", "pt") as f:
                self.empty = (f.get_tensor("txt"), f.get_tensor("pooled"))
        self._open: tuple[str, object] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def bucket_names(self) -> list[str]:
        return [f"{h}x{w}" for h, w in self.sizes]

    def sample(self, i: int) -> Sample | None:
        file, j, m = self.entries[i]
        if self.tombstones.is_deleted(hash=m["hash"] or None, id=m["key"]):
            self.skipped["deleted"] += 1
            return None
        if self._open is None or self._open[0] != file:
            self._open = (file, safe_open(self.root / file, "pt"))
        f = self._open[1]
        names = set(f.keys())
        txt = f.get_tensor(f"{j}.txt") if f"{j}.txt" in names else None
        pooled = f.get_tensor(f"{j}.pooled") if f"{j}.pooled" in names else None
        return Sample(caption=m["caption"], micro=tuple(m["micro"]), key=m["key"], latent=f.get_tensor(f"{j}.latent"),
                      txt=txt, pooled=pooled, hash=m["hash"])  # fmt: skip

