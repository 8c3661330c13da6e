"""Guidance distillation ([dev]): a student with a guidance embedding learns the teacher's CFG output.

    flowfactory distill guidance --teacher flowfactory/assets/shapes-demo.safetensors --recipe shapes-dev --out runs/dev

For g drawn uniformly from [guidance_min, guidance_max] per sample, the student minimises
`|| v_s(x_t, t, c, g) - [v_T(x_t, t, 0) + g (v_T(x_t, t, c) - v_T(x_t, t, 0))] ||^2`
(Meng et al. 2023): one forward pass per sampling step instead of two. The student starts as a
copy of the teacher with a new guidance embedding whose output layer is zero, so at the start
it predicts the teacher's conditional velocity. The teacher (and its text encoder) is frozen.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from flowfactory.config import TrainConfig
from flowfactory.flow.objectives import interpolate
from flowfactory.flow.sampling import cfg_combine
from flowfactory.models.flux import Flux
from flowfactory.models.layers import MLPEmbedder
from flowfactory.pipeline import Pipeline, image_ids, text_ids
from flowfactory.train.trainer import Batch, Trainer


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


@torch.no_grad()
def teacher_cfg_target(teacher: Pipeline, x_t: Tensor, ids: Tensor, prompts: list[str], t: Tensor,
                       g: Tensor) -> Tensor:  # fmt: skip
    """The teacher's classifier-free-guided velocity at per-sample scales `g` `[B]` (two passes)."""
    txt, pooled = teacher.encode_text(prompts)
    txt_u, pooled_u = teacher.encode_text([""] * len(prompts))
    v_c = teacher.transformer(x_t, ids, txt, text_ids(txt), t, pooled)
    v_u = teacher.transformer(x_t, ids, txt_u, text_ids(txt_u), t, pooled_u)
    return cfg_combine(v_c, v_u, g[:, None, None].to(v_c))


class GuidanceDistiller(Trainer):
    """The trainer with the distillation objective in place of the rectified-flow loss."""

    def __init__(self, cfg: TrainConfig, out_dir, teacher: Pipeline, device: str = "cpu", resume: bool = True,
                 progress: bool = True):  # fmt: skip
        if cfg.model.micro_cond or cfg.model.channel_cond:
            raise ValueError("guidance distillation takes plain text-to-image models")
        cfg = dataclasses.replace(cfg, text_dropout=0.0, train_text_encoder=False,
                                  model=dataclasses.replace(teacher.cfg, flux=dataclasses.replace(
                                      teacher.cfg.flux, guidance_embed=True)))  # fmt: skip
        self.teacher = teacher.eval().requires_grad_(False)
        super().__init__(cfg, out_dir, device, resume, progress, init=guidance_student(teacher))
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
        target = teacher_cfg_target(self.teacher, x_t, ids, b.prompts, t, g)
        with self.autocast:
            pred = self.model(x_t, ids, text, t, g, b.micro, b.cond)
        return (pred.float() - target).square().mean()
