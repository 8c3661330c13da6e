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
import dataclasses
import json
import sys
import time
from pathlib import Path

from flowfactory.errors import UserError

ASSETS = Path(__file__).parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "shapes-demo.safetensors"  # text to image
DEFAULT_EDIT_CHECKPOINT = ASSETS / "shapes-edit.safetensors"  # Kontext editing
DEFAULT_FILL_CHECKPOINT = ASSETS / "shapes-fill.safetensors"  # inpainting / outpainting
DEFAULT_REDUX_CHECKPOINT = ASSETS / "shapes-redux.safetensors"  # image variation


def _device_dtype(args):
    import torch

    from flowfactory.train.distributed import resolve_device

    device = resolve_device(args.device)
    return device, (torch.bfloat16 if args.bf16 or device.type == "cuda" else None)


def _generate(args, default_ckpt: Path, prompt: str, condition=None, size_hint: tuple[int, int] | None = None,
              allow_empty: bool = False) -> None:  # fmt: skip
    """Shared by generate / edit / fill / vary: load, condition, sample, save, report.

    `condition(pipe, height, width) -> Conditioning` builds the image conditioning for the output size;
    `size_hint` is the default output (height, width) (the input image's, for editing).
    """
    from flowfactory.images import save_grid, save_image
    from flowfactory.pipeline import Pipeline

    if not prompt.strip() and not allow_empty:
        raise UserError("empty prompt: describe the image to generate")
    steps, guidance = args.steps or 28, 3.5 if args.guidance is None else args.guidance
    if args.tier:
        from flowfactory.tiers import resolve_tier

        tier = resolve_tier(args.tiers or default_ckpt.parent / "tiers.json", args.tier)
        default_ckpt, steps = tier.checkpoint, args.steps or tier.steps
        guidance = tier.guidance if args.guidance is None else args.guidance
    ckpt = Path(args.checkpoint) if args.checkpoint else default_ckpt
    if not ckpt.exists() and not args.checkpoint:
        raise UserError(f"no model shipped at {ckpt}: pass --checkpoint")
    device, autocast = _device_dtype(args)
    t0 = time.perf_counter()
    dirs = (args.t5, args.clip) if args.t5 or args.clip else None
    pipe = Pipeline.from_checkpoint(ckpt, model=args.model, text_encoder_dirs=dirs, autoencoder_path=args.autoencoder)
    if args.lora:  # adapters onto the checkpoint's transformer (a clear error for another base)
        from flowfactory.models.lora import load_lora

        load_lora(pipe.transformer, args.lora, pipe.cfg.name)
    pipe.to(device)
    load_s = time.perf_counter() - t0
    size = args.size or pipe.cfg.resolution
    height, width = args.height or size, args.width or size
    if size_hint and not (args.size or args.height or args.width):
        height, width = (max(pipe.cfg.stride, d // pipe.cfg.stride * pipe.cfg.stride) for d in size_hint)
    cond = condition(pipe, height, width).repeat(args.num_images) if condition else None
    images, timings = pipe.generate([prompt] * args.num_images, height, width, steps=steps, guidance=guidance,
                                    seed=args.seed, solver=args.solver, autocast=autocast, cond=cond)  # fmt: skip
    out = Path(args.output)
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

    _generate(args, DEFAULT_CHECKPOINT, args.prompt, control if args.control else None)


def cmd_edit(args) -> None:
    source = _image_size(args.image)
    for r in args.ref or []:
        _image_size(r)

    def condition(pipe, h, w):
        return pipe.context([_image_for(pipe, p) for p in [args.image, *(args.ref or [])]])

    _generate(args, DEFAULT_EDIT_CHECKPOINT, args.instruction, condition, size_hint=source)


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


def _train_config(args, cfg):
    """A recipe's config with the command line's overrides (shared by train and cache)."""
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "cooldown", "precision", "parallel",
                                              "grad_accum", "image_size", "seed", "tombstones", "lora_rank",
                                              "lora_targets")
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


def cmd_train(args) -> None:
    from flowfactory.config import recipe_stages
    from flowfactory.pipeline import Pipeline
    from flowfactory.train.trainer import Trainer

    stages = recipe_stages(args.recipe)
    previous = None  # the last stage's exported model starts the next
    for name, cfg in stages:
        cfg = _train_config(args, cfg)
        out = Path(args.out) / name if name else Path(args.out)
        start = previous or (Path(args.init) if args.init else None)
        if start is not None:
            init = Pipeline.from_checkpoint(start)
            if cfg.model.channel_cond and not init.cfg.channel_cond:  # a text-to-image model becomes fill / control
                init = init.widened(cfg.model.channel_cond)
            if init.cfg.name != cfg.model.name:
                raise UserError(f"recipe trains model '{cfg.model.name}' but {start} holds '{init.cfg.name}'")
        else:
            init = _init_pipeline(cfg, args.autoencoder)
        if init is not None:
            cfg = dataclasses.replace(cfg, model=init.cfg)
        trainer = Trainer(cfg, out, device=args.device, resume=not args.no_resume, progress=not args.json, init=init)
        metrics = trainer.fit()
        previous = out / "checkpoints" / f"step_{trainer.step:07d}.safetensors"
        if trainer.env.is_main:
            label = f"stage '{name}' " if name else ""
            print(json.dumps({"stage": name, **metrics}) if args.json else f"{label}done: step {trainer.step}, {metrics}")


def cmd_distill(args) -> None:
    from flowfactory.config import recipe
    from flowfactory.pipeline import Pipeline
    from flowfactory.train.distill import GuidanceDistiller, LADDTrainer

    teacher = Pipeline.from_checkpoint(args.teacher)
    cfg = _train_config(args, recipe(args.recipe))
    if getattr(args, "guidance_range", None):
        lo, hi = args.guidance_range
        if not 0 < lo <= hi:
            raise UserError(f"--guidance-range needs 0 < MIN <= MAX, got {lo} {hi}")
        cfg = dataclasses.replace(cfg, guidance_min=lo, guidance_max=hi)
    if args.method == "ladd":
        if teacher.cfg.micro_cond or teacher.cfg.channel_cond:
            raise UserError(f"LADD distils plain text-to-image models; '{teacher.cfg.name}' takes image conditioning")
        trainer = LADDTrainer(cfg, args.out, teacher, device=args.device, resume=not args.no_resume,
                              progress=not args.json)  # fmt: skip
    else:
        trainer = GuidanceDistiller(cfg, args.out, teacher, device=args.device, resume=not args.no_resume,
                                    progress=not args.json)  # fmt: skip
    metrics = trainer.fit()
    if trainer.env.is_main:
        print(json.dumps(metrics) if args.json else f"done: step {trainer.step}, {metrics}")


def cmd_align(args) -> None:
    from flowfactory.config import recipe
    from flowfactory.pipeline import Pipeline
    from flowfactory.train import preference

    if args.method == "judge":
        device, _ = _device_dtype(args)
        pipe = Pipeline.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT).to(device)
        stats = preference.judge_pairs(pipe, args.out, args.prompts, args.samples, args.steps, args.guidance,
                                       args.seed, progress=not args.json)  # fmt: skip
        print(json.dumps(stats) if args.json else f"{stats['pairs']} pairs from {stats['prompts']} prompts -> "
              f"{args.out}/pairs.jsonl; pass rates {stats['pass_rate_by_task']}")  # fmt: skip
        return
    if not Path(args.pairs).is_file():
        raise UserError(f"preference file {args.pairs} does not exist")
    init = Pipeline.from_checkpoint(args.init or DEFAULT_CHECKPOINT)
    cfg = dataclasses.replace(_train_config(args, recipe(args.recipe)), dataset=f"preferences:{args.pairs}")
    trainer = preference.DPOTrainer(cfg, args.out, init, beta=args.beta, device=args.device, resume=not args.no_resume,
                                    progress=not args.json)  # fmt: skip
    metrics = trainer.fit()
    if trainer.env.is_main:
        print(json.dumps(metrics) if args.json else f"done: step {trainer.step}, {metrics}")


