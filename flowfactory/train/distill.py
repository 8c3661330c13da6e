"""Guidance distillation ([dev]): a student with a guidance embedding learns the teacher's CFG output.

    flowfactory distill guidance --teacher flowfactory/assets/shapes-demo.safetensors --recipe shapes-dev --out runs/dev

For g drawn uniformly from [guidance_min, guidance_max] per sample, the student minimises
`|| v_s(x_t, t, c, g) - [v_T(x_t, t, 0) + g (v_T(x_t, t, c) - v_T(x_t, t, 0))] ||^2`
(Meng et al. 2023): one forward pass per sampling step instead of two. The student starts as a
copy of the teacher with a new guidance embedding whose output layer is zero, so at the start
it predicts the teacher's conditional velocity. The teacher (and its text encoder) is frozen.
An edit (Kontext) teacher distils the same way on edit pairs: both CFG branches see the context
images (only the instruction is dropped), as when the teacher samples.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from flowfactory.conditioning import Conditioning, conditioned
from flowfactory.config import ModelConfig, TrainConfig
from flowfactory.flow.objectives import interpolate
from flowfactory.flow.sampling import cfg_combine, get_schedule
from flowfactory.models.flux import Flux
from flowfactory.models.layers import MLPEmbedder
from flowfactory.pipeline import Pipeline, image_ids, text_ids
from flowfactory.train.trainer import Batch, Trainer, lr_at


def guidance_student(teacher: Pipeline) -> Pipeline:
    """A copy of `teacher` that takes a guidance scale (new zero-output guidance embedding)."""
    if teacher.cfg.flux.guidance_embed:
        return copy.deepcopy(teacher)
    flux_p = dataclasses.replace(teacher.cfg.flux, guidance_embed=True)
    cfg = dataclasses.replace(teacher.cfg, flux=flux_p)
    student = Flux(flux_p)
    missing, unexpected = student.load_state_dict(teacher.transformer.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("guidance_in.") for k in missing), (missing, unexpected)
    assert isinstance(student.guidance_in, MLPEmbedder)
    nn.init.normal_(student.guidance_in.in_layer.weight, std=0.02)
    nn.init.zeros_(student.guidance_in.out_layer.weight)
    nn.init.zeros_(student.guidance_in.out_layer.bias)
    return Pipeline(cfg, student, copy.deepcopy(teacher.autoencoder), copy.deepcopy(teacher.text_encoder))


def same_backbone(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two models share transformer, autoencoder and text encoder shapes (a guidance
    embedding and the sampling schedule aside): a student of one may start from the other."""
    return (dataclasses.replace(a.flux, guidance_embed=False) == dataclasses.replace(b.flux, guidance_embed=False)
            and (a.ae, a.text, a.patch) == (b.ae, b.text, b.patch))  # fmt: skip


@torch.no_grad()
def teacher_cfg_target(teacher: Pipeline, x_t: Tensor, ids: Tensor, prompts: list[str], t: Tensor,
                       g: Tensor, cond: Conditioning | None = None) -> Tensor:  # fmt: skip
    """The teacher's classifier-free-guided velocity at per-sample scales `g` `[B]` (two passes;
    `cond`, e.g. Kontext context tokens, in both)."""
    txt, pooled = teacher.encode_text(prompts)
    txt_u, pooled_u = teacher.encode_text([""] * len(prompts))
    v_c = conditioned(teacher.transformer, x_t, ids, txt, text_ids(txt), t, pooled, cond=cond)
    v_u = conditioned(teacher.transformer, x_t, ids, txt_u, text_ids(txt_u), t, pooled_u, cond=cond)
    return cfg_combine(v_c, v_u, g[:, None, None].to(v_c))


