"""Tiers of one model: `pro` (full model, most steps, true CFG), `dev` (guidance-distilled, one
pass per step), `schnell` (adversarially distilled, 1-4 steps), named in a JSON manifest:

    {"model": "shapes-demo",
     "tiers": {"pro":     {"checkpoint": "shapes-demo.safetensors", "steps": 28, "guidance": 3.0},
               "dev":     {"checkpoint": "shapes-demo-dev.safetensors", "steps": 14, "guidance": 3.0},
               "schnell": {"checkpoint": "shapes-demo-schnell.safetensors", "steps": 4, "guidance": 1.0}}}

Checkpoint paths are relative to the manifest. `generate`, `edit` and the server take
`--tier NAME`; explicit `--steps` / `--guidance` / `--checkpoint` still win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flowfactory.errors import UserError

TIER_NAMES = ("pro", "dev", "schnell")


@dataclass(frozen=True)
class Tier:
    name: str
    checkpoint: Path
    steps: int
    guidance: float


def load_tiers(manifest: str | Path) -> dict[str, Tier]:
    manifest = Path(manifest)
    try:
        data = json.loads(manifest.read_text())
        tiers = data["tiers"]
    except FileNotFoundError:
        raise UserError(f"tier manifest {manifest} does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"tier manifest {manifest} is not valid ({e})") from None
    out = {}
    for name, t in tiers.items():
        try:
            out[name] = Tier(name, manifest.parent / t["checkpoint"], int(t["steps"]), float(t["guidance"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"tier '{name}' in {manifest} needs checkpoint, steps and guidance ({e})") from None
        if out[name].steps < 1:
            raise UserError(f"tier '{name}' in {manifest}: steps must be at least 1")
    return out


def resolve_tier(manifest: str | Path, name: str) -> Tier:
    tiers = load_tiers(manifest)
    if name not in tiers:
        raise UserError(f"no tier '{name}' in {manifest} (it has: {', '.join(tiers)})")
    if not tiers[name].checkpoint.exists():
        raise UserError(f"tier '{name}' names {tiers[name].checkpoint}, which does not exist")
    return tiers[name]


def write_tiers(manifest: str | Path, model: str, tiers: list[Tier]) -> None:
    manifest = Path(manifest)
    data = {"model": model, "tiers": {t.name: {"checkpoint": Path(t.checkpoint).name if Path(t.checkpoint).parent ==
                                               manifest.parent else str(t.checkpoint), "steps": t.steps,
                                               "guidance": t.guidance} for t in tiers}}  # fmt: skip
    manifest.write_text(json.dumps(data, indent=1) + "\n")
