"""Autoencoder training: L1 + L2 reconstruction + KL, optional patch-GAN (hinge) after a warm start.

    flowfactory train-ae --model demo --out runs/ae --steps 3000

At the end the latent statistics of a held-out batch set `shift_factor` / `scale_factor`
(latent mean and 1/std), so the transformer sees roughly unit-variance latents, as
FLUX.1's factors do. The result is a checkpoint with the `autoencoder` component.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from flowfactory.checkpoint import save_checkpoint
from flowfactory.config import ModelConfig
from flowfactory.data.batches import Batches
from flowfactory.data.sources import DataOptions
from flowfactory.errors import UserError
from flowfactory.images import save_grid
from flowfactory.models.autoencoder import AutoEncoder
from flowfactory.train.logs import MetricsLogger


@dataclass
class AETrainConfig:
    model: ModelConfig  # its `ae` field is what is trained
    dataset: str = "shapes"
    image_size: int = 64
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    kl_weight: float = 1e-6
    gan_weight: float = 0.0  # 0: no adversarial loss
    gan_start: int = 1000  # step from which the patch-GAN loss applies
    seed: int = 0
    log_every: int = 50


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake logit per overlapping patch."""

    def __init__(self, ch: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, layers):
            mods += [nn.Conv2d(ch * 2 ** (i - 1), ch * 2**i, 4, 2, 1), nn.GroupNorm(8, ch * 2**i), nn.LeakyReLU(0.2)]
        mods.append(nn.Conv2d(ch * 2 ** (layers - 1), 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def kl_loss(moments: Tensor) -> Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean()


def train_autoencoder(cfg: AETrainConfig, out: str | Path, device: str = "cpu", progress: bool = True) -> Path:
    if cfg.model.ae is None:
        raise UserError(f"model '{cfg.model.name}' works in pixel space: it has no autoencoder to train")
    out = Path(out)
    torch.manual_seed(cfg.seed)
    ae = AutoEncoder(dataclasses.replace(cfg.model.ae, scale_factor=1.0, shift_factor=0.0)).to(device)
    disc = PatchDiscriminator().to(device) if cfg.gan_weight > 0 else None
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) if disc else None
    data = Batches(cfg.dataset, DataOptions(cfg.image_size, 1, cfg.seed), cfg.batch_size)
    logger = MetricsLogger(out)
    for step in tqdm(range(1, cfg.steps + 1), disable=not progress, desc="train-ae"):
        x = torch.stack([s.image for s in data.get(step - 1, 0, cfg.batch_size)]).to(device)
        moments = ae.encoder(x)
        rec = ae.decoder(ae.reg(moments, sample=True))
        l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.kl_weight * kl_loss(moments)
        gan_on = disc is not None and step >= cfg.gan_start
        if gan_on:
            loss = loss - cfg.gan_weight * disc(rec).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics = {"step": step, "loss": loss.item(), "l1": l1.item(), "l2": l2.item()}
        if gan_on:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            metrics["d_loss"] = d_loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(metrics)
    logger.close()
    ae.eval()
    with torch.no_grad():  # latent statistics on held-out images -> shift and scale
        val = Batches(cfg.dataset, DataOptions(cfg.image_size, 1, cfg.seed + 1_000_003, length=256), 256)
        x = torch.stack([s.image for s in val.get(0, 0, 256)]).to(device)
        z = ae.reg(ae.encoder(x))
        rec = ae.decoder(z)
        psnr = (10 * torch.log10(4 / F.mse_loss(rec, x))).item()  # range [-1, 1]: peak-to-peak 2
        shift, scale = z.mean().item(), 1.0 / z.std().item()
        save_grid(torch.cat([x[:8], rec[:8]]), out / "reconstructions.png", cols=8)
    params = dataclasses.replace(cfg.model.ae, scale_factor=scale, shift_factor=shift)
    model = dataclasses.replace(cfg.model, ae=params)
    path = out / "autoencoder.safetensors"
    save_checkpoint(path, model, {"autoencoder": ae.state_dict()}, {"val_psnr": f"{psnr:.3f}"})
    logger = MetricsLogger(out)
    logger.log({"step": cfg.steps, "val_psnr": psnr, "scale_factor": scale, "shift_factor": shift})
    logger.close()
    return path
