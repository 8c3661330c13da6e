"""Metrics to `metrics.jsonl` (always) and TensorBoard (when installed), from rank 0 only."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, out: Path, enabled: bool = True):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled:
            out.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tb"))
            except ImportError:  # optional: metrics.jsonl has everything
                pass

    def log(self, metrics: dict) -> None:
        """One JSON line; numbers also go to TensorBoard (histograms and other structures only to the file)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
