"""Training from a latent cache vs from raw images: same loss, how much faster.

One process builds an image folder (JPEGs of several aspect ratios, like photos), caches it
with `build_cache`, then times training steps of two trainers with the same seed, one reading
raw images (decode, resize, crop, encode) and one reading the cache, in alternation; the
ratio of medians is reported, with the loss difference at every timed step.

    python benchmarks/bench_cache.py --json benchmarks/results/cache_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowfactory.config import recipe
from flowfactory.data.cache import build_cache
from flowfactory.data.sources import DataOptions
from flowfactory.train.trainer import Trainer
from results_file import add_record  # benchmarks/ (scripts run from their folder)


def make_folder(root: Path, n: int, side: int) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    shapes = [(side, side), (side * 3 // 4, side * 4 // 3), (side * 4 // 3, side * 3 // 4)]
    for i in range(n):
        h, w = shapes[i % 3]
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)  # smooth, photo-like content
        im = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        im.save(root / f"{i:05d}.jpg", quality=90)
        (root / f"{i:05d}.txt").write_text(f"photo number {i}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--side", type=int, default=512, help="source image side (pixels)")
    ap.add_argument("--image-size", type=int, default=64, help="training side (bucket area image-size^2)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per trainer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = recipe("shapes-demo")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "imgs", args.images, args.side)
        cfg = dataclasses.replace(base, dataset=f"folder:{tmp / 'imgs'}", buckets=True, batch_size=args.batch_size,
                                  image_size=args.image_size,
                                  val_every=0, sample_every=0, ema_decay=0.0, tombstones=str(tmp / "t.jsonl"))  # fmt: skip
        raw = Trainer(cfg, tmp / "raw", progress=False)
        opts = DataOptions.of(cfg)
        t0 = time.perf_counter()
        build_cache(cfg.dataset, opts, raw.pipe, tmp / "cache", progress=False)
        cache_s = time.perf_counter() - t0
        cached = Trainer(dataclasses.replace(cfg, dataset=f"cache:{tmp / 'cache'}"), tmp / "c", progress=False)
        cached.pipe.load_state_dict(raw.pipe.state_dict(), strict=False)
        cached.opt.load_state_dict(raw.opt.state_dict())
        times = {"raw": [], "cache": []}
        diffs = []
        for step in range(args.steps + 1):
            losses = {}
            for name, tr in (("raw", raw), ("cache", cached)):
                t0 = time.perf_counter()
                losses[name] = tr.train_step()["loss"]
                if step:  # the first step warms up
                    times[name].append(time.perf_counter() - t0)
            diffs.append(abs(losses["raw"] - losses["cache"]) / abs(losses["raw"]))
    raw_s, cache_s_step = statistics.median(times["raw"]), statistics.median(times["cache"])
    rec = {
        "benchmark": "train step from raw images vs from the latent cache (shapes-demo model, buckets on)",
        "command": "python benchmarks/bench_cache.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                  vars(args).items() if k != "json" and v is not None),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}",
        "date": datetime.date.today().isoformat(),
        "images": args.images, "source_side": args.side, "image_size": args.image_size, "batch_size": args.batch_size,
        "median_step_s": {"raw": raw_s, "cache": cache_s_step},
        "speedup": raw_s / cache_s_step,
        "cache_build_s": cache_s,
        "max_rel_loss_diff": max(diffs),
    }  # fmt: skip
    print(json.dumps(rec, indent=1))
    if args.json:
        add_record(args.json, rec)


if __name__ == "__main__":
    main()