def _serve_config(args):
    from flowfactory.serve.app import ServeConfig

    return ServeConfig(db=str(Path(args.dir) / "jobs.sqlite"), results=str(Path(args.dir) / "results"),
                       **{k: getattr(args, k) for k in ("workers", "batch_size", "max_queue", "rate_limit", "ttl_s",
                                                        "max_body_bytes") if getattr(args, k, None) is not None},
                       tombstones=getattr(args, "tombstones", None) or "")  # fmt: skip


def cmd_keys(args) -> None:
    from flowfactory.serve.store import SQLiteJobStore

    cfg = _serve_config(args)
    kid, key = SQLiteJobStore(cfg.db).create_key(args.name or "")
    print(json.dumps({"id": kid, "key": key, "name": args.name}) if args.json else key)


def cmd_serve(args) -> None:
    import uvicorn

    from flowfactory.serve.app import create_app
    from flowfactory.serve.guard import Moderator
    from flowfactory.serve.worker import ModelSet

    models = ModelSet.shipped(ASSETS, args.device)
    if args.models:
        try:
            spec = json.loads(Path(args.models).read_text())
            models = ModelSet({k: {t: tuple(v) for t, v in tiers.items()} for k, tiers in spec.items()}, args.device)
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise UserError(f"cannot read the model map {args.models}: {e}") from None
    app = create_app(_serve_config(args), models, Moderator.from_files(args.terms, args.image_classifier))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def cmd_feedback(args) -> None:
    from flowfactory.data.tombstones import Tombstones
    from flowfactory.serve.feedback import export_feedback
    from flowfactory.serve.store import SQLiteJobStore

    cfg = _serve_config(args)
    if not Path(cfg.db).exists():
        raise UserError(f"no server data in {args.dir}")
    stats = export_feedback(SQLiteJobStore(cfg.db), cfg.results, args.out, Tombstones(args.tombstones))
    print(json.dumps(stats) if args.json else f"{stats['pairs']} preference pairs, {stats['jobs']} usage records -> {args.out}")


