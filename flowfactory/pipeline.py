"""The model bundle (transformer + autoencoder + text encoder) and text-to-image generation.

Token preparation follows the reference `sampling.py`: latents `[B, C, H, W]` are packed
into 2x2 patches `[B, (H/2)(W/2), 4C]`; image ids are `(0, row, col)`, text ids are zeros.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from flowfactory.checkpoint import load_checkpoint, load_into, save_checkpoint
from flowfactory import conditioning
from flowfactory.conditioning import (Conditioning, conditioned, image_ids, inference_micro, pack, text_ids, unpack,
                                     with_micro)  # fmt: skip
from flowfactory.config import ModelConfig, model_config
from flowfactory.errors import UserError
from flowfactory.flow.sampling import SOLVERS, get_schedule, noise_like, true_cfg
from flowfactory.models.autoencoder import AutoEncoder
from flowfactory.models.flux import Flux, init_weights
from flowfactory.models.redux import ReduxEncoder, ReduxParams, latent_features
from flowfactory.models.text import EmbeddedTextParams, build_text_encoder


@dataclass
class GenerateRecord:
    prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    solver: str
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline(nn.Module):
    def __init__(self, cfg: ModelConfig, transformer: Flux, autoencoder: AutoEncoder | None, text_encoder: nn.Module,
                 redux: ReduxEncoder | None = None):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.transformer = transformer
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        if redux is None and cfg.redux_grid:
            redux = ReduxEncoder(ReduxParams(cfg.latent_channels * cfg.redux_patch**2, cfg.flux.context_in_dim,
                                             cfg.redux_grid, positions=cfg.redux_patch > 1))  # fmt: skip
        self.redux = redux

    # ----- construction and files -----------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig, seed: int = 0) -> "Pipeline":
        """Freshly initialised weights (for training from scratch)."""
        torch.manual_seed(seed)
        ae = AutoEncoder(cfg.ae) if cfg.ae else None
        return cls(cfg, init_weights(Flux(cfg.flux)), ae, build_text_encoder(cfg.text))

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | None = None, text_encoder_dirs: tuple[str, str] | None = None,
                        autoencoder_path: str | None = None) -> "Pipeline":  # fmt: skip
        """A flowfactory checkpoint, or a bare reference transformer file with `model` naming its config."""
        cfg, comps = load_checkpoint(path)
        if model is not None:
            model_config(model)  # an unknown name is an error even when the file names its own config
        if cfg is None:
            if model is None:
                raise UserError(f"{path} has no flowfactory metadata: name its config with --model")
            cfg = model_config(model)
            comps = {"transformer": comps["bare"]}
        if text_encoder_dirs is not None and not isinstance(cfg.text, EmbeddedTextParams):
            cfg.text.t5_path, cfg.text.clip_path = text_encoder_dirs
        with torch.device("meta"):
            transformer = Flux(cfg.flux)
        load_into(transformer, comps["transformer"], "transformer", path)
        ae = None
        if cfg.ae:
            ae_sd = comps.get("autoencoder")
            if ae_sd is None and autoencoder_path:
                _, ae_comps = load_checkpoint(autoencoder_path)
                ae_sd = next(iter(ae_comps.values()))
            if ae_sd is None:
                raise UserError(f"{path} has no autoencoder: give one with --autoencoder")
            with torch.device("meta"):
                ae = AutoEncoder(cfg.ae)
            load_into(ae, ae_sd, "autoencoder", path)
        text = build_text_encoder(cfg.text)
        if "text_encoder" in comps:
            load_into(text, comps["text_encoder"], "text encoder", path)
        pipe = cls(cfg, transformer, ae, text)
        if pipe.redux is not None:
            if "redux" not in comps:
                raise UserError(f"{path} names a Redux model but holds no redux weights")
            load_into(pipe.redux, comps["redux"], "redux", path)
        return pipe.eval()

    @classmethod
    def with_trained_autoencoder(cls, cfg: ModelConfig, path: str | Path, seed: int = 0) -> "Pipeline":
        """Fresh transformer and text encoder on a trained autoencoder (its scale / shift included)."""
        ae_cfg, comps = load_checkpoint(path)
        if ae_cfg is None or ae_cfg.ae is None or "autoencoder" not in comps:
            raise UserError(f"{path} is not a flowfactory autoencoder checkpoint (write one with train-ae)")
        if dataclasses.replace(ae_cfg.ae, scale_factor=0, shift_factor=0) != dataclasses.replace(
            cfg.ae, scale_factor=0, shift_factor=0
        ):
            raise UserError(f"{path}: its autoencoder shape differs from model '{cfg.name}'")
        pipe = cls.from_config(dataclasses.replace(cfg, ae=ae_cfg.ae), seed=seed)
        load_into(pipe.autoencoder, comps["autoencoder"], "autoencoder", path)
        return pipe

    def save(self, path: str | Path, extra_metadata: dict[str, str] | None = None) -> None:
        comps = {"transformer": self.transformer.state_dict()}
        if self.autoencoder is not None:
            comps["autoencoder"] = self.autoencoder.state_dict()
        if isinstance(self.cfg.text, EmbeddedTextParams):
            comps["text_encoder"] = self.text_encoder.state_dict()
        if self.redux is not None:
            comps["redux"] = self.redux.state_dict()
        save_checkpoint(path, self.cfg, comps, extra_metadata)

    # ----- data <-> tokens -----------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        s = self.cfg.stride
        if height <= 0 or width <= 0 or height % s or width % s:
            raise UserError(f"image size {height}x{width} is not a positive multiple of the model's stride {s}")

    def encode_images(self, images: Tensor) -> Tensor:
        """Pixels in [-1, 1] `[B, 3, H, W]` -> latents `[B, C, H/f, W/f]` (pixel space: unchanged)."""
        return self.autoencoder.encode(images) if self.autoencoder is not None else images

    def decode_latents(self, z: Tensor) -> Tensor:
        return self.autoencoder.decode(z) if self.autoencoder is not None else z

    def encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.text_encoder(prompts)

    def velocity(self, txt: Tensor, pooled: Tensor, h: int, w: int, guidance: float | None = None,
                 cond: Conditioning | None = None):  # fmt: skip
        """The transformer as a `velocity(x, t)` callable for a fixed prompt batch and token grid;
        `cond` adds context tokens, input channels or text tokens around it."""
        b = txt.shape[0]
        ids, tids = image_ids(b, h, w, device=txt.device), text_ids(txt)
        g = torch.full((b,), guidance, device=txt.device, dtype=txt.dtype) if guidance is not None else None

        def v(x: Tensor, t: float) -> Tensor:
            ts = torch.full((b,), t, device=x.device, dtype=x.dtype)
            return conditioned(self.transformer, x, ids, txt, tids, ts, pooled, g, cond)

        return v

    def widened(self, kind: str) -> "Pipeline":
        """This model with the fill or control input layout: `img_in` gains zero-initialised columns,
        so it computes what it did until they are trained (mid-training a fill / control model)."""
        from flowfactory.config import with_channel_cond
        from flowfactory.models.lora import widen_img_in

        cfg = with_channel_cond(self.cfg, kind)
        widen_img_in(self.transformer, cfg.flux.in_channels)
        self.transformer.params = cfg.flux
        return Pipeline(cfg, self.transformer, self.autoencoder, self.text_encoder, self.redux)

    def with_redux(self, grid: int, patch: int = 1) -> "Pipeline":
        """This model with a new (untrained) Redux encoder of `grid` x `grid` image tokens (each of
        `patch` x `patch` latent pixels): the start of Redux training on a frozen text-to-image model
        (`--recipe shapes-redux --init CKPT`)."""
        cfg = dataclasses.replace(self.cfg, name=f"{self.cfg.name}-redux", redux_grid=grid, redux_patch=patch)
        return Pipeline(cfg, self.transformer, self.autoencoder, self.text_encoder)

    def with_lora(self, path: str | Path) -> "Pipeline":
        """This model with a saved LoRA applied. A Control-LoRA (or fill LoRA) also carries a wider
        `img_in`: a plain base is widened to the layout that fits it first, so the small adapter
        file plus the shipped base make the control model. Another base: a clear error."""
        from flowfactory.config import input_channels
        from flowfactory.models.lora import load_lora, read_lora

        pipe = self
        width = read_lora(path)[1].get("img_in.weight", torch.empty(0, 0)).shape[1]
        if width > self.cfg.flux.in_channels and not self.cfg.channel_cond:
            c = self.cfg
            kinds = [k for k in ("control", "fill") if input_channels(c.latent_channels, c.patch, c.downsample, k) == width]
            if kinds:
                pipe = self.widened(kinds[0])
        load_lora(pipe.transformer, path, pipe.cfg.name)
        return pipe

    # ----- image conditioning (composed outside the network) -------------------------------------
    def _encode_condition(self, image: Tensor, what: str) -> Tensor:
        if image.ndim != 4 or image.shape[1] != 3:
            raise UserError(f"{what} must be an RGB image batch [B, 3, H, W], got shape {tuple(image.shape)}")
        self.check_size(image.shape[2], image.shape[3])
        device = next(self.transformer.parameters()).device
        with torch.no_grad():
            return self.encode_images(image.to(device)).float()

    def context(self, images: list[Tensor]) -> Conditioning:
        """Kontext / multi-reference: context images (any size, each a multiple of the stride)."""
        if len(images) > self.cfg.max_refs:
            raise UserError(f"{len(images)} reference images given; model '{self.cfg.name}' takes at most {self.cfg.max_refs}")
        return conditioning.kontext([self._encode_condition(im, "a context image") for im in images], self.cfg.patch,
                                    self.cfg.context_offset)  # fmt: skip

    def fill_condition(self, image: Tensor, mask: Tensor) -> Conditioning:
        """Inpainting / outpainting: `mask` `[B, 1, H, W]`, 1 (or > 0.5) where to paint."""
        if self.cfg.channel_cond != "fill":
            raise UserError(f"model '{self.cfg.name}' is not a fill model (it has no mask input)")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != image.shape[2:]:
            raise UserError(f"the mask is {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}: "
                            "they must have the same size")  # fmt: skip
        mask = (mask > 0.5).to(image.dtype)
        masked = self._encode_condition(image * (1 - mask), "the image")
        return conditioning.fill(masked, mask.to(masked.device), self.cfg.downsample, self.cfg.patch)

    def variation_features(self, image: Tensor) -> Tensor:
        """Redux: an image -> its latent features `[B, grid^2, C * patch^2]` (the encoder's input)."""
        if self.redux is None:
            raise UserError(f"model '{self.cfg.name}' has no image-variation (Redux) encoder")
        return latent_features(self._encode_condition(image, "the image"), self.cfg.redux_grid, self.cfg.redux_patch)

    def variation_condition(self, image: Tensor) -> Conditioning:
        """Redux: the image's tokens appended to the text stream."""
        with torch.no_grad():
            return Conditioning(txt=self.redux(self.variation_features(image)))

    def control_condition(self, image: Tensor) -> Conditioning:
        """Structural control (edge / depth map as an RGB image)."""
        if self.cfg.channel_cond != "control":
            raise UserError(f"model '{self.cfg.name}' is not a control model (it has no control input)")
        return conditioning.control(self._encode_condition(image, "the control image"), self.cfg.patch)

    # ----- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def initial_noise(self, seeds: list[int], height: int, width: int) -> Tensor:
        """The packed starting noise `[B, L, C]` that `sample_tokens` solves from, one seed per image."""
        lh, lw = height // self.cfg.downsample, width // self.cfg.downsample
        return pack(torch.cat([noise_like((1, self.cfg.latent_channels, lh, lw), s) for s in seeds]), self.cfg.patch)

    def sample_tokens(self, prompts: list[str], height: int, width: int, steps: int = 28, guidance: float = 3.5,
                      seed: int = 0, solver: str = "euler", shift: bool | None = None,
                      cond: Conditioning | None = None, timings: dict | None = None,
                      seeds: list[int] | None = None) -> Tensor:  # fmt: skip
        """Prompts -> packed clean latents `[B, L, C]` (the ODE solved from seeded noise).

        Guidance-embedding models take `guidance` in one pass per step; others use true CFG
        (two passes per step; `guidance` 1 turns it off). Image i uses seed `seed + i`, or `seeds[i]`.
        `shift` defaults to the model's `schedule_shift` (off for few-step students).
        """
        if any(not p.strip() for p in prompts) and (cond is None or cond.txt is None):  # Redux needs no text
            raise UserError("empty prompt: describe the image to generate")
        if solver not in SOLVERS:
            raise UserError(f"unknown solver '{solver}' (choose from: {', '.join(SOLVERS)})")
        if steps < 1:
            raise UserError(f"steps must be at least 1, got {steps}")
        self.check_size(height, width)
        if self.cfg.channel_cond and (cond is None or cond.channels is None):
            need = "a mask and an image" if self.cfg.channel_cond == "fill" else "a control image"
            raise UserError(f"model '{self.cfg.name}' needs {need}")
        timings = {} if timings is None else timings
        device = next(self.transformer.parameters()).device
        lh, lw = height // self.cfg.downsample, width // self.cfg.downsample
        h, w = lh // self.cfg.patch, lw // self.cfg.patch
        t0 = time.perf_counter()
        txt, pooled = self.encode_text(prompts)
        pooled = with_micro(pooled, inference_micro(len(prompts), height, width), self.cfg.micro_cond)
        embedded = self.cfg.flux.guidance_embed
        velocity = self.velocity(txt, pooled, h, w, guidance if embedded else None, cond)
        if not embedded and guidance != 1.0:
            txt_u, pooled_u = self.encode_text([""] * len(prompts))
            pooled_u = with_micro(pooled_u, inference_micro(len(prompts), height, width), self.cfg.micro_cond)
            velocity = true_cfg(velocity, self.velocity(txt_u, pooled_u, h, w, cond=cond), guidance)
        seeds = seeds if seeds is not None else [seed + i for i in range(len(prompts))]
        noise = self.initial_noise(seeds, height, width).to(device)
        timings["text_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        shift = self.cfg.schedule_shift if shift is None else shift
        x = SOLVERS[solver](velocity, noise, get_schedule(steps, h * w, shift=shift, mu=self.cfg.schedule_mu or None))
        timings["denoise_s"] = time.perf_counter() - t0
        return x

    @torch.no_grad()
    def generate(self, prompts: list[str], height: int, width: int, steps: int = 28, guidance: float = 3.5,
                 seed: int = 0, solver: str = "euler", shift: bool | None = None, autocast: torch.dtype | None = None,
                 cond: Conditioning | None = None, seeds: list[int] | None = None) -> tuple[Tensor, dict[str, float]]:  # fmt: skip
        """Prompts -> images in [-1, 1] `[B, 3, H, W]` and timings (see `sample_tokens`)."""
        device = next(self.transformer.parameters()).device
        timings: dict[str, float] = {}
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            x = self.sample_tokens(prompts, height, width, steps, guidance, seed, solver, shift, cond, timings, seeds)
            t0 = time.perf_counter()
            h, w = height // self.cfg.stride, width // self.cfg.stride
            images = self.decode_latents(unpack(x.float(), h, w, self.cfg.patch).to(x.dtype))
            timings["decode_s"] = time.perf_counter() - t0
        return images.float().clamp(-1, 1), timings

