"""The one entry point: `flowfactory SUBCOMMAND --help` explains every option.

    flowfactory generate "a red circle" -o out.png
    flowfactory train --recipe tiny-shapes --out runs/tiny
    flowfactory train-ae --model demo --out runs/ae
    flowfactory curate photos --out photos/curated.jsonl
    flowfactory cache --recipe R --data folder:photos --out cache/photos
    flowfactory data delete photos/cat.jpg
    flowfactory convert IN OUT --to diffusers|reference --component transformer|autoencoder
    flowfactory info --model flux1-dev --resolution 1024

User errors print one line (`error: ...`) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from flowfactory.cli import generate, serve, tools, train
from flowfactory.cli.common import (DEFAULT_CHECKPOINT, DEFAULT_EDIT_CHECKPOINT, DEFAULT_FILL_CHECKPOINT,
                                    DEFAULT_REDUX_CHECKPOINT)  # fmt: skip
from flowfactory.errors import UserError

__all__ = ["main", "build_parser", "DEFAULT_CHECKPOINT", "DEFAULT_EDIT_CHECKPOINT", "DEFAULT_FILL_CHECKPOINT",
           "DEFAULT_REDUX_CHECKPOINT"]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowfactory", description="Train, evaluate and serve FLUX-family flow models.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (generate, train, serve, tools):
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