def cmd_cache(args) -> None:
    from flowfactory.config import recipe
    from flowfactory.data.cache import build_cache
    from flowfactory.data.sources import DataOptions
    from flowfactory.models.text import EmbeddedTextParams
    from flowfactory.pipeline import Pipeline

    cfg = _train_config(args, recipe(args.recipe))
    pipe = _init_pipeline(cfg, args.autoencoder) or Pipeline.from_config(cfg.model, seed=cfg.seed)
    pipe.eval()
    frozen_text = not (cfg.train_text_encoder and isinstance(cfg.model.text, EmbeddedTextParams))
    opts = DataOptions.of(cfg)
    index = build_cache(cfg.dataset, opts, pipe, args.out, args.shard_size, text=frozen_text, progress=not args.json)
    summary = {"out": args.out, "samples": index["count"], "shards": len(index["shards"]), "text": frozen_text}
    print(json.dumps(summary) if args.json else f"cached {index['count']} samples in {len(index['shards'])} shards to {args.out}")


def cmd_curate(args) -> None:
    from flowfactory.data.curate import CurateOptions, curate

    opts = CurateOptions(min_side=args.min_side, max_aspect=args.max_aspect, min_words=args.min_words,
                         max_words=args.max_words, phash_distance=args.phash_distance, scorer=args.scorer or "",
                         min_score=args.min_score, tombstones=args.tombstones or "")  # fmt: skip
    report = curate(args.folder, args.out, opts, progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "dropped"}))
    else:
        print(f"kept {report['kept']} of {report['total']} -> {args.out}; dropped: {report['dropped_by_reason']}"
              f" (details in {args.out}.report.json)")  # fmt: skip


def cmd_data_delete(args) -> None:
    from flowfactory.data.tombstones import Tombstones, content_hash

    hashes = list(args.hash or [])
    for f in args.files:
        try:
            hashes.append(content_hash(Path(f).read_bytes()))
        except OSError as e:
            raise UserError(f"cannot read {f}: {e}") from None
    if not hashes and not args.id:
        raise UserError("nothing to delete: give FILES, --hash or --id")
    tomb = Tombstones(args.tombstones)
    n = tomb.add(hashes, args.id or [], args.reason)
    print(json.dumps({"added": n, "tombstones": str(tomb.path)}) if args.json else f"added {n} tombstones to {tomb.path}")


def cmd_train_ae(args) -> None:
    from flowfactory.config import model_config
    from flowfactory.train.autoencoder import AETrainConfig, train_autoencoder

    cfg = AETrainConfig(model=model_config(args.model), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        image_size=args.image_size, kl_weight=args.kl_weight, gan_weight=args.gan_weight,
                        gan_start=args.gan_start, seed=args.seed)  # fmt: skip
    path = train_autoencoder(cfg, args.out, device=args.device, progress=not args.json)
    print(json.dumps({"checkpoint": str(path)}) if args.json else f"wrote {path}")


