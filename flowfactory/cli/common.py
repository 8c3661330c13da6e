"""What the subcommands share: default checkpoints, device choice, flag groups, recipe overrides."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from flowfactory.errors import UserError

ASSETS = Path(__file__).parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "shapes-demo.safetensors"  # text to image
DEFAULT_EDIT_CHECKPOINT = ASSETS / "shapes-edit.safetensors"  # Kontext editing
DEFAULT_FILL_CHECKPOINT = ASSETS / "shapes-fill.safetensors"  # inpainting / outpainting
DEFAULT_REDUX_CHECKPOINT = ASSETS / "shapes-redux.safetensors"  # image variation
DEFAULT_CONTROL_LORA = ASSETS / "shapes-canny-lora.safetensors"  # edge-map Control-LoRA on the demo model
DEFAULT_TIERS = ASSETS / "tiers.json"  # pro / dev / schnell of the text-to-image model
DEFAULT_EDIT_TIERS = ASSETS / "tiers-edit.json"  # pro / dev / schnell of the edit model


def at_least(lo: int):
    """argparse type: an integer >= `lo`, so that a zero or negative count is a usage error before any work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer '{text}'") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _device_dtype(args):
    import torch

    from flowfactory.train.distributed import resolve_device

    device = resolve_device(args.device)
    return device, (torch.bfloat16 if args.bf16 or device.type == "cuda" else None)


def _train_config(args, cfg):
    """A recipe's config with the command line's overrides (shared by train and cache)."""
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "cooldown", "precision", "parallel",
                                              "grad_accum", "image_size", "seed", "tombstones", "lora_rank",
                                              "lora_targets", "data_workers", "checkpoint_every", "ema_decay")
                 if getattr(args, k, None) is not None}  # fmt: skip
    if getattr(args, "data", None):
        overrides["dataset"] = args.data
    if getattr(args, "buckets", False):
        overrides["buckets"] = True
    if getattr(args, "compile", False):
        overrides["compile"] = True
    return dataclasses.replace(cfg, **overrides)


def _init_pipeline(cfg, autoencoder: str | None):
    from flowfactory.pipeline import Pipeline

    if cfg.model.ae is not None and not autoencoder:
        raise UserError(f"model '{cfg.model.name}' trains on latents: pass --autoencoder (a train-ae checkpoint)")
    return Pipeline.with_trained_autoencoder(cfg.model, autoencoder, seed=cfg.seed) if autoencoder else None


def _generation_args(g) -> None:
    """The flags generate, edit, fill and vary share."""
    from flowfactory.config import MODELS
    from flowfactory.flow.sampling import SOLVERS

    g.add_argument("-o", "--output", default="out.png", help="PNG to write (a grid when --num-images > 1)")
    g.add_argument("--checkpoint", help="flowfactory or reference transformer file (default: the shipped demo model "
                   "for the command)")
    g.add_argument("--model", help=f"config of a bare reference checkpoint: {', '.join(MODELS)}")
    g.add_argument("--autoencoder", help="autoencoder file for a bare transformer checkpoint (e.g. ae.safetensors)")
    g.add_argument("--t5", help="local T5 encoder directory (FLUX.1 models)")
    g.add_argument("--clip", help="local CLIP text model directory (FLUX.1 models)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (image i uses seed + i)")
    g.add_argument("--lora", help="a LoRA file (from training with --lora-rank) to apply to the model")
    g.add_argument("--tier", choices=["pro", "dev", "schnell"],
                   help="a tier of the model (its checkpoint, steps, guidance)")
    g.add_argument("--tiers", help="tier manifest (default: the shipped model's, tiers.json or tiers-edit.json)")
    g.add_argument("--steps", type=at_least(1), help="solver steps (default: the tier's, else 28)")
    g.add_argument("--guidance", type=float,
                   help="guidance scale: embedded for guidance-distilled models, true CFG otherwise (1 = off; "
                   "default: the tier's, else 3.5)")
    g.add_argument("--solver", choices=list(SOLVERS), default="euler", help="ODE solver")
    g.add_argument("--size", type=int, help="square image side (default: the model's training resolution)")
    g.add_argument("--height", type=int, help="image height (overrides --size)")
    g.add_argument("--width", type=int, help="image width (overrides --size)")
    g.add_argument("--num-images", type=at_least(1), default=1, help="images for the prompt, saved as one grid")
    g.add_argument("--device", default="cpu", help="cpu or cuda (cuda runs in bf16)")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast on the CPU too (only CPUs with AVX512-BF16 or AMX run it fast)")
    g.add_argument("--json", action="store_true", help="print a JSON record (prompt, seed, steps, guidance, timings)")


def ema_decay(text: str) -> float:
    """argparse type: an EMA decay in [0, 1) (0: no EMA, the exported model is the trained weights)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number '{text}'") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _ema_arg(p) -> None:
    p.add_argument("--ema-decay", type=ema_decay, help="override: decay of the exported weights' moving average "
                   "(0: export the trained weights themselves)")


def _lora_args(p) -> None:
    p.add_argument("--lora-rank", type=at_least(1), help="train LoRA adapters of this rank on the frozen transformer")
    p.add_argument("--lora-targets", help="adapted layers: attention, all-linear, or a regex of layer names")


def _data_args(p) -> None:
    p.add_argument("--data", help="override: data spec (shapes, folder:DIR, webdataset:URLS, preferences:FILE, "
                   "cache:DIR, or a mixture A@0.7+B@0.3)")
    p.add_argument("--buckets", action="store_true", help="aspect-ratio buckets at the training pixel count")
    p.add_argument("--tombstones", help="deletion list honoured by every source (default: the user's list)")
    p.add_argument("--data-workers", type=at_least(0), help="worker processes that make the coming batches while "
                   "the model trains (map-style data; default 0: in the training process)")


def _run_args(p) -> None:
    """The flags of a training run: output, the usual overrides, data, LoRA, resume, device."""
    p.add_argument("--out", required=True, help="run directory (resumes from it)")
    p.add_argument("--steps", type=at_least(1), help="override: optimizer steps")
    p.add_argument("--batch-size", type=at_least(1), help="override: global batch size")
    p.add_argument("--lr", type=positive_float, help="override: peak learning rate")
    p.add_argument("--cooldown", type=at_least(0), help="override: linear decay to 0 over the last N steps")
    p.add_argument("--checkpoint-every", type=at_least(1), help="override: steps between checkpoints and saved states")
    p.add_argument("--seed", type=int, help="override: seed of data, teacher noise and timesteps (another seed: "
                   "other samples, e.g. to continue from a finished student)")
    _ema_arg(p)
    _data_args(p)
    _lora_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a state")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="no progress bar; print the final metrics as JSON")
