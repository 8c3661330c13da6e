"""Typed configs, the named model registry and the training recipes.

- `ModelConfig`: transformer + autoencoder (or pixel space) + text encoder, checked for
  consistency at construction. `MODELS` maps a name to a function returning one; it also
  feeds the CLI's `--model` choices.
- `TrainConfig`: every training hyperparameter, documented where it is declared.
  `RECIPES` maps a name to a function returning a whole `TrainConfig`; variants call a
  base recipe and change a few fields.
- `to_json` / `from_json`: the config stored in every checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from flowfactory.errors import UserError
from flowfactory.models.autoencoder import AutoEncoderParams
from flowfactory.models.flux import FluxParams
from flowfactory.models.text import DualTextParams, EmbeddedTextParams, TextParams


def input_channels(latent_channels: int, patch: int, downsample: int, channel_cond: str) -> int:
    """Channels per input token: the noisy latents, plus the fill (masked-image latents + the
    f x f mask of each latent pixel) or control (control-image latents) channels."""
    ch = latent_channels * patch**2
    extra = {"": 0, "fill": ch + downsample**2 * patch**2, "control": ch}
    if channel_cond not in extra:
        raise ValueError(f"channel_cond must be '', 'fill' or 'control', got '{channel_cond}'")
    return ch + extra[channel_cond]


@dataclass
class ModelConfig:
    name: str
    flux: FluxParams
    ae: AutoEncoderParams | None  # None: pixel space, the image itself (3 channels) is the latent
    text: TextParams
    patch: int = 2  # latent pixels per token side (FLUX packs 2x2 latent patches)
    resolution: int = 1024  # default image side for generation (the training resolution)
    micro_cond: int = 0  # SDXL micro-conditioning: channels per size (0: off; vec_in_dim grows by 6x)
    channel_cond: str = ""  # "": noisy tokens only; "fill": + masked-image latents + mask; "control": + control latents
    context_offset: int = 1  # RoPE index step between context images (FLUX.1 Kontext 1, FLUX.2 10)
    max_refs: int = 4  # most context images one call may give
    schedule_shift: bool = True  # sample with the resolution-shifted schedule (few-step students: off)
    schedule_mu: float = 0.0  # > 0: that fixed shift mu instead of FLUX.1's resolution-dependent one
    redux_grid: int = 0  # image variation (Redux): image tokens per side from pooled latents (0: no Redux)
    redux_patch: int = 1  # Redux: latent pixels per token side (1: the cell's mean; > 1: flattened patches + positions)

    def __post_init__(self):
        ch = self.latent_channels * self.patch**2
        if self.flux.out_channels != ch:
            raise ValueError(f"{self.name}: out_channels {self.flux.out_channels} != latent channels x patch^2 = {ch}")
        if self.flux.in_channels != self.input_channels:
            raise ValueError(f"{self.name}: in_channels {self.flux.in_channels} != {self.input_channels} for "
                             f"channel_cond '{self.channel_cond}'")  # fmt: skip
        if self.flux.context_in_dim != self.text.dim:
            raise ValueError(f"{self.name}: context_in_dim {self.flux.context_in_dim} != text dim {self.text.dim}")
        if self.flux.vec_in_dim != self.text.pooled_dim + 6 * self.micro_cond:
            raise ValueError(f"{self.name}: vec_in_dim {self.flux.vec_in_dim} != pooled dim {self.text.pooled_dim}"
                             f" + 6 x micro_cond {self.micro_cond}")  # fmt: skip

    @property
    def latent_channels(self) -> int:
        return self.ae.z_channels if self.ae else 3

    @property
    def downsample(self) -> int:
        return self.ae.downsample if self.ae else 1

    @property
    def input_channels(self) -> int:
        return input_channels(self.latent_channels, self.patch, self.downsample, self.channel_cond)

    @property
    def stride(self) -> int:
        """Image pixels per token side: images must be multiples of it."""
        return (self.ae.downsample if self.ae else 1) * self.patch


def flux1_dev() -> ModelConfig:
    return ModelConfig("flux1-dev", FluxParams(), AutoEncoderParams(), DualTextParams())


def flux1_schnell() -> ModelConfig:
    cfg = flux1_dev()
    return dataclasses.replace(
        cfg, name="flux1-schnell", flux=dataclasses.replace(cfg.flux, guidance_embed=False), text=DualTextParams(max_len=256),
        schedule_shift=False,
    )


def _small(name: str, hidden: int, heads: int, depth: int, single: int, axes: list[int], ae, text, resolution: int):
    ch = (ae.z_channels if ae else 3) * 4
    flux = FluxParams(
        in_channels=ch, out_channels=ch, vec_in_dim=text.pooled_dim, context_in_dim=text.dim, hidden_size=hidden,
        num_heads=heads, depth=depth, depth_single_blocks=single, axes_dim=axes, guidance_embed=False,
    )  # fmt: skip
    return ModelConfig(name, flux, ae, text, resolution=resolution)


def tiny() -> ModelConfig:
    """Unit-test size: ~0.1M parameters, pixel space, 16x16 images -> 64 tokens."""
    text = EmbeddedTextParams(vocab_size=512, dim=32, depth=1, num_heads=2, max_len=12, pooled_dim=32)
    return _small("tiny", 32, 2, 1, 1, [4, 6, 6], None, text, 16)


def with_micro_cond(cfg: ModelConfig, dim: int = 16) -> ModelConfig:
    """The same model taking SDXL micro-conditioning (`dim` channels per size) through `vector_in`."""
    flux = dataclasses.replace(cfg.flux, vec_in_dim=cfg.text.pooled_dim + 6 * dim)
    return dataclasses.replace(cfg, name=f"{cfg.name}-micro", flux=flux, micro_cond=dim)


def with_channel_cond(cfg: ModelConfig, kind: str, name: str | None = None) -> ModelConfig:
    """The same model with the fill or control input layout (a wider `img_in`)."""
    flux = dataclasses.replace(cfg.flux, in_channels=input_channels(cfg.latent_channels, cfg.patch, cfg.downsample, kind))
    return dataclasses.replace(cfg, name=name or f"{cfg.name}-{kind}", flux=flux, channel_cond=kind)


def tiny_ae() -> AutoEncoderParams:
    return AutoEncoderParams(resolution=32, ch=16, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, norm_groups=8,
                             scale_factor=1.0, shift_factor=0.0)  # fmt: skip


def tiny_latent() -> ModelConfig:
    """`tiny` on a tiny f=2 autoencoder (tests of the latent path)."""
    cfg = tiny()
    return _small("tiny-latent", 32, 2, 1, 1, [4, 6, 6], tiny_ae(), cfg.text, 16)


def demo() -> ModelConfig:
    """CPU-trainable: ~8M parameters on an f=4 autoencoder, 64x64 images -> 8x8 = 64 tokens."""
    ae = AutoEncoderParams(resolution=64, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8, norm_groups=8,
                           scale_factor=1.0, shift_factor=0.0)  # fmt: skip
    text = EmbeddedTextParams(vocab_size=4096, dim=128, depth=2, num_heads=4, max_len=16, pooled_dim=128)
    return _small("demo", 256, 4, 2, 4, [8, 28, 28], ae, text, 64)


def flux_100m() -> ModelConfig:
    """GPU ladder rung: ~100M-parameter transformer on the FLUX.1 autoencoder and text encoders."""
    return ModelConfig("flux-100m", FluxParams(hidden_size=768, num_heads=12, depth=2, depth_single_blocks=6,
                                               axes_dim=[8, 28, 28], guidance_embed=False),
                       AutoEncoderParams(), DualTextParams(), resolution=512)  # fmt: skip


def flux_1b() -> ModelConfig:
    """GPU ladder rung: ~1B-parameter transformer on the FLUX.1 autoencoder and text encoders."""
    return ModelConfig("flux-1b", FluxParams(hidden_size=2048, num_heads=16, depth=4, depth_single_blocks=6,
                                             guidance_embed=False),
                       AutoEncoderParams(), DualTextParams(), resolution=512)  # fmt: skip


MODELS: dict[str, Callable[[], ModelConfig]] = {
    "flux1-dev": flux1_dev,
    "flux1-schnell": flux1_schnell,
    "tiny": tiny,
    "tiny-latent": tiny_latent,
    "tiny-micro": lambda: with_micro_cond(tiny(), 8),
    "tiny-fill": lambda: with_channel_cond(tiny_latent(), "fill", "tiny-fill"),
    "tiny-control": lambda: with_channel_cond(tiny_latent(), "control", "tiny-control"),
    "flux1-kontext-dev": lambda: dataclasses.replace(flux1_dev(), name="flux1-kontext-dev"),
    "flux1-fill-dev": lambda: with_channel_cond(flux1_dev(), "fill", "flux1-fill-dev"),
    "flux1-canny-dev": lambda: with_channel_cond(flux1_dev(), "control", "flux1-canny-dev"),
    "flux1-depth-dev": lambda: with_channel_cond(flux1_dev(), "control", "flux1-depth-dev"),
    "demo": demo,
    "flux-100m": flux_100m,
    "flux-1b": flux_1b,
}


def model_config(name: str) -> ModelConfig:
    if name not in MODELS:
        raise UserError(f"unknown model '{name}' (choose from: {', '.join(MODELS)})")
    return MODELS[name]()


@dataclass
class TrainConfig:
    model: ModelConfig
    dataset: str = "shapes"  # data spec: shapes, folder:DIR, webdataset:URLS, preferences:FILE, cache:DIR, A@w+B@w
    dataset_size: int = 0  # shapes world: 0 an endless stream; N a fixed set of N scenes, cycled
    buckets: bool = False  # aspect-ratio buckets of ~image_size^2 pixels (each batch from one bucket)
    max_aspect: float = 2.0  # widest bucket aspect ratio
    random_crop: bool = True  # random crops (recorded as micro-conditioning); else centred
    tombstones: str = ""  # deletion list honoured by every source ("" = the default list)
    data_workers: int = 0  # worker processes making the coming batches (map-style data; 0: inline)
    t2i_ratio: float = 0.2  # edit-pair data: share of plain text-to-image batches (context dropped)
    guidance_min: float = 1.0  # guidance distillation: scales drawn uniformly from [min, max]
    guidance_max: float = 5.0
    freeze_transformer: bool = False  # train only the other modules (a Redux encoder)
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on a frozen transformer
    lora_alpha: float = 0.0  # adapter scale alpha / rank (0: alpha = rank)
    lora_targets: str = "attention"  # "attention", "all-linear" or a regex of linear-layer names
    teacher_steps: int = 16  # LADD: solver steps of the teacher's samples (the "real" latents)
    teacher_guidance: float = 3.0  # LADD: the teacher's guidance scale for them
    ladd_d_skip: float = 0.95  # LADD: skip the discriminator update while its batch accuracy is at least this
    ladd_t_hat_mean: float = 1.0  # LADD: re-noising level t_hat ~ logit-normal(mean, 1) (lower: less noise)
    ladd_d_lr_mult: float = 1.0  # LADD: the discriminator heads' learning rate as a multiple of the student's
    ladd_distill_weight: float = 0.0  # LADD: weight of ||x0_hat - x0||^2 on reflow pairs (0: adversarial only)
    ladd_adv_weight: float = 1.0  # LADD: weight of the adversarial loss (0: the distillation term alone)
    ladd_schedule_shift: bool = False  # LADD: the student trains at and samples the resolution-shifted schedule
    ladd_on_policy: bool = False  # LADD distillation term: inputs from the student's own few-step path, not reflow
    ladd_path_grad: bool = False  # LADD on-policy: backpropagate the distillation term through that path
    ladd_all_steps: bool = False  # LADD on-policy: grade every state of that path, not one random timestep per sample
    ladd_final_only: bool = False  # LADD path gradient: grade only the finished few-step sample, not a drawn state
    ladd_schedule_mu: float = 0.0  # LADD shifted schedule: > 0 fixes its shift mu (0: FLUX.1's for the resolution)
    image_size: int = 64  # training resolution (square); a multiple of the model's stride
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # global batch per optimizer step (over all ranks and accumulation steps)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    warmup: int = 100  # linear warmup steps, then constant
    cooldown: int = 0  # the last N steps decay the learning rate linearly to 0 (warmup-stable-decay)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    ema_decay: float = 0.999  # EMA of the weights used for samples and the exported model (0: off)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; master weights stay fp32)
    timestep_sampler: str = "logit-normal"  # "logit-normal" or "uniform"
    logit_mean: float = 0.0  # logit-normal m
    logit_std: float = 1.0  # logit-normal s
    resolution_shift: bool = True  # apply the FLUX resolution shift (mu linear in the token count)
    text_dropout: float = 0.1  # probability of an empty prompt, for classifier-free guidance
    train_text_encoder: bool = True  # the embedded encoder trains with the model; real ones stay frozen
    seed: int = 0
    val_every: int = 100  # steps between validation-loss evaluations (0: off)
    val_samples: int = 64  # held-out samples for the validation loss
    val_timesteps: int = 8  # evenly spaced t in (0, 1) at which the validation loss is taken
    sample_every: int = 500  # steps between sample grids (0: off)
    sample_prompts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square on a white background"])
    sample_steps: int = 20
    checkpoint_every: int = 500  # steps between checkpoints (the last step is always saved)
    export_dtype: str = "fp32"  # dtype of exported checkpoints: "fp32" or "bf16" (half the size; loads as fp32)
    log_every: int = 10
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp"
    compile: bool = False  # torch.compile the transformer blocks


def tiny_shapes() -> TrainConfig:
    """Seconds on a CPU: the unit-test recipe."""
    return TrainConfig(model=tiny(), dataset_size=256, image_size=16, steps=200, batch_size=16, lr=2e-3, warmup=20,
                       ema_decay=0.0, val_every=50, val_samples=32, sample_every=0, checkpoint_every=100,
                       sample_steps=8, log_every=10)  # fmt: skip


def shapes_demo() -> TrainConfig:
    """The shipped demo model: the `demo` size on the shapes world at 64x64 (~1 s/step on 2 CPU cores)."""
    return TrainConfig(model=demo(), image_size=64, steps=3000, batch_size=32, lr=5e-4, warmup=200,
                       ema_decay=0.999, val_every=500, sample_every=1000, sample_steps=20,
                       sample_prompts=["a red circle", "two blue squares", "a green triangle above a yellow cross",
                                       "the digit 7 in cyan", "the robot", "a large striped purple circle"],
                       checkpoint_every=500, export_dtype="bf16")  # fmt: skip


def shapes_edit() -> TrainConfig:
    """Kontext mid-training of the demo model on shapes-world edit pairs (20% text-to-image batches), the
    shipped edit model's first run: `flowfactory train --recipe shapes-edit --init flowfactory/assets/shapes-demo.safetensors`
    (3,000 steps, the last 600 a linear cooldown); its second run continues that result with
    `--steps 2400 --cooldown 800 --lr 1.5e-4 --seed 1` (README, "The shipped edit model")."""
    return dataclasses.replace(shapes_demo(), dataset="edits", t2i_ratio=0.2, steps=3000, lr=3e-4, warmup=100,
                               cooldown=600, sample_every=0)  # fmt: skip


def shapes_dev() -> TrainConfig:
    """Guidance distillation of the demo model into its `dev` tier (teacher: the shipped model); the
    defaults are the shipped `dev`'s run (2,000 steps, cooldown 300)."""
    return dataclasses.replace(shapes_demo(), steps=2000, lr=1e-4, warmup=50, cooldown=300, sample_every=0,
                               guidance_min=1.0, guidance_max=5.0)  # fmt: skip