class GuidanceDistiller(Trainer):
    """The trainer with the distillation objective in place of the rectified-flow loss. The student
    starts as the teacher with a new guidance embedding, or as `student`: a guidance-distilled
    model of the same teacher (its `dev` tier), to train further with a fresh optimizer."""

    def __init__(self, cfg: TrainConfig, out_dir, teacher: Pipeline, device: str = "cpu", resume: bool = True,
                 progress: bool = True, student: Pipeline | None = None):  # fmt: skip
        if cfg.model.micro_cond or cfg.model.channel_cond:
            raise ValueError("guidance distillation takes plain text-to-image models")
        if student is not None and not (student.cfg.flux.guidance_embed and same_backbone(teacher.cfg, student.cfg)):
            raise ValueError("the student must be a guidance-distilled model of the teacher's architecture")
        cfg = dataclasses.replace(cfg, text_dropout=0.0, train_text_encoder=False,
                                  model=dataclasses.replace(teacher.cfg, flux=dataclasses.replace(
                                      teacher.cfg.flux, guidance_embed=True)))  # fmt: skip
        self.teacher = teacher.eval().requires_grad_(False)
        init = copy.deepcopy(student) if student is not None else guidance_student(teacher)
        super().__init__(cfg, out_dir, device, resume, progress, init=init)
        self.teacher.to(self.env.device)

    def guidance_scales(self, n: int, validation: bool = False) -> Tensor:
        """Per-sample scales, seeded by step (fixed, evenly spread ones for validation)."""
        lo, hi = self.cfg.guidance_min, self.cfg.guidance_max
        if validation:
            return torch.linspace(lo, hi, n)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def loss(self, b: Batch, text, noise: Tensor, t: Tensor) -> Tensor:
        n = b.x0.shape[0]
        x_t = interpolate(b.x0, noise, t)
        ids = image_ids(n, b.h, b.w, device=b.x0.device)
        g = self.guidance_scales(n, validation=self.validating).to(b.x0.device)
        target = teacher_cfg_target(self.teacher, x_t, ids, b.prompts, t, g, b.cond)
        with self.autocast:
            pred = self.model(x_t, ids, text, t, g, b.micro, b.cond)
        return (pred.float() - target).square().mean()


# ---------------------------------------------------------------------------------------------
# LADD ([schnell]): latent adversarial diffusion distillation (arXiv 2403.12015)

STUDENT_TIMESTEPS = (1.0, 0.75, 0.5, 0.25)  # the 4-step schedule (2 steps: 1, 0.5; 1 step: 1)


def student_timesteps(seq_len: int, shift: bool, mu: float | None = None) -> tuple[float, ...]:
    """The timesteps a few-step student trains at: its 4-step sampling schedule without the final 0
    (which holds the 2- and 1-step schedules). Plain: `STUDENT_TIMESTEPS`; shifted: FLUX.1's
    resolution shift at `seq_len` image tokens (at 16 tokens 1, 0.826, 0.613, 0.345), or the fixed
    shift `mu`."""
    return tuple(get_schedule(4, seq_len, shift=shift, mu=mu)[:-1])


