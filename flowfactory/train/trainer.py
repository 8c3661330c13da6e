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
import dataclasses
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from flowfactory.checkpoint import atomic_write, save_checkpoint
from flowfactory.conditioning import MICRO_FIELDS, Conditioning, conditioned, control, fill, kontext, with_micro
from flowfactory.config import TrainConfig, from_json, to_json
from flowfactory.data.cache import CachedSource
from flowfactory.data.batches import Batches, Prefetcher
from flowfactory.data.sources import DataOptions, Sample
from flowfactory.errors import UserError
from flowfactory.flow.objectives import drop_text, flux_mu, interpolate, rectified_flow_loss, sample_timesteps
from flowfactory.images import save_grid
from flowfactory.models.redux import latent_features
from flowfactory.models.lora import apply_lora, merge_lora, save_lora, unmerge_lora
from flowfactory.models.text import EmbeddedTextParams, PrecomputedText
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
        self.redux = pipe.redux
        self.micro_dim = pipe.cfg.micro_cond

    def forward(self, x_t: Tensor, ids: Tensor, text: list[str] | tuple[Tensor, Tensor], t: Tensor,
                guidance: Tensor | None, micro: Tensor | None = None, cond: Conditioning | None = None) -> Tensor:  # fmt: skip
        """`text`: prompts, or precomputed (txt `[B, L, D]`, pooled `[B, D]`) from a latent cache;
        `cond`: context tokens / channels around the transformer (the output keeps the target tokens)."""
        txt, pooled = self.text_encoder(text) if isinstance(text, list) else text
        y, tids = with_micro(pooled, micro, self.micro_dim), text_ids(txt)
        if cond is not None and cond.image_features is not None:  # Redux: project the image into text tokens
            cond = dataclasses.replace(cond, txt=self.redux(cond.image_features), image_features=None)
        return conditioned(self.transformer, x_t, ids, txt, tids, t, y, guidance, cond)


@dataclass
class Batch:
    x0: Tensor  # packed clean latents [B, L, C]
    h: int  # token grid
    w: int
    prompts: list[str]
    micro: Tensor  # [B, 6] micro-conditioning sizes
    txt: Tensor | None = None  # cached text embeddings [B, L, D] and pooled [B, D]
    pooled: Tensor | None = None
    cond: Conditioning | None = None  # Kontext context tokens (never noised)
    x0_rejected: Tensor | None = None  # preference pairs: the rejected image's packed latents

    def text(self, dropped: list[bool], empty: tuple[Tensor, Tensor] | None) -> list[str] | tuple[Tensor, Tensor]:
        """Prompts (or cached embeddings) with the dropped ones emptied, for CFG training."""
        if self.txt is None:
            return [("" if d else p) for p, d in zip(self.prompts, dropped)]
        keep = torch.tensor([not d for d in dropped], device=self.txt.device)
        txt = torch.where(keep[:, None, None], self.txt, empty[0].to(self.txt))
        return txt, torch.where(keep[:, None], self.pooled, empty[1].to(self.pooled))


class EMA:
    """Exponential moving average of the trainable parameters (sharded alike under FSDP).

    The decay warms up, `min(decay, (1 + n) / (10 + n))` at the n-th update (as diffusers' EMA
    does): a long run averages over ~1 / (1 - decay) steps, and a short one (fine-tuning,
    distillation: a few hundred steps at 0.999) exports an average of its recent weights instead
    of one still dominated by its starting point."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, n: int) -> None:
        """The n-th update (0-based: the optimizer steps taken before this one)."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - self.decay_at(n))

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