def shapes_dpo() -> TrainConfig:
    """DPO of the demo model on analyzer-judged pairs (`align judge`, then `align dpo`)."""
    return dataclasses.replace(shapes_demo(), steps=300, batch_size=16, lr=2e-5, warmup=20, ema_decay=0.0,
                               sample_every=0, val_every=0, checkpoint_every=100)  # fmt: skip


def tiny_dev() -> TrainConfig:
    """Guidance distillation at unit-test size."""
    return dataclasses.replace(tiny_shapes(), steps=60, lr=2e-3, val_every=20, checkpoint_every=1000)


def shapes_schnell() -> TrainConfig:
    """LADD of the demo model into its 1-4 step `schnell` tier (teacher: the shipped model), with the
    settings of the shipped tier: the distillation term (weight 100) on the student's finished 4-step sample
    from the teacher's noise (on-policy, final only), backpropagated through its whole path, the shifted
    4-step schedule, re-noising t_hat ~ logit-normal(0, 1) and the discriminator at 10x the student's rate.
    Start the student from the teacher's `dev` tier (`--student`): from a copy
    of the teacher LADD scored lower, and on the reflow line instead of the student's path it lost to its
    start (benchmarks/results/shapes-schnell/ladd-variants.md)."""
    return dataclasses.replace(shapes_demo(), steps=480, batch_size=16, lr=1e-4, warmup=20, cooldown=120,
                               sample_every=0, val_every=250, val_samples=32, teacher_steps=16, ladd_t_hat_mean=0.0,
                               ladd_d_lr_mult=10.0, ladd_distill_weight=100.0, ladd_schedule_shift=True,
                               ladd_on_policy=True, ladd_path_grad=True, ladd_final_only=True)  # fmt: skip