def cmd_convert(args) -> None:
    from safetensors.torch import save_file

    from flowfactory.checkpoint import atomic_write, load_checkpoint
    from flowfactory.models import convert as C

    _, comps = load_checkpoint(args.input)
    component = args.component
    sd = comps.get(component) or comps.get("bare")
    if sd is None:
        raise UserError(f"{args.input} has no {component} component (it has: {', '.join(comps)})")
    fn = {
        ("transformer", "diffusers"): C.flux_to_diffusers,
        ("transformer", "reference"): C.flux_from_diffusers,
        ("autoencoder", "diffusers"): C.ae_to_diffusers,
        ("autoencoder", "reference"): C.ae_from_diffusers,
    }[(component, args.to)]
    try:
        out = fn(sd)
    except C.ConversionError as e:
        raise UserError(f"{args.input}: {e}") from None
    atomic_write(args.output, lambda tmp: save_file({k: v.contiguous() for k, v in out.items()}, tmp))
    msg = {"input": args.input, "output": args.output, "tensors": len(out), "layout": args.to}
    print(json.dumps(msg) if args.json else f"wrote {args.output} ({len(out)} tensors, {args.to} layout)")


def cmd_info(args) -> None:
    import torch

    from flowfactory.config import model_config
    from flowfactory.models.flux import Flux, count_params, forward_flops

    cfg = model_config(args.model)
    if args.resolution % cfg.stride:
        raise UserError(f"resolution {args.resolution} is not a multiple of the model's stride {cfg.stride}")
    with torch.device("meta"):
        n = count_params(Flux(cfg.flux))
    n_img = (args.resolution // cfg.stride) ** 2
    n_txt = args.text_tokens if args.text_tokens is not None else cfg.text.max_len
    flops = forward_flops(cfg.flux, n_img, n_txt)
    info = {"model": cfg.name, "parameters": n, "resolution": args.resolution, "image_tokens": n_img,
            "text_tokens": n_txt, "forward_flops": flops, "guidance_embed": cfg.flux.guidance_embed,
            "flux_params": dataclasses.asdict(cfg.flux)}  # fmt: skip
    if args.json:
        print(json.dumps(info))
        return
    print(f"{cfg.name}: {n / 1e6:,.2f}M transformer parameters, guidance embedding: {cfg.flux.guidance_embed}")
    amount = f"{flops / 1e12:,.1f} TFLOP" if flops >= 1e12 else f"{flops / 1e9:,.2f} GFLOP"
    print(f"forward at {args.resolution}x{args.resolution} ({n_img} image + {n_txt} text tokens): {amount}")


def cmd_eval(args) -> None:
    from flowfactory.eval import run

    if args.benchmark == "geneval":
        from flowfactory.pipeline import Pipeline

        device, autocast = _device_dtype(args)
        ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
        pipe = Pipeline.from_checkpoint(ckpt).to(device)
        rec = run.run_geneval(pipe, args.out, args.images_per_prompt, args.steps, args.guidance, args.batch_size,
                              args.limit, autocast, progress=not args.json)  # fmt: skip
        summary = rec["summary"]
        table = run.markdown_table(summary, run.geneval.TASKS)
    elif args.benchmark == "editbench":
        if args.editor == "model":  # a Kontext checkpoint
            from flowfactory.pipeline import Pipeline

            device, _ = _device_dtype(args)
            ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_EDIT_CHECKPOINT
            pipe = Pipeline.from_checkpoint(ckpt).to(device)
            editor = run.kontext_editor(pipe, args.steps, args.guidance)
        elif args.editor in run.EDITORS:
            editor = run.EDITORS[args.editor]
        else:
            raise UserError(f"unknown editor '{args.editor}' (choose from: model, {', '.join(run.EDITORS)})")
        rec = run.run_editbench(editor, args.out, n=args.pairs, name=args.editor)
        summary = rec["summary"]
        if args.editor == "model" and args.identity_chains:
            summary["character_identity"] = run.character_identity(pipe, args.identity_chains, steps=args.steps,
                                                                   guidance=args.guidance)  # fmt: skip
            Path(args.out, "character-identity.json").write_text(json.dumps(summary["character_identity"], indent=1))
        table = run.markdown_table({args.editor: summary}, tuple(run.editbench.CATEGORIES))
    elif args.benchmark in ("fill", "control"):
        from flowfactory.pipeline import Pipeline

        device, _ = _device_dtype(args)
        if not args.checkpoint:
            raise UserError(f"eval {args.benchmark} needs --checkpoint (a {args.benchmark} model)")
        pipe = Pipeline.from_checkpoint(args.checkpoint).to(device)
        if args.lora:
            from flowfactory.models.lora import load_lora

            load_lora(pipe.transformer, args.lora, pipe.cfg.name)
        if args.benchmark == "fill":
            summary = run.run_fill(pipe, args.out, args.pairs, args.steps, args.guidance)
        else:
            summary = run.run_control(pipe, args.out, args.pairs, args.encoder, args.steps, args.guidance)
        table = "\n".join(f"{k}: {v}" for k, v in summary.items())
    else:  # ground-truth: the scorers on rendered solutions and on noise
        summary = run.ground_truth_geneval()
        table = "\n".join(f"{k}: " + ", ".join(f"{s} {v[s]['overall']:.3f}" for s in v) for k, v in summary.items())
    print(json.dumps(summary) if args.json else table)


def build_parser() -> argparse.ArgumentParser:
    from flowfactory.config import MODELS, RECIPES

    p = argparse.ArgumentParser(prog="flowfactory", description="Train, evaluate and serve FLUX-family flow models.")
    sub = p.add_subparsers(dest="command", required=True)

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

    t = sub.add_parser("train", help="train the transformer (and the embedded text encoder) with rectified flow")
    t.add_argument("--recipe", default="tiny-shapes", help=f"named training recipe: {', '.join(RECIPES)}")
    t.add_argument("--out", required=True, help="run directory (resumes from it when it holds train_state.pt)")
    t.add_argument("--autoencoder", help="trained autoencoder checkpoint (from train-ae) for latent models")
    t.add_argument("--init", help="start from this model checkpoint (fine-tuning, mid-training)")
    t.add_argument("--steps", type=int, help="override: optimizer steps")
    t.add_argument("--batch-size", type=int, help="override: global batch size")
    t.add_argument("--grad-accum", type=int, help="override: micro-batches per step")
    t.add_argument("--lr", type=float, help="override: peak learning rate")
    t.add_argument("--cooldown", type=int, help="override: decay the learning rate linearly to 0 over the last N steps")
    t.add_argument("--image-size", type=int, help="override: training resolution")
    t.add_argument("--precision", choices=["fp32", "bf16"], help="override: fp32 or bf16 autocast")
    t.add_argument("--parallel", choices=["ddp", "fsdp"], help="override: data parallelism under torchrun")
    t.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    t.add_argument("--seed", type=int, help="override: seed of data, noise and initialisation")
    _data_args(t)
    _lora_args(t)
    t.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a state")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--json", action="store_true", help="no progress bar; print the final metrics as JSON")
    t.set_defaults(func=cmd_train)

    di = sub.add_parser("distill", help="post-training: distil a teacher into a faster tier")
    dsub2 = di.add_subparsers(dest="method", required=True)
    gd = dsub2.add_parser("guidance", help="guidance distillation ([dev]): one pass per step instead of two")
    gd.add_argument("--teacher", required=True, help="the teacher checkpoint (a true-CFG model)")
    gd.add_argument("--recipe", default="shapes-dev", help="training recipe (data, steps, lr, guidance range)")
    gd.add_argument("--out", required=True, help="run directory (resumes from it)")
    gd.add_argument("--guidance-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="override: scales drawn")
    gd.add_argument("--steps", type=int, help="override: optimizer steps")
    gd.add_argument("--batch-size", type=int, help="override: global batch size")
    gd.add_argument("--lr", type=float, help="override: peak learning rate")
    gd.add_argument("--cooldown", type=int, help="override: linear decay to 0 over the last N steps")
    _data_args(gd)
    _lora_args(gd)
    gd.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a state")
    gd.add_argument("--device", default="cpu", help="cpu or cuda")
    gd.add_argument("--json", action="store_true", help="no progress bar; print the final metrics as JSON")
    gd.set_defaults(func=cmd_distill)
    la = dsub2.add_parser("ladd", help="latent adversarial diffusion distillation ([schnell]): 1-4 steps")
    la.add_argument("--teacher", required=True, help="the teacher checkpoint")
    la.add_argument("--recipe", default="shapes-schnell", help="training recipe (data, steps, teacher sampling)")
    la.add_argument("--out", required=True, help="run directory (resumes from it)")
    la.add_argument("--steps", type=int, help="override: optimizer steps")
    la.add_argument("--batch-size", type=int, help="override: global batch size")
    la.add_argument("--lr", type=float, help="override: peak learning rate")
    la.add_argument("--cooldown", type=int, help="override: linear decay to 0 over the last N steps")
    _data_args(la)
    _lora_args(la)
    la.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a state")
    la.add_argument("--device", default="cpu", help="cpu or cuda")
    la.add_argument("--json", action="store_true", help="no progress bar; print the final metrics as JSON")
    la.set_defaults(func=cmd_distill)

    al = sub.add_parser("align", help="post-training: preference pairs and DPO")
    asub = al.add_subparsers(dest="method", required=True)
    aj = asub.add_parser("judge", help="pairs from the model's own samples, judged by the analyzer")
    aj.add_argument("--checkpoint", help="model to sample (default: the shipped demo model)")
    aj.add_argument("--out", required=True, help="directory for pairs.jsonl, images/ and judge.json")
    aj.add_argument("--prompts", type=int, default=200, help="prompts (geneval grammar, never benchmark texts)")
    aj.add_argument("--samples", type=int, default=4, help="samples per prompt")
    aj.add_argument("--steps", type=int, default=20)
    aj.add_argument("--guidance", type=float, default=3.0)
    aj.add_argument("--seed", type=int, default=1)
    aj.add_argument("--device", default="cpu")
    aj.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    aj.add_argument("--json", action="store_true")
    aj.set_defaults(func=cmd_align)
    ad = asub.add_parser("dpo", help="Diffusion-DPO on preference pairs (JSONL: prompt, chosen, rejected, source)")
    ad.add_argument("--pairs", required=True, help="preference JSONL (from align judge or feedback export)")
    ad.add_argument("--init", help="policy to start from, also the frozen reference (default: the shipped model)")
    ad.add_argument("--recipe", default="shapes-dpo", help="training recipe (size, batch, lr)")
    ad.add_argument("--out", required=True, help="run directory (resumes from it)")
    ad.add_argument("--beta", type=float, default=1000.0, help="DPO temperature on velocity errors")
    ad.add_argument("--steps", type=int, help="override: optimizer steps")
    ad.add_argument("--batch-size", type=int, help="override: pairs per step")
    ad.add_argument("--lr", type=float, help="override: peak learning rate")
    ad.add_argument("--tombstones", help="deletion list honoured when reading pairs")
    _lora_args(ad)
    ad.add_argument("--no-resume", action="store_true")
    ad.add_argument("--device", default="cpu")
    ad.add_argument("--json", action="store_true")
    ad.set_defaults(func=cmd_align)

    ky = sub.add_parser("keys", help="API keys of the server")
    kys = ky.add_subparsers(dest="keys_command", required=True)
    kc = kys.add_parser("create", help="create a key and print it (stored only as a hash)")
    kc.add_argument("--name", help="a label for the key")
    kc.add_argument("--dir", default="flowfactory-serve", help="server data directory")
    kc.add_argument("--json", action="store_true", help="print {id, key, name}")
    kc.set_defaults(func=cmd_keys)

    sv = sub.add_parser("serve", help="the FLUX-API-compatible server and its workers")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--dir", default="flowfactory-serve", help="server data: jobs.sqlite and results/")
    sv.add_argument("--models", help="JSON map kind -> tier -> [checkpoint, steps, guidance] (default: shipped)")
    sv.add_argument("--workers", type=int, help="worker threads (default 1)")
    sv.add_argument("--batch-size", type=int, help="compatible requests per forward pass (default 8)")
    sv.add_argument("--max-queue", type=int, help="waiting + running jobs before 429 (default 256)")
    sv.add_argument("--rate-limit", type=int, help="requests per key per minute (default 120)")
    sv.add_argument("--ttl-s", type=float, help="seconds before results expire (default 86400)")
    sv.add_argument("--max-body-bytes", type=int, help="largest request body (default 30 MB)")
    sv.add_argument("--terms", help="moderation term list (JSON term: level 1-7)")
    sv.add_argument("--image-classifier", help="package.module:function(image) -> unsafe score in [0, 1]")
    sv.add_argument("--tombstones", help="deletion list shared with training (default: the user's list)")
    sv.add_argument("--device", default="cpu")
    sv.set_defaults(func=cmd_serve)

    fb = sub.add_parser("feedback", help="the server's feedback as training data")
    fbs = fb.add_subparsers(dest="feedback_command", required=True)
    fe = fbs.add_parser("export", help="preference pairs (JSONL for align dpo) and usage telemetry")
    fe.add_argument("--dir", default="flowfactory-serve", help="server data directory")
    fe.add_argument("--out", required=True, help="export directory: pairs.jsonl, images/, usage.jsonl")
    fe.add_argument("--tombstones", help="deletion list (default: the user's list)")
    fe.add_argument("--json", action="store_true")
    fe.set_defaults(func=cmd_feedback)

    c = sub.add_parser("cache", help="pre-encode a data source into latent shards (resumable) for training")
    c.add_argument("--recipe", default="tiny-shapes", help="the recipe whose model, size and buckets to cache for")
    c.add_argument("--out", required=True, help="cache directory (resumes an interrupted build)")
    c.add_argument("--autoencoder", help="trained autoencoder checkpoint (from train-ae) for latent models")
    c.add_argument("--image-size", type=int, help="override: training resolution")
    c.add_argument("--seed", type=int, help="override: crop seed")
    c.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    _data_args(c)
    c.add_argument("--json", action="store_true", help="no progress bar; print a JSON summary")
    c.set_defaults(func=cmd_cache)

    k = sub.add_parser("curate", help="filter an image folder: duplicates, bad files, sizes, captions, a scorer")
    k.add_argument("folder", help="image folder (captions as in the folder source)")
    k.add_argument("--out", required=True, help="curated manifest to write (JSONL); the report goes next to it")
    k.add_argument("--min-side", type=int, default=64, help="drop images whose shorter side is below this")
    k.add_argument("--max-aspect", type=float, default=4.0, help="drop images more elongated than this")
    k.add_argument("--min-words", type=int, default=1, help="drop captions shorter than this (1: drop empty ones)")
    k.add_argument("--max-words", type=int, default=300, help="drop captions longer than this")
    k.add_argument("--phash-distance", type=int, default=4, help="near-duplicate threshold in bits (-1: off)")
    k.add_argument("--scorer", help="package.module:function (image, caption) -> float, e.g. an aesthetic model")
    k.add_argument("--min-score", type=float, default=0.0, help="drop images the scorer rates below this")
    k.add_argument("--tombstones", help="deletion list (default: the user's list)")
    k.add_argument("--json", action="store_true", help="print the summary as JSON")
    k.set_defaults(func=cmd_curate)

    d = sub.add_parser("data", help="data governance")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dd = dsub.add_parser("delete", help="add tombstones: deleted content is never read for training again")
    dd.add_argument("files", nargs="*", help="files whose content to delete (by SHA-256)")
    dd.add_argument("--hash", action="append", help="a content hash (SHA-256 hex) to delete")
    dd.add_argument("--id", action="append", help="an id to delete (relative file name, shard key, job id)")
    dd.add_argument("--reason", default="deletion request", help="recorded with each tombstone")
    dd.add_argument("--tombstones", help="deletion list (default: the user's list)")
    dd.add_argument("--json", action="store_true", help="print JSON")
    dd.set_defaults(func=cmd_data_delete)

    a = sub.add_parser("train-ae", help="train a latent autoencoder (reconstruction + KL, optional patch-GAN)")
    a.add_argument("--model", default="demo", help=f"model whose autoencoder config to train: {', '.join(MODELS)}")
    a.add_argument("--out", required=True, help="run directory; writes autoencoder.safetensors")
    a.add_argument("--steps", type=int, default=3000)
    a.add_argument("--batch-size", type=int, default=32)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--image-size", type=int, default=64)
    a.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term")
    a.add_argument("--gan-weight", type=float, default=0.0, help="weight of the patch-GAN loss (0: off)")
    a.add_argument("--gan-start", type=int, default=1000, help="step from which the GAN loss applies")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu", help="cpu or cuda")
    a.add_argument("--json", action="store_true", help="no progress bar; print the result as JSON")
    a.set_defaults(func=cmd_train_ae)

    c = sub.add_parser("convert", help="convert a checkpoint between the reference and the diffusers layouts")
    c.add_argument("input", help="safetensors file (flowfactory checkpoint or bare state dict)")
    c.add_argument("output", help="safetensors file to write (bare state dict)")
    c.add_argument("--to", choices=["diffusers", "reference"], required=True, help="target layout")
    c.add_argument("--component", choices=["transformer", "autoencoder"], default="transformer")
    c.add_argument("--json", action="store_true", help="print a JSON record")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("eval", help="benchmarks on the shapes world: geneval-mini, editbench-mini, scorer checks")
    e.add_argument("benchmark", choices=["geneval", "editbench", "fill", "control", "ground-truth"],
                   help="geneval: text-to-image of a checkpoint; editbench: an editor; ground-truth: scorer checks")
    e.add_argument("--checkpoint", help="model to evaluate (default: the shipped demo model)")
    e.add_argument("--out", default="results", help="directory for the JSON, markdown table and PNG grid")
    e.add_argument("--images-per-prompt", type=int, default=4)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=3.0)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--limit", type=int, help="only the first N prompts (quick checks)")
    e.add_argument("--editor", default="identity",
                   help="editbench: model (a Kontext checkpoint, default the shipped edit model), or the baselines "
                   "ground-truth and identity")  # fmt: skip
    e.add_argument("--encoder", default="edges", help="control: edges or depth")
    e.add_argument("--lora", help="fill / control: a LoRA file to apply (Control-LoRA)")
    e.add_argument("--identity-chains", type=int, default=0,
                   help="editbench with a model: also edit N character scenes 5 times and report identity")
    e.add_argument("--pairs", type=int, default=200,
                   help="editbench: pairs (>= 200 for the benchmark); fill / control: cases (>= 100)")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="parameters and forward FLOPs of a named model")
    i.add_argument("--model", default="flux1-dev", help=f"one of: {', '.join(MODELS)}")
    i.add_argument("--resolution", type=int, default=1024, help="square image side in pixels")
    i.add_argument("--text-tokens", type=int, help="text tokens (default: the model's text length)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)
    return p


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
    g.add_argument("--tier", choices=["pro", "dev", "schnell"], help="a tier of the model (its checkpoint, steps, guidance)")
    g.add_argument("--tiers", help="tier manifest (default: tiers.json next to the shipped model)")
    g.add_argument("--steps", type=int, help="solver steps (default: the tier's, else 28)")
    g.add_argument("--guidance", type=float,
                   help="guidance scale: embedded for guidance-distilled models, true CFG otherwise (1 = off; "
                   "default: the tier's, else 3.5)")
    g.add_argument("--solver", choices=list(SOLVERS), default="euler", help="ODE solver")
    g.add_argument("--size", type=int, help="square image side (default: the model's training resolution)")
    g.add_argument("--height", type=int, help="image height (overrides --size)")
    g.add_argument("--width", type=int, help="image width (overrides --size)")
    g.add_argument("--num-images", type=int, default=1, help="images for the prompt, saved as one grid")
    g.add_argument("--device", default="cpu", help="cpu or cuda (cuda runs in bf16)")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast on the CPU too (only CPUs with AVX512-BF16 or AMX run it fast)")
    g.add_argument("--json", action="store_true", help="print a JSON record (prompt, seed, steps, guidance, timings)")


def _lora_args(p) -> None:
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank on the frozen transformer")
    p.add_argument("--lora-targets", help="adapted layers: attention, all-linear, or a regex of layer names")


def _data_args(p) -> None:
    p.add_argument("--data", help="override: data spec (shapes, folder:DIR, webdataset:URLS, preferences:FILE, "
                   "cache:DIR, or a mixture A@0.7+B@0.3)")
    p.add_argument("--buckets", action="store_true", help="aspect-ratio buckets at the training pixel count")
    p.add_argument("--tombstones", help="deletion list honoured by every source (default: the user's list)")


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


if __name__ == "__main__":
    sys.exit(main())
