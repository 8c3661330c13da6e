"""Training and data commands: train, distill, align, train-ae, cache, curate, data delete."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from flowfactory.cli.common import (DEFAULT_CHECKPOINT, _data_args, _device_dtype, _init_pipeline, _lora_args,
                                    _run_args, _train_config, _ema_arg, at_least,
                                    positive_float)  # fmt: skip
from flowfactory.errors import UserError


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
            if cfg.model.redux_grid and init.redux is None:  # a text-to-image model gains a Redux encoder
                init = init.with_redux(cfg.model.redux_grid, cfg.model.redux_patch)
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
            text = f"{label}done: step {trainer.step}, {metrics}"
            print(json.dumps({"stage": name, **metrics}) if args.json else text)


def distill_config(args):
    """The distillation recipe's config with the command line's overrides, checked before any work."""
    from flowfactory.config import recipe

    cfg = _train_config(args, recipe(args.recipe))
    if getattr(args, "guidance_range", None):
        lo, hi = args.guidance_range
        if not 0 < lo <= hi:
            raise UserError(f"--guidance-range needs 0 < MIN <= MAX, got {lo} {hi}")
        cfg = dataclasses.replace(cfg, guidance_min=lo, guidance_max=hi)
    if getattr(args, "d_lr_mult", None) is not None:
        if not args.d_lr_mult > 0:
            raise UserError(f"--d-lr-mult must be positive, got {args.d_lr_mult}")
        cfg = dataclasses.replace(cfg, ladd_d_lr_mult=args.d_lr_mult)
    if getattr(args, "distill_weight", None) is not None:
        if not args.distill_weight >= 0:
            raise UserError(f"--distill-weight must be at least 0, got {args.distill_weight}")
        cfg = dataclasses.replace(cfg, ladd_distill_weight=args.distill_weight)
    if getattr(args, "adv_weight", None) is not None:
        if not args.adv_weight >= 0:
            raise UserError(f"--adv-weight must be at least 0, got {args.adv_weight}")
        cfg = dataclasses.replace(cfg, ladd_adv_weight=args.adv_weight)
    if not (cfg.ladd_adv_weight > 0 or cfg.ladd_distill_weight > 0):
        raise UserError("LADD with --adv-weight 0 and --distill-weight 0 has nothing to learn: give one of them "
                        "above 0")  # fmt: skip
    if getattr(args, "teacher_guidance", None) is not None:
        if not args.teacher_guidance >= 1:
            raise UserError(f"--teacher-guidance must be at least 1 (1: no guidance), got {args.teacher_guidance}")
        cfg = dataclasses.replace(cfg, teacher_guidance=args.teacher_guidance)
    if getattr(args, "t_hat_mean", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_t_hat_mean=args.t_hat_mean)
    if getattr(args, "shifted_schedule", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_schedule_shift=args.shifted_schedule)
    if getattr(args, "schedule_mu", None) is not None:
        if not args.schedule_mu > 0:
            raise UserError(f"--schedule-mu must be positive, got {args.schedule_mu}")
        cfg = dataclasses.replace(cfg, ladd_schedule_mu=args.schedule_mu)
        if not cfg.ladd_schedule_shift:
            raise UserError("--schedule-mu fixes the shifted schedule's shift: drop --no-shifted-schedule")
    if getattr(args, "on_policy", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_on_policy=args.on_policy)
    if getattr(args, "path_grad", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_path_grad=args.path_grad)
    elif getattr(args, "on_policy", None) is False:  # the recipe's path gradient goes with its on-policy path
        cfg = dataclasses.replace(cfg, ladd_path_grad=False)
    if cfg.ladd_path_grad and not cfg.ladd_on_policy:
        raise UserError("--path-grad backpropagates through the student's own path: it needs --on-policy")
    if getattr(args, "final_only", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_final_only=args.final_only)
    elif not cfg.ladd_path_grad or getattr(args, "all_steps", None):  # the recipe's final-only grading goes with
        cfg = dataclasses.replace(cfg, ladd_final_only=False)  # its path gradient, and gives way to --all-steps
    if cfg.ladd_final_only and not cfg.ladd_path_grad:
        raise UserError("--final-only grades the finished sample through the student's path: it needs --path-grad")
    if getattr(args, "all_steps", None) is not None:
        cfg = dataclasses.replace(cfg, ladd_all_steps=args.all_steps)
    elif getattr(args, "on_policy", None) is False:
        cfg = dataclasses.replace(cfg, ladd_all_steps=False)
    if cfg.ladd_all_steps and not cfg.ladd_on_policy:
        raise UserError("--all-steps grades every state of the student's own path: it needs --on-policy")
    if cfg.ladd_all_steps and cfg.ladd_final_only:
        raise UserError("--all-steps and --final-only grade different states: give one of them")
    if cfg.ladd_on_policy and not cfg.ladd_distill_weight > 0:
        raise UserError("on-policy LADD (--on-policy; the shapes-schnell recipe's default) places the distillation "
                        "term's inputs: give --distill-weight above 0, or --no-on-policy")  # fmt: skip
    return cfg


def cmd_distill(args) -> None:
    from flowfactory.pipeline import Pipeline
    from flowfactory.train.distill import GuidanceDistiller, LADDTrainer, same_backbone

    cfg = distill_config(args)
    teacher = Pipeline.from_checkpoint(args.teacher)
    student = Pipeline.from_checkpoint(args.student) if args.student else None
    if student is not None and not same_backbone(teacher.cfg, student.cfg):
        raise UserError(f"--student {args.student} is not the teacher's architecture ('{student.cfg.name}' vs "
                        f"'{teacher.cfg.name}'): start from the teacher's own dev tier")  # fmt: skip
    if args.method == "ladd":
        if teacher.cfg.micro_cond or teacher.cfg.channel_cond:
            raise UserError(f"LADD distils plain text-to-image models; '{teacher.cfg.name}' takes image conditioning")
        trainer = LADDTrainer(cfg, args.out, teacher, device=args.device, resume=not args.no_resume,
                              progress=not args.json, student=student)  # fmt: skip
    else:
        if student is not None and not student.cfg.flux.guidance_embed:
            raise UserError(f"--student {args.student} has no guidance embedding: give a guidance-distilled model "
                            "(a dev tier), or leave --student out to start from the teacher")  # fmt: skip
        trainer = GuidanceDistiller(cfg, args.out, teacher, device=args.device, resume=not args.no_resume,
                                    progress=not args.json, student=student)  # fmt: skip
    metrics = trainer.fit()
    if trainer.env.is_main:
        print(json.dumps(metrics) if args.json else f"done: step {trainer.step}, {metrics}")


def cmd_align(args) -> None:
    from flowfactory.config import recipe
    from flowfactory.pipeline import Pipeline
    from flowfactory.eval import geneval
    from flowfactory.train import preference

    if args.method == "judge":
        tasks = args.tasks.split(",") if args.tasks else None
        if tasks and not set(tasks) <= set(geneval.TASKS):
            raise UserError(f"--tasks takes geneval tasks ({', '.join(geneval.TASKS)}), got '{args.tasks}'")
        device, _ = _device_dtype(args)
        pipe = Pipeline.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT).to(device)
        stats = preference.judge_pairs(pipe, args.out, args.prompts, args.samples, args.steps, args.guidance,
                                       args.seed, progress=not args.json, graded=args.graded, tasks=tasks,
                                       solutions=args.solutions)  # fmt: skip
        short = "" if stats["prompts"] >= args.prompts else " (the grammar holds no more new prompts)"
        print(json.dumps(stats) if args.json else f"{stats['pairs']} pairs from {stats['prompts']} prompts{short} -> "
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


def cmd_train_ae(args) -> None:
    from flowfactory.config import model_config
    from flowfactory.train.autoencoder import AETrainConfig, train_autoencoder

    cfg = AETrainConfig(model=model_config(args.model), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        image_size=args.image_size, kl_weight=args.kl_weight, gan_weight=args.gan_weight,
                        gan_start=args.gan_start, seed=args.seed)  # fmt: skip
    path = train_autoencoder(cfg, args.out, device=args.device, progress=not args.json)
    print(json.dumps({"checkpoint": str(path)}) if args.json else f"wrote {path}")


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
    text = f"cached {index['count']} samples in {len(index['shards'])} shards to {args.out}"
    print(json.dumps(summary) if args.json else text)


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
    text = f"added {n} tombstones to {tomb.path}"
    print(json.dumps({"added": n, "tombstones": str(tomb.path)}) if args.json else text)


def register(sub) -> None:
    from flowfactory.config import MODELS, RECIPES

    t = sub.add_parser("train", help="train the transformer (and the embedded text encoder) with rectified flow")
    t.add_argument("--recipe", default="tiny-shapes", help=f"named training recipe: {', '.join(RECIPES)}")
    t.add_argument("--out", required=True, help="run directory (resumes from it when it holds train_state.pt)")
    t.add_argument("--autoencoder", help="trained autoencoder checkpoint (from train-ae) for latent models")
    t.add_argument("--init", help="start from this model checkpoint (fine-tuning, mid-training)")
    t.add_argument("--steps", type=at_least(1), help="override: optimizer steps")
    t.add_argument("--batch-size", type=at_least(1), help="override: global batch size")
    t.add_argument("--grad-accum", type=at_least(1), help="override: micro-batches per step")
    t.add_argument("--lr", type=positive_float, help="override: peak learning rate")
    t.add_argument("--cooldown", type=at_least(0),
                   help="override: decay the learning rate linearly to 0 over the last N steps")
    t.add_argument("--image-size", type=at_least(1), help="override: training resolution")
    t.add_argument("--checkpoint-every", type=at_least(1), help="override: steps between checkpoints and saved states")
    _ema_arg(t)
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
    gd.add_argument("--guidance-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="override: scales drawn")
    gd.add_argument("--student", help="continue this guidance-distilled model of the teacher (its dev tier, a "
                    "fresh optimizer) instead of starting from the teacher")
    _run_args(gd)
    gd.set_defaults(func=cmd_distill)
    la = dsub2.add_parser("ladd", help="latent adversarial diffusion distillation ([schnell]): 1-4 steps")
    la.add_argument("--teacher", required=True, help="the teacher checkpoint")
    la.add_argument("--recipe", default="shapes-schnell", help="training recipe (data, steps, teacher sampling)")
    la.add_argument("--student", help="start the student from this checkpoint (the teacher's dev tier) instead of "
                    "a copy of the teacher; it then runs at the teacher's guidance scale")
    la.add_argument("--teacher-guidance", type=float, help="override: the teacher's CFG scale for its samples "
                    "(a dev-tier student runs at this scale too; recipe default 3)")
    la.add_argument("--t-hat-mean", type=float, help="override: mean of the logit-normal re-noising level")
    la.add_argument("--d-lr-mult", type=float, help="override: discriminator learning rate / student learning rate")
    la.add_argument("--distill-weight", type=float, help="override: weight of the regression onto the teacher's "
                    "sample from its own noise (reflow pairs) added to the adversarial loss (0: adversarial only)")
    la.add_argument("--adv-weight", type=float, help="override: weight of the adversarial loss (default 1; 0: the "
                    "distillation term alone, no discriminator)")
    la.add_argument("--shifted-schedule", action=argparse.BooleanOptionalAction, help="override: train at (and "
                    "sample) the resolution-shifted 4-step schedule, or (--no-shifted-schedule) the plain "
                    "1, 0.75, 0.5, 0.25")  # fmt: skip
    la.add_argument("--schedule-mu", type=float, help="override: the shifted schedule's shift mu, fixed (SD3's "
                    "shift s is mu = ln s; default FLUX.1's for the resolution, 0.46 at 16 image tokens)")
    la.add_argument("--on-policy", action=argparse.BooleanOptionalAction, help="override: build the distillation "
                    "term's inputs on the student's own few-step path from the teacher's noise (the states it "
                    "samples through), or (--no-on-policy) on the straight reflow line to the teacher's sample")
    la.add_argument("--path-grad", action=argparse.BooleanOptionalAction, help="override: with --on-policy, "
                    "backpropagate the distillation term through the student's own earlier steps")
    la.add_argument("--all-steps", action=argparse.BooleanOptionalAction, help="override: with --on-policy, "
                    "grade the student's prediction at every state of its path (its finished sample among them), "
                    "not at one drawn timestep per sample")
    la.add_argument("--final-only", action=argparse.BooleanOptionalAction, help="override: with --path-grad, "
                    "grade only the student's finished few-step sample (through all its passes), not a drawn state")
    _run_args(la)
    la.set_defaults(func=cmd_distill)

    al = sub.add_parser("align", help="post-training: preference pairs and DPO")
    asub = al.add_subparsers(dest="method", required=True)
    aj = asub.add_parser("judge", help="pairs from the model's own samples, judged by the analyzer")
    aj.add_argument("--checkpoint", help="model to sample (default: the shipped demo model)")
    aj.add_argument("--out", required=True, help="directory for pairs.jsonl, images/ and judge.json")
    aj.add_argument("--prompts", type=at_least(1), default=200, help="prompts (geneval grammar, never benchmark texts)")
    aj.add_argument("--samples", type=at_least(1), default=4, help="samples per prompt")
    aj.add_argument("--steps", type=at_least(1), default=20)
    aj.add_argument("--guidance", type=float, default=3.0)
    aj.add_argument("--seed", type=int, default=1)
    judge = aj.add_mutually_exclusive_group()
    judge.add_argument("--graded", action="store_true",
                    help="pair the samples with the most and least of the prompt satisfied (partial credit)")
    judge.add_argument("--solutions", action="store_true",
                    help="chosen: the world's rendering of the prompt; rejected: the model's worst sample when it "
                    "fails (self-play against the data, for tasks the model rarely passes)")  # fmt: skip
    aj.add_argument("--tasks", help="only these geneval tasks' prompts, comma-separated (e.g. position,color_attr)")
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
    ad.add_argument("--steps", type=at_least(1), help="override: optimizer steps")
    ad.add_argument("--batch-size", type=at_least(1), help="override: pairs per step")
    ad.add_argument("--lr", type=positive_float, help="override: peak learning rate")
    ad.add_argument("--tombstones", help="deletion list honoured when reading pairs")
    _lora_args(ad)
    ad.add_argument("--no-resume", action="store_true")
    ad.add_argument("--device", default="cpu")
    ad.add_argument("--json", action="store_true")
    ad.set_defaults(func=cmd_align)

    a = sub.add_parser("train-ae", help="train a latent autoencoder (reconstruction + KL, optional patch-GAN)")
    a.add_argument("--model", default="demo", help=f"model whose autoencoder config to train: {', '.join(MODELS)}")
    a.add_argument("--out", required=True, help="run directory; writes autoencoder.safetensors")
    a.add_argument("--steps", type=at_least(1), default=3000)
    a.add_argument("--batch-size", type=at_least(1), default=32)
    a.add_argument("--lr", type=positive_float, default=1e-3)
    a.add_argument("--image-size", type=at_least(1), default=64)
    a.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term")
    a.add_argument("--gan-weight", type=float, default=0.0, help="weight of the patch-GAN loss (0: off)")
    a.add_argument("--gan-start", type=at_least(0), default=1000, help="step from which the GAN loss applies")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu", help="cpu or cuda")
    a.add_argument("--json", action="store_true", help="no progress bar; print the result as JSON")
    a.set_defaults(func=cmd_train_ae)

    c = sub.add_parser("cache", help="pre-encode a data source into latent shards (resumable) for training")
    c.add_argument("--recipe", default="tiny-shapes", help="the recipe whose model, size and buckets to cache for")
    c.add_argument("--out", required=True, help="cache directory (resumes an interrupted build)")
    c.add_argument("--autoencoder", help="trained autoencoder checkpoint (from train-ae) for latent models")
    c.add_argument("--image-size", type=at_least(1), help="override: training resolution")
    c.add_argument("--seed", type=int, help="override: crop seed")
    c.add_argument("--shard-size", type=at_least(1), default=256, help="samples per shard")
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