def shapes_edit_dev() -> TrainConfig:
    """Guidance distillation of the edit model into its `dev` tier, on edit pairs (and 20% text to
    image): `flowfactory distill guidance --teacher flowfactory/assets/shapes-edit.safetensors`."""
    return dataclasses.replace(shapes_dev(), dataset="edits", t2i_ratio=0.2, steps=500, cooldown=150, val_every=100,
                               val_samples=32)  # fmt: skip


def shapes_edit_schnell() -> TrainConfig:
    """LADD of the edit model into its few-step `schnell` tier, on edit pairs (and 20% text to image), with
    the text-to-image tier's settings; start from the edit model's `dev` tier (`--student`): from a copy
    of the teacher the student lost the source image (benchmarks/results/shapes-edit-schnell/ladd-variants.md)."""
    return dataclasses.replace(shapes_schnell(), dataset="edits", t2i_ratio=0.2, steps=240, cooldown=60, val_every=100,
                               ladd_on_policy=False, ladd_path_grad=False, ladd_final_only=False)  # fmt: skip


def tiny_schnell() -> TrainConfig:
    """LADD at unit-test size."""
    return dataclasses.replace(tiny_shapes(), steps=6, batch_size=4, lr=1e-3, val_every=0, teacher_steps=2,
                               checkpoint_every=1000)  # fmt: skip


