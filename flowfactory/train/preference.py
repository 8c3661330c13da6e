"""Preference alignment: Diffusion-DPO adapted to rectified flow.

    flowfactory align judge --checkpoint CKPT --out pairs/        # the analyzer judges the model's own samples
    flowfactory align dpo --pairs pairs/pairs.jsonl --init CKPT --out runs/dpo

For a pair (prompt c, chosen x_w, rejected x_l), one timestep t and one noise e shared by both,
the flow-matching errors `err(x) = mean || v(x_t, t, c) - (e - x) ||^2` of the policy and of the
frozen reference (the starting model) give, per pair (Wallace et al. 2023, with velocity errors):

    L = -log sigmoid( -beta / 2 * [ (err_w - err_l) - (ref_w - ref_l) ] )

Lower error on the chosen image than the reference has, relative to the rejected one, lowers
the loss. Pairs come from `judge_pairs` (the analyzer, the world's ground truth, scores k samples
per prompt; a passing and a failing sample make a pair, or with `solutions` the world's own
rendering of the prompt and the model's worst sample) or from the serving feedback export,
in the same JSONL format: {"prompt", "chosen", "rejected", "source", ...}, paths relative to it.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from flowfactory.conditioning import with_micro
from flowfactory.config import TrainConfig
from flowfactory.flow.objectives import interpolate
from flowfactory.images import save_image
from flowfactory.pipeline import Pipeline, image_ids, pack, text_ids
from flowfactory.train.trainer import Trainer


def dpo_loss(err_w: Tensor, err_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """Per-pair Diffusion-DPO loss from per-sample errors `[B]`."""
    return -F.logsigmoid(-0.5 * beta * ((err_w - err_l) - (ref_w - ref_l)))


class DPOTrainer(Trainer):
    """Trains a policy (initialised from `init`) against a frozen copy of it on preference pairs."""

    def __init__(self, cfg: TrainConfig, out_dir, init: Pipeline, beta: float = 500.0, device: str = "cpu",
                 resume: bool = True, progress: bool = True):  # fmt: skip
        if not cfg.dataset.startswith("preferences:"):
            raise ValueError("DPO trains on preference pairs: dataset 'preferences:FILE.jsonl'")
        self.beta = beta
        self.reference = copy.deepcopy(init).eval().requires_grad_(False)
        cfg = dataclasses.replace(cfg, model=init.cfg, text_dropout=0.0)
        super().__init__(cfg, out_dir, device, resume, progress, init=init)
        self.reference.to(self.env.device)
        self.last_pair_metrics: dict[str, float] = {}

    def encode(self, samples):
        b = super().encode(samples)
        with torch.no_grad():
            z = self.pipe.encode_images(torch.stack([s.rejected for s in samples]).to(self.env.device))
        b.x0_rejected = pack(z.float(), self.cfg.model.patch)
        return b

    def errors(self, x0: Tensor, noise: Tensor, t: Tensor, ids: Tensor, text, micro, frozen: bool) -> Tensor:
        """Per-sample flow-matching error of the policy, or (`frozen`) of the reference."""
        x_t = interpolate(x0, noise, t)
        g = torch.ones(x0.shape[0], device=x0.device) if self.cfg.model.flux.guidance_embed else None
        if frozen:
            with torch.no_grad():
                txt, pooled = self.reference.encode_text(text)
                pooled = with_micro(pooled, micro, self.cfg.model.micro_cond)
                v = self.reference.transformer(x_t, ids, txt, text_ids(txt), t, pooled, g)
        else:
            with self.autocast:
                v = self.model(x_t, ids, text, t, g, micro)
        return (v.float() - (noise - x0)).square().mean(dim=(1, 2))

    def loss(self, b, text, noise: Tensor, t: Tensor) -> Tensor:
        n = b.x0.shape[0]
        ids = image_ids(n, b.h, b.w, device=b.x0.device)
        err_w = self.errors(b.x0, noise, t, ids, text, b.micro, frozen=False)
        err_l = self.errors(b.x0_rejected, noise, t, ids, text, b.micro, frozen=False)
        ref_w = self.errors(b.x0, noise, t, ids, b.prompts, b.micro, frozen=True)
        ref_l = self.errors(b.x0_rejected, noise, t, ids, b.prompts, b.micro, frozen=True)
        margin = (ref_w - ref_l) - (err_w - err_l)
        self.last_pair_metrics = {"reward_margin": margin.mean().item(), "accuracy": (margin > 0).float().mean().item()}
        return dpo_loss(err_w, err_l, ref_w, ref_l, self.beta).mean()

    def train_step(self) -> dict[str, float]:
        return {**super().train_step(), **self.last_pair_metrics}


def judge_prompts(n: int, seed: int = 1, tasks: list[str] | None = None, max_draws: int = 64) -> list:
    """`n` distinct in-distribution prompts of the geneval grammar that are not benchmark texts (only
    `tasks`' if given), the tasks taken in turn. One draw of the grammar (seed 1000 + `seed`) holds about
    200 such prompts; larger pools append further draws (seeds 1000 + `seed` + 7919 r), so a pool's first
    prompts never depend on its size. Fewer than `n` only when the grammar runs out of new texts."""
    from flowfactory.eval import geneval

    seen = {p.text for p in geneval.prompt_set()}
    pool: list = []
    for r in range(max_draws):
        groups: dict[str, list] = {}
        for p in geneval.prompt_set(seed=1000 + seed + 7919 * r):
            if not p.held_out and p.text not in seen and (tasks is None or p.task in tasks):
                seen.add(p.text)
                groups.setdefault(p.task, []).append(p)
        # every task represented: take the tasks' prompts in turn (the set is ordered by task)
        pool += [p for group in itertools.zip_longest(*groups.values()) for p in group if p is not None]
        if len(pool) >= n:
            break
    return pool[:n]


def judge_pairs(pipe: Pipeline, out: str | Path, prompts: int = 200, k: int = 4, steps: int = 20,
                guidance: float = 3.0, seed: int = 1, batch_size: int = 64, progress: bool = True,
                graded: bool = False, tasks: list[str] | None = None, solutions: bool = False) -> dict:  # fmt: skip
    """The model's own samples judged by the analyzer: a passing and a failing sample of a prompt
    make a pair; `graded`: the samples with the most and the least of the prompt satisfied
    (`geneval.partial_credit`), when they differ; `solutions`: the world's rendering of the
    prompt (`geneval.solve`) is chosen over the model's least satisfying sample whenever that
    sample fails (self-play against the data, for tasks the model rarely passes). Prompts come
    from `judge_prompts`: the geneval grammar under other seeds, never a benchmark text."""
    from flowfactory.data.shapes import render
    from flowfactory.eval import geneval
    from flowfactory.eval.run import score_prompts

    pool = judge_prompts(prompts, seed, tasks)
    passed, credits, images, _ = score_prompts(pipe, pool, k, steps, guidance, batch_size, progress=progress,
                                               keep=lambda job: True, seed=seed * 1_000_000)  # fmt: skip
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    source = "analyzer-solution" if solutions else "analyzer-graded" if graded else "analyzer"
    rng = np.random.default_rng(seed)
    lines, by_task = [], {}
    for i, (p, ok, partial) in enumerate(zip(pool, passed, credits)):
        by_task.setdefault(p.task, []).append(sum(ok) / k)
        credit = partial if graded or solutions else [float(v) for v in ok]
        best = 1.0 if solutions else max(credit)
        if best > min(credit):
            l = i * k + credit.index(min(credit))
            save_image(images[l], out / "images" / f"{l:06d}.png")
            if solutions:
                chosen = f"images/solution-{i:06d}.png"
                Image.fromarray(render(geneval.solve(p, rng), pipe.cfg.resolution)).save(out / chosen)
            else:
                w = i * k + credit.index(best)
                chosen = f"images/{w:06d}.png"
                save_image(images[w], out / chosen)
            lines.append(json.dumps({"prompt": p.text, "chosen": chosen, "rejected": f"images/{l:06d}.png",
                                     "source": source, "task": p.task,
                                     "margin": round(best - min(credit), 4)}))  # fmt: skip
    (out / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))
    pairs_by_task = {t: sum(json.loads(line)["task"] == t for line in lines) for t in by_task}
    stats = {"prompts": len(pool), "samples_per_prompt": k, "graded": graded, "solutions": solutions,
             "pairs": len(lines),
             "pairs_by_task": pairs_by_task,
             "pass_rate_by_task": {t: sum(v) / len(v) for t, v in by_task.items()}}  # fmt: skip
    (out / "judge.json").write_text(json.dumps(stats, indent=1))
    return stats
