"""geneval-mini of a checkpoint sampled on a schedule with an explicit time shift `mu` (FLUX.1's shift
`t' = e^mu / (e^mu + 1/t - 1)`; at 16 image tokens the model's own is mu = 0.46), to see whether a few-step
sampler gains from spending its steps at higher noise.

    python benchmarks/probe_schedule.py --checkpoint flowfactory/assets/shapes-demo-dev.safetensors \\
        --mu 1.15 --steps 4 --seed 0 --out runs/shift/dev-mu1.15
"""

from __future__ import annotations

import argparse
import dataclasses

from flowfactory.eval.run import run_geneval
from flowfactory.flow.sampling import get_schedule
from flowfactory.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--mu", type=float, required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pipe = Pipeline.from_checkpoint(args.checkpoint)
    pipe.cfg = dataclasses.replace(pipe.cfg, schedule_shift=True, schedule_mu=args.mu)
    print("schedule", [round(v, 3) for v in get_schedule(args.steps, 16, mu=args.mu)])
    record = run_geneval(pipe, args.out, steps=args.steps, guidance=args.guidance, seed=args.seed, progress=False)
    print({split: round(v["overall"], 3) for split, v in record["summary"].items()})


if __name__ == "__main__":
    main()