def shapes_fill() -> TrainConfig:
    """Fill (inpainting / outpainting) mid-training of the demo model:
    `flowfactory train --recipe shapes-fill --init flowfactory/assets/shapes-demo.safetensors`."""
    return dataclasses.replace(shapes_demo(), model=with_channel_cond(demo(), "fill"), dataset="fills", steps=2000,
                               lr=3e-4, warmup=100, cooldown=400, sample_every=0)  # fmt: skip


def shapes_canny_lora() -> TrainConfig:
    """Control-LoRA (edge maps) on the frozen demo model: rank 16 adapters on every linear layer of
    the blocks + the widened img_in (the shipped file: `--steps 1500 --cooldown 300`)."""
    return dataclasses.replace(shapes_demo(), model=with_channel_cond(demo(), "control"), dataset="controls:edges",
                               steps=2000, lr=5e-4, warmup=100, cooldown=400, sample_every=0, lora_rank=16,
                               lora_targets="all-linear", train_text_encoder=False)  # fmt: skip


def shapes_redux() -> TrainConfig:
    """Redux (image variation) on the frozen demo model: only the image-token projection trains, on
    pairs of one scene's objects in two layouts (`--init` the shipped model)."""
    return dataclasses.replace(shapes_demo(), model=dataclasses.replace(demo(), name="demo-redux", redux_grid=4),
                               dataset="variations", steps=1500, lr=1e-3, warmup=50, cooldown=300, sample_every=0,
                               freeze_transformer=True, train_text_encoder=False, text_dropout=1.0)  # fmt: skip


