"""Memory of LoRA training against full training: trainable parameters, gradient + AdamW state,
and the peak resident memory of a process that trains a few steps.

Each mode runs in its own subprocess (peak RSS is per process); the same model, data and batch.

    python benchmarks/bench_lora.py --model demo --json benchmarks/results/lora_cpu.json
    python benchmarks/bench_lora.py --model demo-100m --json benchmarks/results/lora_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile

from results_file import add_record  # benchmarks/ (scripts run from their folder)


def train(model: str, rank: int, steps: int, batch: int, size: int) -> dict:
    import torch

    from flowfactory.config import model_config, recipe
    from flowfactory.train.trainer import Trainer

    torch.set_num_threads(1)
    if model == "demo-100m":  # the flux-100m transformer on the demo's autoencoder and embedded text encoder
        base = model_config("demo")
        flux = dataclasses.replace(model_config("flux-100m").flux, in_channels=base.flux.in_channels,
                                   out_channels=base.flux.out_channels, vec_in_dim=base.flux.vec_in_dim,
                                   context_in_dim=base.flux.context_in_dim)  # fmt: skip
        mcfg = dataclasses.replace(base, name="demo-100m", flux=flux)
    else:
        mcfg = model_config(model)
    cfg = dataclasses.replace(recipe("tiny-shapes"), model=mcfg, image_size=size, steps=steps,
                              batch_size=batch, lora_rank=rank, val_every=0, checkpoint_every=10**9, ema_decay=0.0,
                              train_text_encoder=False, dataset_size=0)  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(cfg, d, progress=False)
        for _ in range(steps):
            tr.train_step()
        trainable = sum(p.numel() for p in tr.params)
        total = sum(p.numel() for p in tr.pipe.transformer.parameters())
        state = sum(t.numel() * t.element_size() for s in tr.opt.state.values() for t in s.values() if torch.is_tensor(t))
        grads = sum(p.grad.numel() * p.grad.element_size() for p in tr.params if p.grad is not None)
    return {"lora_rank": rank, "trainable_params": trainable, "transformer_params": total,
            "trainable_fraction": trainable / total, "optimizer_state_bytes": state, "grad_bytes": grads,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(train(args.model, args.child, args.steps, args.batch, args.size)))
        return
    runs = []
    for rank in (0, args.rank):
        cmd = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
               "--size", str(args.size), "--child", str(rank)]  # fmt: skip
        runs.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]))
    full, lora = runs
    rec = {"benchmark": "full vs LoRA training memory", "model": args.model, "date": datetime.date.today().isoformat(),
           "command": f"python benchmarks/bench_lora.py --model {args.model} --rank {args.rank} --steps {args.steps} "
                      f"--batch {args.batch} --size {args.size}",
           "machine": platform.processor() or platform.machine(), "full": full, "lora": lora,
           "adam_state_saving": 1 - lora["optimizer_state_bytes"] / full["optimizer_state_bytes"],
           "peak_rss_saving": 1 - lora["peak_rss_mb"] / full["peak_rss_mb"]}  # fmt: skip
    print(json.dumps(rec, indent=1))
    if args.json:
        add_record(args.json, rec)


if __name__ == "__main__":
    main()
