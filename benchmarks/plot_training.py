"""Plot a run's training curve (loss and validation loss against steps) from metrics.jsonl.

    python benchmarks/plot_training.py runs/demo/metrics.jsonl benchmarks/results/shapes-demo-curve.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flowfactory.train.logs import read_metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("metrics", help="metrics.jsonl of a run")
    ap.add_argument("output", help="PNG to write")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    rows = read_metrics(args.metrics)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="training loss (batch)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (8 fixed t, held-out set)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(args.title)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)


if __name__ == "__main__":
    main()