def shapes_redux_patches() -> TrainConfig:
    """`shapes-redux` with patch tokens: each of the 4 x 4 tokens is its cell's 4 x 4 latent pixels
    (128 features at 64 px) plus a learned position, instead of the cell's 8-channel mean."""
    cfg = shapes_redux()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, redux_patch=4))


def tiny_edits() -> TrainConfig:
    """Kontext training at unit-test size (`tiny-latent` on edit pairs at 16 px)."""
    return dataclasses.replace(tiny_shapes(), model=tiny_latent(), dataset="edits", dataset_size=0, steps=40,
                               val_every=0, batch_size=8)  # fmt: skip


def tiny_buckets() -> TrainConfig:
    """`tiny-micro` on your own images with aspect buckets: `--data folder:DIR` (tests, quick trials)."""
    return dataclasses.replace(tiny_shapes(), model=with_micro_cond(tiny(), 8), dataset="folder:images", buckets=True,
                               steps=50, val_every=0, dataset_size=0)  # fmt: skip


def tiny_staged() -> list[tuple[str, TrainConfig]]:
    """Two stages of one model: pre-train at 16 px, then mid-train at 32 px, each from the last."""
    pre = dataclasses.replace(tiny_shapes(), steps=60, val_every=0)
    mid = dataclasses.replace(pre, image_size=32, steps=30, batch_size=8, lr=1e-3, warmup=5)
    return [("pre", pre), ("mid", mid)]


