"""Image commands: generate (text, control), edit (Kontext), vary (Redux), fill (in/outpainting)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flowfactory.cli.common import (DEFAULT_CHECKPOINT, DEFAULT_EDIT_CHECKPOINT, DEFAULT_EDIT_TIERS,
                                    DEFAULT_FILL_CHECKPOINT, DEFAULT_CONTROL_LORA, DEFAULT_REDUX_CHECKPOINT,
                                    DEFAULT_TIERS, _device_dtype, _generation_args)  # fmt: skip
from flowfactory.errors import UserError


def _generate(args, default_ckpt: Path, prompt: str, condition=None, size_hint: tuple[int, int] | None = None,
              allow_empty: bool = False, default_lora: Path | None = None,
              default_tiers: Path | None = None) -> None:  # fmt: skip
    """Shared by generate / edit / fill / vary: load, condition, sample, save, report.

    `default_lora` (the shipped Control-LoRA for `--control`) applies when neither `--checkpoint`
    nor `--lora` is given.
    `condition(pipe, height, width) -> Conditioning` builds the image conditioning for the output size;
    `size_hint` is the default output (height, width) (the input image's, for editing);
    `default_tiers` the manifest `--tier` reads when no `--tiers` is given (None: the command has none).
    """
    from flowfactory.images import check_output_path, save_grid, save_image
    from flowfactory.pipeline import Pipeline

    if not prompt.strip() and not allow_empty:
        raise UserError("empty prompt: describe the image to generate")
    out = check_output_path(args.output)
    steps = 28 if args.steps is None else args.steps
    guidance = 3.5 if args.guidance is None else args.guidance
    if args.tier:
        from flowfactory.tiers import resolve_tier

        if not args.tiers and default_tiers is None:
            raise UserError("no tiers are shipped for this command: pass --tiers FILE")
        tier = resolve_tier(args.tiers or default_tiers, args.tier)
        default_ckpt, steps = tier.checkpoint, tier.steps if args.steps is None else args.steps
        guidance = tier.guidance if args.guidance is None else args.guidance
    ckpt = Path(args.checkpoint) if args.checkpoint else default_ckpt
    lora = args.lora or (default_lora if not args.checkpoint and not args.tier else None)
    if not ckpt.exists() and not args.checkpoint:
        raise UserError(f"no model shipped at {ckpt}: pass --checkpoint")
    device, autocast = _device_dtype(args)
    t0 = time.perf_counter()
    dirs = (args.t5, args.clip) if args.t5 or args.clip else None
    pipe = Pipeline.from_checkpoint(ckpt, model=args.model, text_encoder_dirs=dirs, autoencoder_path=args.autoencoder)
    if lora:  # adapters onto the checkpoint's transformer (a clear error for another base)
        pipe = pipe.with_lora(lora)
    pipe.to(device)
    load_s = time.perf_counter() - t0
    size = args.size or pipe.cfg.resolution
    height, width = args.height or size, args.width or size
    if size_hint and not (args.size or args.height or args.width):
        height, width = (max(pipe.cfg.stride, d // pipe.cfg.stride * pipe.cfg.stride) for d in size_hint)
    cond = condition(pipe, height, width).repeat(args.num_images) if condition else None
    images, timings = pipe.generate([prompt] * args.num_images, height, width, steps=steps, guidance=guidance,
                                    seed=args.seed, solver=args.solver, autocast=autocast, cond=cond)  # fmt: skip
    if args.num_images == 1:
        save_image(images[0], out)
    else:
        save_grid(images, out)
    record = {
        "prompt": prompt, "seed": args.seed, "steps": steps, "guidance": guidance, "tier": args.tier,
        "height": height, "width": width, "solver": args.solver, "checkpoint": str(ckpt), "output": str(out),
        "device": str(device), "timings": {"load_s": load_s, **timings},
    }  # fmt: skip
    if args.json:
        print(json.dumps(record))
    else:
        print(f"wrote {out} ({height}x{width}, {steps} steps, {sum(timings.values()):.2f} s)")


def _image_for(pipe, path: str, size: tuple[int, int] | None = None):
    """An input image as a batch of one, at `size` or at its own size rounded down to the model's stride."""
    from flowfactory.images import load_image

    img = load_image(path)
    if size is None:
        s = pipe.cfg.stride
        size = tuple(max(s, d // s * s) for d in img.shape[1:])
    if tuple(img.shape[1:]) != tuple(size):
        img = load_image(path, size)
    return img[None]


def _image_size(path: str) -> tuple[int, int]:
    from flowfactory.images import load_image

    return tuple(load_image(path).shape[1:])


def cmd_generate(args) -> None:
    if args.control:
        _image_size(args.control)  # a clear error for an unreadable file before loading the model

    def control(pipe, h, w):
        return pipe.control_condition(_image_for(pipe, args.control, (h, w)))

    _generate(args, DEFAULT_CHECKPOINT, args.prompt, control if args.control else None,
              default_lora=DEFAULT_CONTROL_LORA if args.control else None,
              default_tiers=None if args.control else DEFAULT_TIERS)  # fmt: skip


def cmd_edit(args) -> None:
    source = _image_size(args.image)
    for r in args.ref or []:
        _image_size(r)

    def condition(pipe, h, w):
        return pipe.context([_image_for(pipe, p) for p in [args.image, *(args.ref or [])]])

    _generate(args, DEFAULT_EDIT_CHECKPOINT, args.instruction, condition, size_hint=source,
              default_tiers=DEFAULT_EDIT_TIERS)


def cmd_vary(args) -> None:
    source = _image_size(args.image)

    def condition(pipe, h, w):
        return pipe.variation_condition(_image_for(pipe, args.image))

    _generate(args, DEFAULT_REDUX_CHECKPOINT, args.prompt, condition, size_hint=source, allow_empty=True)


def cmd_fill(args) -> None:
    import torch

    from flowfactory.images import load_image

    source = _image_size(args.image)
    mask_size = _image_size(args.mask)
    if mask_size != source:
        raise UserError(f"the mask is {mask_size[1]}x{mask_size[0]} but the image is {source[1]}x{source[0]}: "
                        "they must have the same size")  # fmt: skip
    left, top, right, bottom = args.expand
    if min(args.expand) < 0:
        raise UserError("--expand takes four non-negative pixel counts: LEFT TOP RIGHT BOTTOM")
    padded = (source[0] + top + bottom, source[1] + left + right)

    def condition(pipe, h, w):
        img = load_image(args.image)[None]
        mask = (load_image(args.mask)[None].mean(1, keepdim=True) + 1) / 2  # white = repaint
        if any(args.expand):  # outpainting: the new border is masked
            img = torch.nn.functional.pad(img, (left, right, top, bottom), value=0.0)
            mask = torch.nn.functional.pad(mask, (left, right, top, bottom), value=1.0)
        img = torch.nn.functional.interpolate(img, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
        mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="nearest")
        return pipe.fill_condition(img, mask)

    _generate(args, DEFAULT_FILL_CHECKPOINT, args.prompt, condition, size_hint=padded)


def register(sub) -> None:
    g = sub.add_parser("generate", help="text to image (with --control: structure from an image)")
    g.add_argument("prompt", help="what to draw")
    _generation_args(g)
    g.add_argument("--control", help="control image (edge / depth map) for a control model")
    g.set_defaults(func=cmd_generate)

    ed = sub.add_parser("edit", help="edit an image from an instruction (Kontext), with optional references")
    ed.add_argument("image", help="the image to edit")
    ed.add_argument("instruction", help='what to change, e.g. "make the circle blue"')
    ed.add_argument("--ref", action="append", help="a reference image (style, character); repeatable")
    _generation_args(ed)
    ed.set_defaults(func=cmd_edit)

    va = sub.add_parser("vary", help="variations of an image (Redux): its tokens join the text stream")
    va.add_argument("image", help="the image to make variations of")
    va.add_argument("--prompt", default="", help="optional text to steer the variation")
    _generation_args(va)
    va.set_defaults(func=cmd_vary)

    fi = sub.add_parser("fill", help="inpaint (white mask pixels are repainted) or outpaint (--expand)")
    fi.add_argument("image", help="the image")
    fi.add_argument("mask", help="mask image of the same size: white = repaint, black = keep")
    fi.add_argument("prompt", help="what the repainted region should show")
    fi.add_argument("--expand", type=int, nargs=4, default=[0, 0, 0, 0], metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                    help="outpainting: pixels to add on each side (masked)")
    _generation_args(fi)
    fi.set_defaults(func=cmd_fill)