class StopRequest:
    """SIGTERM (a scheduler's preemption, `kill`) asks the run to stop after the current step.

    Installed while `fit` runs in the main thread; under torchrun the ranks agree (any rank's
    request stops all of them at the same step), so the saved state is whole.
    """

    def __init__(self):
        self.asked = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._ask)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def _ask(self, signum, frame) -> None:
        self.asked = True

    def now(self, env: D.DistEnv) -> bool:
        if not env.distributed:
            return self.asked
        flag = torch.tensor(float(self.asked), device=env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay: linear warmup, constant, then (if `cooldown`) linear decay to 0 at `steps`."""
    scale = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.cooldown > 0:
        scale = min(scale, (cfg.steps - step) / cfg.cooldown)
    return cfg.lr * max(0.0, scale)


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
        if cfg.data_workers < 0 or cfg.checkpoint_every < 1:
            raise UserError(f"need data_workers >= 0 and checkpoint_every >= 1, got {cfg.data_workers} and "
                            f"{cfg.checkpoint_every}")  # fmt: skip
        self.micro = cfg.batch_size // (self.env.world * cfg.grad_accum)
        self.pipe = init or Pipeline.from_config(cfg.model, seed=cfg.seed)
        self.pipe.check_size(cfg.image_size, cfg.image_size)
        self.pipe.to(self.env.device)
        if self.pipe.autoencoder is not None:
            self.pipe.autoencoder.requires_grad_(False).eval()
        self.pipe.transformer.requires_grad_(not cfg.freeze_transformer)  # (a copy of a frozen teacher comes frozen)
        if cfg.lora_rank:  # adapters on a frozen base; the extra input columns of a widened img_in train in full
            full = ("img_in.weight",) if cfg.model.channel_cond else ()
            apply_lora(self.pipe.transformer, cfg.lora_rank, cfg.lora_alpha or None, cfg.lora_targets, full)
        trains_text = cfg.train_text_encoder and isinstance(cfg.model.text, EmbeddedTextParams)
        self.pipe.text_encoder.requires_grad_(trains_text)

        opts = DataOptions.of(cfg)
        self.data = Batches(cfg.dataset, opts, cfg.batch_size, self.env.rank, self.env.world)
        starts = [(m * self.env.world + self.env.rank) * self.micro for m in range(cfg.grad_accum)]
        slices = [(lo, lo + self.micro) for lo in starts]
        self.prefetch = Prefetcher(self.data, cfg.data_workers, slices) if cfg.data_workers else None
        self.val_batch = min(cfg.val_samples, 64)
        val_opts = dataclasses.replace(opts, seed=cfg.seed + VAL_SEED_OFFSET, length=cfg.val_samples)
        self.val_data = Batches(cfg.dataset, val_opts, self.val_batch) if cfg.val_every else None
        self.empty_text = next((s.empty for s in self.data.sources if getattr(s, "empty", None) is not None), None)
        if all(isinstance(s, CachedSource) for s in self.data.sources) and self.pipe.autoencoder is not None:
            self.pipe.autoencoder.encoder = None  # training reads latents: only the decoder (sample grids) stays
        self.frozen_text_state = None
        cached_text = all(isinstance(s, CachedSource) and s.empty is not None for s in self.data.sources)
        if cached_text and not trains_text:  # the encoder is not needed: keep only the sample prompts' embeddings
            if isinstance(cfg.model.text, EmbeddedTextParams):  # still exported with the model
                self.frozen_text_state = {k: v.clone() for k, v in self.pipe.text_encoder.state_dict().items()}
            self.pipe.text_encoder = PrecomputedText(self.pipe.text_encoder, [*cfg.sample_prompts, ""])

        denoiser = Denoiser(self.pipe)
        blocks = [*self.pipe.transformer.double_blocks, *self.pipe.transformer.single_blocks]
        self.model = D.parallelize(denoiser, blocks, self.env, cfg.parallel, cfg.compile)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.autocast = torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.step = 0
        self.validating = False
        self.buckets_seen: Counter = Counter()  # samples per bucket "HxW" trained on (this process)
        self.last_micro: list[float] = []
        if resume and (self.out / "train_state.pt").exists():
            self.load_state()

    # ----- batches ---------------------------------------------------------------------------
    def encode(self, samples: list[Sample]) -> Batch:
        """Samples of one bucket -> packed clean latents, prompts, micro-conditioning (and cached text)."""
        dev = self.env.device
        with torch.no_grad():
            if samples[0].latent is not None:
                z = torch.stack([s.latent for s in samples]).to(dev)
            else:
                z = self.pipe.encode_images(torch.stack([s.image for s in samples]).to(dev))
        p = self.cfg.model.patch
        micro = torch.tensor([s.micro for s in samples], dtype=torch.float32, device=dev)
        batch = Batch(pack(z.float(), p), z.shape[2] // p, z.shape[3] // p, [s.caption for s in samples], micro)
        if samples[0].txt is not None:
            batch.txt = torch.stack([s.txt for s in samples]).to(dev)
            batch.pooled = torch.stack([s.pooled for s in samples]).to(dev)
        if samples[0].context:
            with torch.no_grad():
                ctx = [self.pipe.encode_images(torch.stack([s.context[j] for s in samples]).to(dev)).float()
                       for j in range(len(samples[0].context))]  # fmt: skip
            batch.cond = kontext(ctx, p, self.cfg.model.context_offset)
        if samples[0].mask is not None:  # fill: the masked image's latents and the mask as channels
            mask = torch.stack([s.mask for s in samples]).to(dev)
            images = torch.stack([s.image for s in samples]).to(dev)
            with torch.no_grad():
                masked = self.pipe.encode_images(images * (1 - mask)).float()
            batch.cond = fill(masked, mask, self.cfg.model.downsample, p)
        if samples[0].control is not None:
            with torch.no_grad():
                ctl = self.pipe.encode_images(torch.stack([s.control for s in samples]).to(dev)).float()
            batch.cond = control(ctl, p)
        if samples[0].reference is not None:  # Redux: the reference image's pooled latents
            with torch.no_grad():
                z = self.pipe.encode_images(torch.stack([s.reference for s in samples]).to(dev)).float()
            m = self.cfg.model
            batch.cond = Conditioning(image_features=latent_features(z, m.redux_grid, m.redux_patch))
        has = "fill" if samples[0].mask is not None else "control" if samples[0].control is not None else ""
        if has != self.cfg.model.channel_cond:
            need = {"fill": "fill data (--data fills)", "control": "control data (--data controls:edges)", "": "no"}
            raise UserError(f"model '{self.cfg.model.name}' takes {need[self.cfg.model.channel_cond]} input channels, "
                            f"but the data gives {has or 'none'}")  # fmt: skip
        return batch

    def samples(self, step: int, lo: int, hi: int) -> list[Sample]:
        """This rank's samples [lo, hi) of the step's global batch (made ahead by workers if any)."""
        return (self.prefetch or self.data).get(step, lo, hi)

    def batch(self, step: int, micro: int) -> tuple[Batch, list[str] | tuple[Tensor, Tensor], Tensor, Tensor]:
        """This rank's micro-batch -> batch, text (CFG dropout applied), noise, t; seeded per global position."""
        lo = (micro * self.env.world + self.env.rank) * self.micro
        b = self.encode(self.samples(step, lo, lo + self.micro))
        self.buckets_seen[f"{int(b.micro[0, 4])}x{int(b.micro[0, 5])}"] += len(b.prompts)
        self.last_micro = b.micro.mean(0).tolist()
        noise, ts, dropped = [], [], []
        mu = flux_mu(b.x0.shape[1]) if self.cfg.resolution_shift else None
        for j in range(self.micro):
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_000_007 + step * self.cfg.batch_size + lo + j)
            noise.append(torch.randn(b.x0.shape[1:], generator=g))
            ts.append(sample_timesteps(1, g, self.cfg.timestep_sampler, self.cfg.logit_mean, self.cfg.logit_std, mu))
            dropped += [d == "" for d in drop_text(["x"], self.cfg.text_dropout, g)]
        return b, b.text(dropped, self.empty_text), torch.stack(noise).to(b.x0), torch.cat(ts).to(b.x0)

    def loss(self, b: Batch, text, noise: Tensor, t: Tensor) -> Tensor:
        """Mean rectified-flow loss of one batch."""
        n = b.x0.shape[0]
        ids = image_ids(n, b.h, b.w, device=b.x0.device)
        g = torch.ones(n, device=b.x0.device) if self.cfg.model.flux.guidance_embed else None
        with self.autocast:
            pred = self.model(interpolate(b.x0, noise, t), ids, text, t, g, b.micro, b.cond)
        return rectified_flow_loss(pred, b.x0, noise).mean()

    def train_step(self) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        total = torch.zeros((), device=env.device)
        for micro in range(cfg.grad_accum):
            loss = self.loss(*self.batch(self.step, micro)) / cfg.grad_accum
            loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update(self.step)
        self.step += 1
        micro = dict(zip((f"micro_{k}" for k in MICRO_FIELDS), self.last_micro))
        return {"loss": D.all_reduce_mean(total, env).item(), "grad_norm": float(grad_norm), "lr": lr_at(self.step - 1, cfg),
                **micro}  # fmt: skip

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss on the fixed validation set at `val_timesteps` evenly spaced t (fixed noise, no dropout).

        The shapes world validates on held-out scenes (another seed); finite sources on a fixed
        selection of their own samples.
        """
        k, total, count = self.cfg.val_timesteps, 0.0, 0
        self.validating = True  # objectives with their own randomness (distillation) fix it while validating
        for j in range(-(-self.cfg.val_samples // self.val_batch)):
            b = self.encode(self.val_data.get(j, 0, self.val_batch))
            text = b.text([False] * len(b.prompts), None)
            g = torch.Generator().manual_seed(self.cfg.seed + VAL_SEED_OFFSET + j)
            noise = torch.randn(b.x0.shape, generator=g).to(b.x0)
            for i in range(k):
                t = torch.full((b.x0.shape[0],), (i + 0.5) / k, device=b.x0.device)
                total += self.loss(b, text, noise, t).item() * b.x0.shape[0]
            count += b.x0.shape[0] * k
        self.validating = False
        return total / count

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
            if self.cfg.lora_rank:  # the adapters alone, and the model with them merged
                if self.env.is_main:
                    save_lora(self.pipe.transformer, path.with_name(f"lora_step_{self.step:07d}.safetensors"),
                              self.cfg.model.name)  # fmt: skip
                merge_lora(self.pipe.transformer)
            sd = {k: v for k, v in D.full_model_state(self.model).items() if "lora_" not in k}
            if self.cfg.lora_rank:
                unmerge_lora(self.pipe.transformer)
        if self.env.is_main:
            comps = {"transformer": {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}}
            if self.frozen_text_state is not None:
                comps["text_encoder"] = self.frozen_text_state
            elif isinstance(self.cfg.model.text, EmbeddedTextParams):
                comps["text_encoder"] = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
            if self.pipe.autoencoder is not None:
                comps["autoencoder"] = self.pipe.autoencoder.state_dict()
            if self.pipe.redux is not None:
                comps["redux"] = {k.removeprefix("redux."): v for k, v in sd.items() if k.startswith("redux.")}
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
            logger.log({"step": 0, "val_loss": self.validation_loss()})  # (the EMA equals the weights here)
        logger.log({"step": self.step, "data": cfg.dataset, "bucket_histogram": self.data.histogram()})
        t0, last = time.perf_counter(), self.step
        with StopRequest() as request:
            while self.step < stop:
                metrics = self.train_step()
                metrics["step"] = self.step
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                interrupted = request.now(self.env)
                last_step = self.step == stop or interrupted
                if cfg.val_every and (self.step % cfg.val_every == 0 or last_step):
                    metrics["val_loss"] = self.validation_loss()
                    if self.ema:  # the exported model's (EMA weights) too
                        with self.ema.swapped():
                            metrics["val_loss_ema"] = self.validation_loss()
                if self.step % cfg.log_every == 0 or "val_loss" in metrics or last_step:
                    metrics["steps_per_s"] = (self.step - last) / (time.perf_counter() - t0)
                    logger.log(metrics)
                    t0, last = time.perf_counter(), self.step
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.sample_grid()
                if self.step % cfg.checkpoint_every == 0 or last_step:
                    self.export()
                    self.save_state()
                if interrupted:
                    logger.log({"step": self.step, "stopped": "SIGTERM: state saved; rerun the command to resume"})
                    if self.env.is_main:
                        print(f"stopped by SIGTERM at step {self.step}; state saved in {self.out}, rerun to resume")
                    break
        bar.close()
        if self.prefetch:
            self.prefetch.close()
        skipped = self.data.skipped
        logger.log({"step": self.step, "buckets_seen": dict(self.buckets_seen), "skipped": dict(skipped)})
        if skipped and self.env.is_main:
            print(f"data: skipped {sum(skipped.values())} samples ({dict(skipped)})")
        logger.close()
        if self.env.distributed:  # no rank returns (and tears its process group down) while another is mid-collective
            torch.distributed.barrier()
        return metrics