Recipe = TrainConfig | list[tuple[str, TrainConfig]]  # one stage, or named stages run in order
RECIPES: dict[str, Callable[[], Recipe]] = {"tiny-shapes": tiny_shapes, "shapes-demo": shapes_demo,
                                            "tiny-buckets": tiny_buckets, "tiny-staged": tiny_staged,
                                            "shapes-edit": shapes_edit, "tiny-edits": tiny_edits,
                                            "shapes-dev": shapes_dev, "tiny-dev": tiny_dev, "shapes-dpo": shapes_dpo,
                                            "shapes-schnell": shapes_schnell, "shapes-edit-dev": shapes_edit_dev,
                                            "shapes-edit-schnell": shapes_edit_schnell, "tiny-schnell": tiny_schnell,
                                            "shapes-fill": shapes_fill, "shapes-canny-lora": shapes_canny_lora,
                                            "shapes-redux": shapes_redux,
                                            "shapes-redux-patches": shapes_redux_patches}  # fmt: skip


def recipe_stages(name: str) -> list[tuple[str, TrainConfig]]:
    """A recipe as its list of (stage name, config); a single-stage recipe has the stage name ""."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe '{name}' (choose from: {', '.join(RECIPES)})")
    r = RECIPES[name]()
    return r if isinstance(r, list) else [("", r)]


def recipe(name: str) -> TrainConfig:
    """A single-stage recipe's config (the last stage of a staged one)."""
    return recipe_stages(name)[-1][1]


# ---------------------------------------------------------------------------------------------
# JSON round trip. Union-typed fields carry their class name so the file alone rebuilds the model.

_TAGGED = {c.__name__: c for c in (EmbeddedTextParams, DualTextParams, AutoEncoderParams, FluxParams, ModelConfig)}


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {"__type__": type(obj).__name__, **{f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, (list, tuple)):
        return [_encode(x) for x in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        fields = {k: _decode(v) for k, v in obj.items() if k != "__type__"}
        if "__type__" in obj:
            cls = _TAGGED.get(obj["__type__"]) or (TrainConfig if obj["__type__"] == "TrainConfig" else None)
            if cls is None:
                raise UserError(f"unknown config type {obj['__type__']} in checkpoint metadata")
            if cls is TrainConfig and "betas" in fields:
                fields["betas"] = tuple(fields["betas"])
            return cls(**fields)
        return fields
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    return obj


def to_json(cfg: Any) -> str:
    return json.dumps(_encode(cfg))


def from_json(text: str) -> Any:
    return _decode(json.loads(text))
