"""Training step and sampling step: flowfactory's transformer vs diffusers' FluxTransformer2DModel.

Same config, same weights (converted), same inputs, same precision, same process; the
two are timed in alternation and the ratio of medians is reported (absolute times on a
shared CPU mean little).

    python benchmarks/bench_transformer.py --json benchmarks/results/transformer_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch
from diffusers import FluxTransformer2DModel

from flowfactory.models.convert import flux_to_diffusers
from flowfactory.models.flux import Flux, FluxParams
from flowfactory.pipeline import image_ids


def build(p: FluxParams):
    ours = Flux(p)
    with torch.no_grad():
        for prm in ours.parameters():
            prm.normal_(0, 0.02)
    theirs = FluxTransformer2DModel(
        patch_size=1, in_channels=p.in_channels, out_channels=p.out_channels, num_layers=p.depth,
        num_single_layers=p.depth_single_blocks, attention_head_dim=p.hidden_size // p.num_heads,
        num_attention_heads=p.num_heads, joint_attention_dim=p.context_in_dim, pooled_projection_dim=p.vec_in_dim,
        guidance_embeds=p.guidance_embed, axes_dims_rope=tuple(p.axes_dim),
    )  # fmt: skip
    theirs.load_state_dict(flux_to_diffusers(ours.state_dict()), strict=True)
    return ours, theirs


def inputs(p: FluxParams, b: int, side: int, n_txt: int):
    return dict(img=torch.randn(b, side * side, p.in_channels), img_ids=image_ids(b, side, side),
                txt=torch.randn(b, n_txt, p.context_in_dim), txt_ids=torch.zeros(b, n_txt, 3),
                timesteps=torch.rand(b), y=torch.randn(b, p.vec_in_dim))  # fmt: skip


def call_ours(m, x):
    return m(**x)


def call_theirs(m, x):
    return m(hidden_states=x["img"], encoder_hidden_states=x["txt"], pooled_projections=x["y"], timestep=x["timesteps"],
             img_ids=x["img_ids"][0], txt_ids=x["txt_ids"][0], return_dict=False)[0]  # fmt: skip


def step_fn(model, call, x, train: bool, dtype):
    def run():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            if train:
                out = call(model, x)
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    call(model, x)

    return run


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def compare(a, b, rounds: int, per_round: int) -> dict:
    for f in (a, b):  # warm-up
        f()
        f()
    ta, tb = [], []
    for _ in range(rounds):  # alternate so drifts in machine load hit both
        ta += timed(a, per_round)
        tb += timed(b, per_round)
    ma, mb = statistics.median(ta), statistics.median(tb)
    return {"ours_median_s": ma, "diffusers_median_s": mb, "speedup": mb / ma}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--side", type=int, default=16, help="image tokens per side")
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16 autocast is only fast on CPUs with AVX512-BF16 / AMX")
    ap.add_argument("--compile", action="store_true", help="torch.compile the blocks of both models")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    torch.manual_seed(0)
    head = args.hidden // args.heads
    axes = [head - 2 * (head * 7 // 16), head * 7 // 16, head * 7 // 16]
    p = FluxParams(in_channels=64, out_channels=64, vec_in_dim=128, context_in_dim=256, hidden_size=args.hidden,
                   num_heads=args.heads, depth=args.depth, depth_single_blocks=args.single, axes_dim=axes,
                   guidance_embed=False)  # fmt: skip
    ours, theirs = build(p)
    if args.compile:
        for b in [*ours.double_blocks, *ours.single_blocks, *theirs.transformer_blocks, *theirs.single_transformer_blocks]:
            b.compile()
    x = inputs(p, args.batch, args.side, args.text_tokens)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    results = {}
    for kind, train in (("train_step", True), ("sampling_step", False)):
        r = compare(step_fn(ours, call_ours, x, train, dtype), step_fn(theirs, call_theirs, x, train, dtype),
                    args.rounds, args.per_round)  # fmt: skip
        results[kind] = r
        print(f"{kind:14s} {args.precision}{' compiled' if args.compile else ''}: ours {r['ours_median_s'] * 1e3:8.2f} ms"
              f"  diffusers {r['diffusers_median_s'] * 1e3:8.2f} ms  speedup {r['speedup']:.2f}x", flush=True)  # fmt: skip
    record = {
        "benchmark": "transformer train/sampling step, flowfactory vs diffusers FluxTransformer2DModel",
        "command": "python benchmarks/bench_transformer.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
            if k != "json" and v is not False),
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()} ({platform.machine()}), {torch.get_num_threads()} threads",
        "device": "cpu",
        "torch": torch.__version__,
        "config": {**vars(args), "axes_dim": axes},
        "results": results,
    }  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
