"""Benchmark records: one JSON file per benchmark holds every configuration measured."""

from __future__ import annotations

import json
from pathlib import Path


def add_record(path: str | Path, rec: dict) -> None:
    """Append `rec`, replacing an earlier record of the same command."""
    path = Path(path)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs = [r for r in (runs if isinstance(runs, list) else [runs]) if r.get("command") != rec["command"]]
    path.write_text(json.dumps(runs + [rec], indent=1) + "\n")
