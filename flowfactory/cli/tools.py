"""Model tools: convert, info, eval (the shapes-world benchmarks)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from flowfactory.cli.common import (DEFAULT_CHECKPOINT, DEFAULT_EDIT_CHECKPOINT, DEFAULT_REDUX_CHECKPOINT,
                                    _device_dtype, at_least)  # fmt: skip
from flowfactory.errors import UserError


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
                              args.limit, autocast, progress=not args.json, seed=args.seed)  # fmt: skip
        summary = rec["summary"]
        table = run.markdown_table(summary, run.geneval.TASKS)
    elif args.benchmark == "editbench":
        if args.editor in ("model", "autoencoder"):  # a Kontext checkpoint, or its autoencoder's round trip
            from flowfactory.pipeline import Pipeline

            device, _ = _device_dtype(args)
            ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_EDIT_CHECKPOINT
            pipe = Pipeline.from_checkpoint(ckpt).to(device)
            editor = (run.kontext_editor(pipe, args.steps, args.guidance, args.seed) if args.editor == "model"
                      else run.autoencoder_editor(pipe))  # fmt: skip
        elif args.editor in run.EDITORS:
            if args.checkpoint:
                raise UserError(f"--checkpoint is for --editor model or autoencoder; the '{args.editor}' baseline "
                                "uses no model")  # fmt: skip
            editor = run.EDITORS[args.editor]
        else:
            raise UserError(f"unknown editor '{args.editor}' (choose from: model, autoencoder, {', '.join(run.EDITORS)})")
        settings = ({"checkpoint": str(ckpt), "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
                    if args.editor == "model" else {})  # fmt: skip
        rec = run.run_editbench(editor, args.out, n=args.pairs, name=args.editor, settings=settings)
        summary = rec["summary"]
        if args.editor == "model" and args.identity_chains:
            summary["character_identity"] = run.character_identity(pipe, args.identity_chains, steps=args.steps,
                                                                   guidance=args.guidance)  # fmt: skip
            Path(args.out, "character-identity.json").write_text(json.dumps(summary["character_identity"], indent=1))
        table = run.markdown_table({args.editor: summary}, tuple(run.editbench.CATEGORIES))
        table += "\n" + run.failure_table(summary["failures"], run.editbench.FAILURES, "pairs")
    elif args.benchmark == "variation":
        from flowfactory.pipeline import Pipeline

        device, _ = _device_dtype(args)
        pipe = Pipeline.from_checkpoint(args.checkpoint or DEFAULT_REDUX_CHECKPOINT).to(device)
        if not args.captions and pipe.redux is None:
            raise UserError(f"eval variation: '{args.checkpoint}' has no Redux encoder (give a Redux model, or "
                            "--captions to prompt a text model with the references' captions)")  # fmt: skip
        summary = run.run_variation(pipe, args.out, args.pairs, args.steps, args.guidance, captions=args.captions)
        table = "\n".join(f"{k}: {v}" for k, v in summary.items())
    elif args.benchmark in ("fill", "control"):
        from flowfactory.pipeline import Pipeline

        device, _ = _device_dtype(args)
        if not args.checkpoint:
            raise UserError(f"eval {args.benchmark} needs --checkpoint (a {args.benchmark} model)")
        pipe = Pipeline.from_checkpoint(args.checkpoint)
        if args.lora:  # a Control-LoRA widens a plain base first
            pipe = pipe.with_lora(args.lora)
        pipe = pipe.to(device)
        if args.benchmark == "fill":
            summary = run.run_fill(pipe, args.out, args.pairs, args.steps, args.guidance)
        else:
            summary = run.run_control(pipe, args.out, args.pairs, args.encoder, args.steps, args.guidance)
        table = "\n".join(f"{k}: {v}" for k, v in summary.items())
    else:  # ground-truth: the scorers on rendered solutions and on noise (and a model's autoencoder)
        pipe = None
        if args.checkpoint:
            from flowfactory.pipeline import Pipeline

            pipe = Pipeline.from_checkpoint(args.checkpoint).to(_device_dtype(args)[0])
        summary = run.ground_truth_geneval(pipe=pipe)
        table = "\n".join(f"{k}: " + ", ".join(f"{s} {v[s]['overall']:.3f}" for s in v) for k, v in summary.items())
    print(json.dumps(summary) if args.json else table)


def register(sub) -> None:
    from flowfactory.config import MODELS

    c = sub.add_parser("convert", help="convert a checkpoint between the reference and the diffusers layouts")
    c.add_argument("input", help="safetensors file (flowfactory checkpoint or bare state dict)")
    c.add_argument("output", help="safetensors file to write (bare state dict)")
    c.add_argument("--to", choices=["diffusers", "reference"], required=True, help="target layout")
    c.add_argument("--component", choices=["transformer", "autoencoder"], default="transformer")
    c.add_argument("--json", action="store_true", help="print a JSON record")
    c.set_defaults(func=cmd_convert)

    e = sub.add_parser("eval", help="benchmarks on the shapes world: geneval-mini, editbench-mini, scorer checks")
    e.add_argument("benchmark", choices=["geneval", "editbench", "fill", "control", "variation", "ground-truth"],
                   help="geneval: text-to-image of a checkpoint; editbench: an editor; variation: a Redux model "
                   "(default the shipped one); ground-truth: scorer checks (with --checkpoint: also its "
                   "autoencoder's round trip of the solutions)")  # fmt: skip
    e.add_argument("--checkpoint", help="model to evaluate (default: the shipped demo model)")
    e.add_argument("--out", default="results", help="directory for the JSON, markdown table and PNG grid")
    e.add_argument("--images-per-prompt", type=at_least(1), default=4)
    e.add_argument("--steps", type=at_least(1), default=20)
    e.add_argument("--guidance", type=float, default=3.0)
    e.add_argument("--batch-size", type=at_least(1), default=64)
    e.add_argument("--limit", type=at_least(1), help="only the first N prompts (quick checks)")
    e.add_argument("--seed", type=int, default=0,
                   help="geneval / editbench with a model: noise seed (another seed, the same prompts or pairs: "
                   "for seed-averaged comparisons)")  # fmt: skip
    e.add_argument("--editor", default="model",
                   help="editbench: model (the default: a Kontext checkpoint, the shipped edit model unless "
                   "--checkpoint names one), autoencoder "
                   "(the targets through that model's autoencoder: its ceiling), or the baselines ground-truth and "
                   "identity")  # fmt: skip
    e.add_argument("--encoder", default="edges", help="control: edges or depth")
    e.add_argument("--lora", help="fill / control: a LoRA file to apply (Control-LoRA)")
    e.add_argument("--captions", action="store_true",
                   help="variation: prompt with the references' captions instead of their images (reference point)")
    e.add_argument("--identity-chains", type=at_least(0), default=0,
                   help="editbench with a model: also edit N character scenes 5 times and report identity")
    e.add_argument("--pairs", type=at_least(1), default=200,
                   help="editbench: pairs (>= 200 for the benchmark); fill / control / variation: cases (>= 100)")
    e.add_argument("--device", default="cpu", help="cpu or cuda")
    e.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    e.add_argument("--json", action="store_true", help="print the summary as JSON")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="parameters and forward FLOPs of a named model")
    i.add_argument("--model", default="flux1-dev", help=f"one of: {', '.join(MODELS)}")
    i.add_argument("--resolution", type=at_least(1), default=1024, help="square image side in pixels")
    i.add_argument("--text-tokens", type=at_least(1), help="text tokens (default: the model's text length)")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)
