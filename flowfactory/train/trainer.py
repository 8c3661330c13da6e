"""Rectified-flow training of a `Pipeline`: one loop for one process, DDP or FSDP2 under torchrun.

    flowfactory train --recipe tiny-shapes --out runs/tiny
    torchrun --nproc_per_node=2 -m flowfactory train --recipe tiny-shapes --out runs/tiny-ddp

What it does each optimizer step: `grad_accum` micro-batches, each drawn by global sample
index (so the global batch is the same for any number of ranks), noised with per-sample
seeded noise and timesteps; AdamW with linear warmup, gradient clipping, EMA. Outputs in
`out/`: `metrics.jsonl`, TensorBoard events (`tb/`), sample grids (`samples/`),
exported models (`checkpoints/step_N.safetensors`, EMA weights when EMA is on) and
`train_state.pt` for exact resume.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from flowfactory.checkpoint import atomic_write, save_checkpoint
from flowfactory.config import TrainConfig, from_json, to_json
from flowfactory.data import build_dataset
from flowfactory.errors import UserError
from flowfactory.flow.objectives import drop_text, flux_mu, interpolate, rectified_flow_loss, sample_timesteps
from flowfactory.images import save_grid
from flowfactory.models.text import EmbeddedTextParams
from flowfactory.pipeline import Pipeline, image_ids, pack, text_ids
from flowfactory.train import distributed as D
from flowfactory.train.logs import MetricsLogger

VAL_SEED_OFFSET = 1_000_003  # the held-out set: the same source under another seed


class Denoiser(nn.Module):
    """What is trained: the transformer, with the text encoder (trainable only when embedded)."""

    def __init__(self, pipe: Pipeline):
        super().__init__()
        self.transformer = pipe.transformer
        self.text_encoder = pipe.text_encoder

    def forward(self, x_t: Tensor, ids: Tensor, prompts: list[str], t: Tensor, guidance: Tensor | None) -> Tensor:
        txt, pooled = self.text_encoder(prompts)
        return self.transformer(x_t, ids, txt, text_ids(txt), t, pooled, guidance)


class EMA:
    """Exponential moving average of the trainable parameters (sharded alike under FSDP)."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped(self):
        """Temporarily put the EMA weights into the model."""
        saved = [p.detach().clone() for p in self.params]
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)
        try:
            yield
        finally:
            for p, s in zip(self.params, saved):
                p.copy_(s)

    @torch.no_grad()
    def capture(self) -> None:
        """Take the model's current weights as the EMA (used when restoring)."""
        for s, p in zip(self.shadow, self.params):
            s.copy_(p.detach())


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "cpu", resume: bool = True,
                 progress: bool = True, init: Pipeline | None = None):  # fmt: skip
        self.cfg = cfg
        self.out = Path(out_dir)
        self.env = D.init_distributed(device)
        self.progress = progress and self.env.is_main
        if cfg.batch_size % (self.env.world * cfg.grad_accum):
            raise UserError(
                f"batch_size {cfg.batch_size} is not divisible by ranks x grad_accum = {self.env.world * cfg.grad_accum}"
            )
        self.micro = cfg.batch_size // (self.env.world * cfg.grad_accum)
        self.pipe = init or Pipeline.from_config(cfg.model, seed=cfg.seed)
        self.pipe.check_size(cfg.image_size, cfg.image_size)
        self.pipe.to(self.env.device)
        if self.pipe.autoencoder is not None:
            self.pipe.autoencoder.requires_grad_(False).eval()
        trains_text = cfg.train_text_encoder and isinstance(cfg.model.text, EmbeddedTextParams)
        self.pipe.text_encoder.requires_grad_(trains_text)

        denoiser = Denoiser(self.pipe)
        blocks = [*self.pipe.transformer.double_blocks, *self.pipe.transformer.single_blocks]
        self.model = D.parallelize(denoiser, blocks, self.env, cfg.parallel, cfg.compile)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.data = build_dataset(cfg.dataset, cfg.image_size, cfg.seed, cfg.dataset_size)
        self.val_data = build_dataset(cfg.dataset, cfg.image_size, cfg.seed + VAL_SEED_OFFSET, cfg.val_samples)
        self.autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.step = 0
        if resume and (self.out / "train_state.pt").exists():
            self.load_state()

    # ----- batches ---------------------------------------------------------------------------
    def encode(self, indices: list[int], dataset) -> tuple[Tensor, list[str]]:
        """Samples -> packed clean latents `[B, L, C]` and their captions."""
        images, prompts = zip(*(dataset[i] for i in indices))
        with torch.no_grad():
            x0 = pack(self.pipe.encode_images(torch.stack(images).to(self.env.device)).float(), self.cfg.model.patch)
        return x0, list(prompts)

    def batch(self, indices: list[int]) -> tuple[Tensor, list[str], Tensor, Tensor]:
        """-> x0, prompts (with CFG dropout), noise, t; noise, t and dropout seeded per sample index."""
        x0, prompts = self.encode(indices, self.data)
        noise, ts, dropped = [], [], []
        mu = flux_mu(x0.shape[1]) if self.cfg.resolution_shift else None
        for i, p in zip(indices, prompts):
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_000_007 + i)
            noise.append(torch.randn(x0.shape[1:], generator=g))
            ts.append(sample_timesteps(1, g, self.cfg.timestep_sampler, self.cfg.logit_mean, self.cfg.logit_std, mu))
            dropped += drop_text([p], self.cfg.text_dropout, g)
        return x0, dropped, torch.stack(noise).to(x0), torch.cat(ts).to(x0)

    def loss(self, x0: Tensor, prompts: list[str], noise: Tensor, t: Tensor) -> Tensor:
        """Mean rectified-flow loss of one batch."""
        b = x0.shape[0]
        side = self.cfg.image_size // self.cfg.model.stride
        ids = image_ids(b, side, side, device=x0.device)
        g = torch.ones(b, device=x0.device) if self.cfg.model.flux.guidance_embed else None
        with self.autocast:
            pred = self.model(interpolate(x0, noise, t), ids, prompts, t, g)
        return rectified_flow_loss(pred, x0, noise).mean()

    def train_step(self) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        total = torch.zeros((), device=env.device)
        for micro in range(cfg.grad_accum):
            start = (self.step * cfg.grad_accum + micro) * env.world * self.micro + env.rank * self.micro
            indices = list(range(start, start + self.micro))
            loss = self.loss(*self.batch(indices)) / cfg.grad_accum
            loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update()
        self.step += 1
        return {"loss": D.all_reduce_mean(total, env).item(), "grad_norm": float(grad_norm), "lr": lr_at(self.step - 1, cfg)}

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss on the held-out set at `val_timesteps` evenly spaced t (fixed noise, no dropout)."""
        k = self.cfg.val_timesteps
        x0, prompts = self.encode(list(range(self.cfg.val_samples)), self.val_data)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(self.cfg.seed + VAL_SEED_OFFSET)).to(x0)
        losses = []
        for j in range(k):
            t = torch.full((x0.shape[0],), (j + 0.5) / k, device=x0.device)
            losses.append(self.loss(x0, prompts, noise, t).item())
        return sum(losses) / k

    # ----- outputs ----------------------------------------------------------------------------
    def ema_weights(self):
        return self.ema.swapped() if self.ema else contextlib.nullcontext()

    def sample_grid(self) -> Path | None:
        with self.ema_weights():
            self.pipe.eval()
            images, _ = self.pipe.generate(self.cfg.sample_prompts, self.cfg.image_size, self.cfg.image_size,
                                           steps=self.cfg.sample_steps, guidance=3.0, seed=self.cfg.seed)  # fmt: skip
            self.pipe.train()
        if not self.env.is_main:
            return None
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        save_grid(images, path)
        return path

    def export(self) -> Path:
        """Write the model (EMA weights when EMA is on) as a standalone checkpoint."""
        path = self.out / "checkpoints" / f"step_{self.step:07d}.safetensors"
        with self.ema_weights():
            sd = D.full_model_state(self.model)
        if self.env.is_main:
            comps = {"transformer": {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}}
            if isinstance(self.cfg.model.text, EmbeddedTextParams):
                comps["text_encoder"] = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
            if self.pipe.autoencoder is not None:
                comps["autoencoder"] = self.pipe.autoencoder.state_dict()
            dtype = {"fp32": None, "bf16": torch.bfloat16}[self.cfg.export_dtype]
            save_checkpoint(path, self.cfg.model, comps, {"train_config": to_json(self.cfg), "step": str(self.step)}, dtype)
        return path

    def save_state(self) -> None:
        state = {
            "step": self.step,
            "config": to_json(self.cfg),
            "model": D.full_model_state(self.model),
            "optimizer": D.full_optimizer_state(self.model, self.opt),
        }
        if self.ema:
            with self.ema.swapped():
                state["ema"] = D.full_model_state(self.model)
        if self.env.is_main:
            atomic_write(self.out / "train_state.pt", lambda tmp: torch.save(state, tmp))

    def load_state(self) -> None:
        state = torch.load(self.out / "train_state.pt", map_location="cpu", weights_only=False)
        saved = from_json(state["config"])
        if saved.model != self.cfg.model:
            raise UserError(f"{self.out}/train_state.pt was trained with another model config: use a new --out")
        if self.ema and "ema" in state:
            D.load_model_state(self.model, state["ema"])
            self.ema.capture()
        D.load_model_state(self.model, state["model"])
        D.load_optimizer_state(self.model, self.opt, state["optimizer"])
        self.step = state["step"]

    # ----- the loop ---------------------------------------------------------------------------
    def fit(self, steps: int | None = None) -> dict[str, float]:
        """Train until `steps` (default: the config's); returns the last metrics."""
        cfg = self.cfg
        stop = steps if steps is not None else cfg.steps
        self.out.mkdir(parents=True, exist_ok=True)
        logger = MetricsLogger(self.out, enabled=self.env.is_main)
        bar = tqdm(total=stop, initial=self.step, disable=not self.progress, desc="train", dynamic_ncols=True)
        metrics: dict[str, float] = {}
        if cfg.val_every and self.step == 0:
            logger.log({"step": 0, "val_loss": self.validation_loss()})
        t0, last = time.perf_counter(), self.step
        while self.step < stop:
            metrics = self.train_step()
            metrics["step"] = self.step
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == stop):
                metrics["val_loss"] = self.validation_loss()
            if self.step % cfg.log_every == 0 or "val_loss" in metrics or self.step == stop:
                metrics["steps_per_s"] = (self.step - last) / (time.perf_counter() - t0)
                logger.log(metrics)
                t0, last = time.perf_counter(), self.step
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.sample_grid()
            if self.step % cfg.checkpoint_every == 0 or self.step == stop:
                self.export()
                self.save_state()
        bar.close()
        logger.close()
        return metrics