class DiscriminatorHead(nn.Module):
    """Token features `[B, L, D]` -> a score per sample, modulated by the condition vector."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.mod = nn.Linear(dim, 2 * dim)
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, f: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.mod(c)[:, None].chunk(2, dim=-1)
        return self.net(self.norm(f) * (1 + scale) + shift).mean(dim=(1, 2))


class Discriminator(nn.Module):
    """Heads on the frozen teacher's image-token features at several blocks, conditioned on the
    re-noising level t_hat and the pooled text; the score is the sum over heads."""

    def __init__(self, hidden: int, pooled_dim: int, n_heads: int):
        super().__init__()
        self.t_in = nn.Linear(256, hidden)
        self.y_in = nn.Linear(pooled_dim, hidden)
        self.heads = nn.ModuleList(DiscriminatorHead(hidden) for _ in range(n_heads))

    def forward(self, feats: list[Tensor], t_hat: Tensor, pooled: Tensor) -> Tensor:
        from flowfactory.models.layers import timestep_embedding

        c = nn.functional.silu(self.t_in(timestep_embedding(t_hat, 256)) + self.y_in(pooled))
        return sum(head(f, c) for head, f in zip(self.heads, feats))


def feature_blocks(flux: Flux) -> list[nn.Module]:
    """The teacher blocks whose image tokens the discriminator reads: every double block and
    every other single block."""
    return [*flux.double_blocks, *list(flux.single_blocks)[1::2]]


def teacher_features(teacher: Pipeline, x_t: Tensor, ids: Tensor, txt: Tensor, pooled: Tensor, t: Tensor,
                     cond: Conditioning | None = None) -> list[Tensor]:  # fmt: skip
    """Target-token features of the frozen teacher at `feature_blocks` (gradients flow to `x_t`;
    context tokens of `cond` are seen by the teacher but not returned)."""
    feats: list[Tensor] = []
    n_txt = txt.shape[1] + (cond.txt.shape[1] if cond is not None and cond.txt is not None else 0)
    n = x_t.shape[1]

    def grab(module, args, out):
        feats.append(out[0][:, :n] if isinstance(out, tuple) else out[:, n_txt : n_txt + n])

    handles = [b.register_forward_hook(grab) for b in feature_blocks(teacher.transformer)]
    try:
        g = torch.ones(x_t.shape[0], device=x_t.device) if teacher.cfg.flux.guidance_embed else None
        conditioned(teacher.transformer, x_t, ids, txt, text_ids(txt), t, pooled, g, cond)
    finally:
        for h in handles:
            h.remove()
    return feats


class LADDTrainer(Trainer):
    """Student trained adversarially on teacher-generated latents. The student starts as a copy of
    the teacher, or of `student` (a guidance-distilled `dev` model of the same teacher: it then
    runs at the teacher's guidance scale, one pass per step, from a better few-step start). An
    edit (Kontext) teacher makes an edit student: the teacher samples, the student and the
    discriminator's teacher features all see each pair's context images.

    With `ladd_distill_weight` w > 0 the student's input at t is built from the very noise the
    teacher's sample was solved from, `x_t = (1 - t) x0 + t z` (the reflow coupling of rectified
    flow), and the generator loss gains `w ||x0_hat - x0||^2`: at t = 1 that is the teacher's
    noise-to-image map, and a student that meets it keeps its few-step path on the straight line
    from z to x0 (ADD's distillation term, on reflow pairs instead of teacher re-noising). With
    `ladd_adv_weight` 0 the distillation term trains alone (no discriminator pass: the ablation of the
    adversarial term). `ladd_path_grad` (on-policy only) backpropagates the distillation term through
    the student's own earlier steps: the steps before the graded one learn to leave it a state it can
    finish from, not only to predict the image from their own states. `ladd_all_steps` (on-policy only)
    grades the prediction at every state of that path, the finished K-step sample among them, instead of
    one drawn timestep per sample: K times the graded states for each teacher sample, the costly part.
    `ladd_final_only` (with the path gradient) grades only the finished K-step sample, through all K passes:
    the error the sampler is judged by, with no demand that the earlier predictions be the image."""

    def __init__(self, cfg: TrainConfig, out_dir, teacher: Pipeline, device: str = "cpu", resume: bool = True,
                 progress: bool = True, student: Pipeline | None = None):  # fmt: skip
        for m in (teacher, student):
            if m is not None and (m.cfg.micro_cond or m.cfg.channel_cond):
                raise ValueError("LADD takes plain text-to-image models")
        if student is not None and not same_backbone(teacher.cfg, student.cfg):
            raise ValueError("the student must be the teacher's architecture (a guidance embedding aside)")
        if cfg.grad_accum != 1:
            raise ValueError("LADD takes one micro-batch per step (grad_accum 1)")
        if not (cfg.ladd_adv_weight > 0 or cfg.ladd_distill_weight > 0):
            raise ValueError("LADD needs an adversarial or a distillation weight above 0")
        if cfg.ladd_schedule_mu > 0 and not cfg.ladd_schedule_shift:
            raise ValueError("ladd_schedule_mu fixes the shifted schedule's shift: it needs ladd_schedule_shift")
        if cfg.ladd_path_grad and not cfg.ladd_on_policy:
            raise ValueError("ladd_path_grad backpropagates through the student's own path: it needs ladd_on_policy")
        if cfg.ladd_all_steps and not cfg.ladd_on_policy:
            raise ValueError("ladd_all_steps grades every state of the student's own path: it needs ladd_on_policy")
        if cfg.ladd_final_only and not (cfg.ladd_path_grad and not cfg.ladd_all_steps):
            raise ValueError("ladd_final_only grades the finished sample through the student's path: it needs "
                             "ladd_path_grad (and not ladd_all_steps)")  # fmt: skip
        student = copy.deepcopy(student if student is not None else teacher)
        model = dataclasses.replace(student.cfg, schedule_shift=cfg.ladd_schedule_shift,
                                    schedule_mu=cfg.ladd_schedule_mu if cfg.ladd_schedule_shift else 0.0)
        cfg = dataclasses.replace(cfg, model=model, text_dropout=0.0, train_text_encoder=False)
        self.teacher = teacher.eval().requires_grad_(False)
        student.cfg = model
        super().__init__(cfg, out_dir, device, resume, progress, init=student)
        self.teacher.to(self.env.device)
        flux_p = teacher.cfg.flux
        self.disc = Discriminator(flux_p.hidden_size, flux_p.vec_in_dim, len(feature_blocks(teacher.transformer)))
        self.disc.to(self.env.device)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr * cfg.ladd_d_lr_mult, betas=(0.0, 0.99))
        self.d_skipped = 0
        self.timesteps = student_timesteps((cfg.image_size // model.stride) ** 2, cfg.ladd_schedule_shift,
                                           model.schedule_mu or None)
        self._val_x0: dict[tuple[str, ...], Tensor] = {}

    def student_guidance(self, n: int) -> Tensor | None:
        """A student with a guidance embedding runs at the scale the teacher's samples were made with."""
        if not self.cfg.model.flux.guidance_embed:
            return None
        return torch.full((n,), self.cfg.teacher_guidance, device=self.env.device)

    def teacher_latents(self, prompts: list[str], step: int, lo: int, cond: Conditioning | None = None) -> Tensor:
        """Teacher samples for the prompts (the "real" data), seeded by global position."""
        size = self.cfg.image_size
        return self.teacher.sample_tokens(prompts, size, size, steps=self.cfg.teacher_steps,
                                          guidance=self.cfg.teacher_guidance, cond=cond,
                                          seed=self.cfg.seed * 1_000_003 + step * self.cfg.batch_size + lo)  # fmt: skip

    def teacher_noise(self, n: int, step: int, lo: int) -> Tensor:
        """The packed noise the teacher's samples of `teacher_latents(..., step, lo)` were solved from."""
        seed, size = self.cfg.seed * 1_000_003 + step * self.cfg.batch_size + lo, self.cfg.image_size
        return self.teacher.initial_noise([seed + i for i in range(n)], size, size).to(self.env.device)

    def student_path(self, z: Tensor, t: Tensor, ids: Tensor, prompts: list[str],
                     cond: Conditioning | None = None, grad: bool = False) -> Tensor:  # fmt: skip
        """Where the student's own Euler sampler, started at the teacher's noise `z` (t = 1), stands at
        each sample's timestep `t` `[B]` (one of `self.timesteps`): the states it meets when it samples,
        so the distillation term trains it where its earlier steps' errors have put it (not detached
        from them by the reflow line). `grad`: keep the graph, so a loss at the end of the path also
        trains the steps that led there."""
        x, n = z.clone(), z.shape[0]
        g = self.student_guidance(n)
        with torch.set_grad_enabled(grad):
            for t_cur, t_next in zip(self.timesteps, self.timesteps[1:]):
                rows = (t < t_cur - 1e-6).nonzero().flatten()  # samples whose timestep lies past t_cur
                if len(rows) == 0:
                    break
                t_rows = torch.full((len(rows),), t_cur, device=z.device)
                sub = cond.select(rows) if cond is not None else None
                with self.autocast:
                    v = self.model(x[rows], ids[rows], [prompts[i] for i in rows.tolist()], t_rows,
                                   None if g is None else g[rows], None, sub)  # fmt: skip
                x = x.index_put((rows,), x[rows] + (t_next - t_cur) * v.float())
        return x

    def student_predictions(self, z: Tensor, ids: Tensor, prompts: list[str], cond: Conditioning | None = None,
                            grad: bool = False) -> Tensor:  # fmt: skip
        """The student's image prediction `x - t v` at every state of its own Euler sampler started at the
        teacher's noise `z`, one per timestep: `[K, B, L, C]`, the last being its K-step sample. Each
        prediction keeps its graph; `grad` also keeps the graph of the steps that led to its state."""
        x, g, preds = z, self.student_guidance(z.shape[0]), []
        for t_cur, t_next in zip(self.timesteps, [*self.timesteps[1:], 0.0]):
            t_rows = torch.full((z.shape[0],), t_cur, device=z.device)
            with self.autocast:
                v = self.model(x, ids, prompts, t_rows, g, None, cond).float()
            preds.append(x - t_cur * v)
            x = x + (t_next - t_cur) * v
            if not grad:
                x = x.detach()
        return torch.stack(preds)

    def train_step(self) -> dict[str, float]:
        cfg, dev = self.cfg, self.env.device
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        for group in self.opt_d.param_groups:
            group["lr"] = lr_at(self.step, cfg) * cfg.ladd_d_lr_mult
        lo = self.env.rank * self.micro
        b = self.encode(self.samples(self.step, lo, lo + self.micro))
        prompts, cond = b.prompts, b.cond
        x0 = self.teacher_latents(prompts, self.step, lo, cond).float()
        n, side = x0.shape[0], cfg.image_size // cfg.model.stride
        ids = image_ids(n, side, side, device=dev)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        k = torch.randint(len(self.timesteps), (n,), generator=g)
        if cfg.ladd_final_only:  # the last state for every sample: its graded prediction is the K-step sample
            k = torch.full_like(k, len(self.timesteps) - 1)
        t = torch.tensor(self.timesteps)[k].to(dev)
        t_hat = torch.sigmoid(cfg.ladd_t_hat_mean + torch.randn(n, generator=g)).to(dev)  # logit-normal(m, 1)
        noise, n_fake, n_real = (torch.randn(x0.shape, generator=g).to(dev) for _ in range(3))
        if cfg.ladd_distill_weight > 0:  # reflow pairs: the student's input lies between x0 and its own noise
            noise = self.teacher_noise(n, self.step, lo)
        with torch.no_grad():
            txt, pooled = self.teacher.encode_text(prompts)
        if cfg.ladd_all_steps:  # every state of the path graded; the adversarial term takes the drawn one
            preds = self.student_predictions(noise, ids, prompts, cond, grad=cfg.ladd_path_grad)
            x0_hat = preds[k.to(dev), torch.arange(n, device=dev)]
            distill_loss = (preds - x0).square().mean()
        else:
            if cfg.ladd_on_policy:
                x_t = self.student_path(noise, t, ids, prompts, cond, grad=cfg.ladd_path_grad)
            else:
                x_t = interpolate(x0, noise, t)
            with self.autocast:
                v = self.model(x_t, ids, prompts, t, self.student_guidance(n), None, cond)
            x0_hat = x_t - t[:, None, None] * v.float()
            distill_loss = (x0_hat - x0).square().mean()
        adversarial = cfg.ladd_adv_weight > 0
        d_stats: dict[str, float] = {}
        g_loss = torch.zeros((), device=dev)
        if adversarial:
            d_stats, g_loss = self.adversarial_losses(x0, x0_hat, ids, txt, pooled, t_hat, n_real, n_fake, cond)
        self.opt.zero_grad(set_to_none=True)
        total = cfg.ladd_adv_weight * g_loss + cfg.ladd_distill_weight * distill_loss
        total.backward()
        if adversarial:
            self.disc.requires_grad_(True)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.opt.step()
        if self.ema:
            self.ema.update(self.step)
        self.step += 1
        return {"loss": total.item(), "g_loss": g_loss.item(), "distill_loss": distill_loss.item(), **d_stats,
                "grad_norm": float(grad_norm), "lr": lr_at(self.step - 1, cfg)}  # fmt: skip

    def adversarial_losses(self, x0: Tensor, x0_hat: Tensor, ids: Tensor, txt: Tensor, pooled: Tensor, t_hat: Tensor,
                           n_real: Tensor, n_fake: Tensor, cond: Conditioning | None) -> tuple[dict[str, float], Tensor]:
        """One discriminator update (hinge loss on detached inputs; skipped while it already wins: the
        collapse guard), then the generator's loss of fooling it through the frozen teacher's features,
        with the heads frozen for the student's backward pass (the caller unfreezes them)."""
        cfg = self.cfg
        real = interpolate(x0, n_real, t_hat)
        fake = interpolate(x0_hat, n_fake, t_hat)
        d_real = self.disc(teacher_features(self.teacher, real, ids, txt, pooled, t_hat, cond), t_hat, pooled)
        d_fake = self.disc(teacher_features(self.teacher, fake.detach(), ids, txt, pooled, t_hat, cond), t_hat, pooled)
        d_loss = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
        d_acc = 0.5 * ((d_real > 0).float().mean() + (d_fake < 0).float().mean()).item()
        self.opt_d.zero_grad(set_to_none=True)
        if d_acc < cfg.ladd_d_skip:
            d_loss.backward()
            if self.env.world > 1:  # the heads are small: average their gradients by hand
                for p in self.disc.parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.env.world
            self.opt_d.step()
        else:
            self.d_skipped += 1
        self.disc.requires_grad_(False)
        g_loss = -self.disc(teacher_features(self.teacher, fake, ids, txt, pooled, t_hat, cond), t_hat, pooled).mean()
        stats = {"d_loss": d_loss.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item(),
                 "d_accuracy": d_acc, "d_skipped": self.d_skipped}  # fmt: skip
        return stats, g_loss

    def loss(self, b: Batch, text, noise: Tensor, t: Tensor) -> Tensor:
        """Validation: the student's one-step error against teacher samples at the student timesteps."""
        key = tuple(b.prompts)
        if key not in self._val_x0:  # one set of teacher samples for the whole validation set
            self._val_x0[key] = self.teacher_latents(b.prompts, 0, 0, b.cond).float()
        x0 = self._val_x0[key]
        x_t = interpolate(x0, noise, t)
        ids = image_ids(x0.shape[0], b.h, b.w, device=x0.device)
        v = self.model(x_t, ids, text, t, self.student_guidance(x0.shape[0]), None, b.cond)
        return (x_t - t[:, None, None] * v - x0).square().mean()
