"""Workers: pull jobs from the store, batch compatible ones into one forward pass, write results.

Endpoints of the public API map onto a kind of conditioning and a tier:

| endpoint | runs |
| --- | --- |
| flux-dev | text to image, tier dev |
| flux-pro, flux-pro-1.1 | text to image, tier pro |
| flux-schnell | text to image, tier schnell (a flowfactory extension of the public API) |
| flux-kontext-pro | Kontext editing (input_image, input_image_2..4) |
| flux-pro-1.0-fill | inpainting (image + mask) |
| flux-pro-1.0-canny, flux-pro-1.0-depth | control image |

A tier missing from the manifest falls back to the next slower one (schnell -> dev -> pro), and
the result says which ran. Size rule: a request of W x H pixels (256-1440) is generated at the
model's pixel area (its training resolution squared) with the same aspect ratio, sides
rounded to the model's stride, then resized to exactly W x H.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flowfactory.checkpoint import atomic_write
from flowfactory.errors import UserError
from flowfactory.images import decode_rgb, to_tensor, to_uint8
from flowfactory.serve.guard import Moderator
from flowfactory.serve.store import Job, JobStore

ENDPOINTS = {
    "flux-dev": ("t2i", "dev"), "flux-pro": ("t2i", "pro"), "flux-pro-1.1": ("t2i", "pro"),
    "flux-schnell": ("t2i", "schnell"),
    "flux-kontext-pro": ("edit", "pro"), "flux-kontext-dev": ("edit", "dev"), "flux-kontext-schnell": ("edit", "schnell"),
    "flux-pro-1.0-fill": ("fill", "pro"),
    "flux-pro-1.0-canny": ("canny", "pro"), "flux-pro-1.0-depth": ("depth", "pro"),
}  # fmt: skip
FALLBACK = {"schnell": ["schnell", "dev", "pro"], "dev": ["dev", "pro"], "pro": ["pro"]}
LORA_SEP = " + "  # a ModelSet path "BASE + LORA": the base checkpoint with the LoRA file applied
MAX_INPUT_PIXELS = 20_000_000  # the public API's limit on input images


@dataclass
class ModelSet:
    """Checkpoints per conditioning kind and tier, with default steps / guidance; loaded once, on demand."""

    checkpoints: dict[str, dict[str, tuple[str, int, float]]]  # kind -> tier -> (path, steps, guidance)
    device: str = "cpu"
    _loaded: dict[str, object] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, kind: str, tier: str) -> tuple[str, str, int, float]:
        """-> (tier that runs, checkpoint, steps, guidance); UserError if the server has none."""
        tiers = self.checkpoints.get(kind, {})
        for t in FALLBACK[tier]:
            if t in tiers:
                return (t, *tiers[t])
        raise UserError(f"this server has no model for '{kind}' requests")

    def pipeline(self, path: str):
        """The loaded model of a checkpoint path, or of `BASE + LORA` (a base with a LoRA applied)."""
        from flowfactory.pipeline import Pipeline

        with self._lock:
            if path not in self._loaded:
                base, _, lora = path.partition(LORA_SEP)
                pipe = Pipeline.from_checkpoint(base)
                self._loaded[path] = (pipe.with_lora(lora) if lora else pipe).to(self.device).eval()
            return self._loaded[path]

    @classmethod
    def shipped(cls, assets: Path, device: str = "cpu") -> "ModelSet":
        """The shipped demo models: the tiers of `tiers.json` (text to image) and `tiers-edit.json`
        (editing) when present, else each base model as pro."""
        from flowfactory.tiers import load_tiers

        ckpts: dict[str, dict] = {}
        for kind, manifest in (("t2i", "tiers.json"), ("edit", "tiers-edit.json")):
            if (assets / manifest).exists():
                ckpts[kind] = {t.name: (str(t.checkpoint), t.steps, t.guidance)
                               for t in load_tiers(assets / manifest).values()}  # fmt: skip
        for kind, name in (("t2i", "shapes-demo"), ("edit", "shapes-edit"), ("fill", "shapes-fill"),
                           ("canny", "shapes-canny"), ("depth", "shapes-depth")):  # fmt: skip
            if kind not in ckpts and (assets / f"{name}.safetensors").exists():
                ckpts[kind] = {"pro": (str(assets / f"{name}.safetensors"), 28, 3.0)}
        lora = assets / "shapes-canny-lora.safetensors"  # the edge-map Control-LoRA on the base model
        if "canny" not in ckpts and lora.exists() and (assets / "shapes-demo.safetensors").exists():
            ckpts["canny"] = {"pro": (f"{assets / 'shapes-demo.safetensors'}{LORA_SEP}{lora}", 28, 3.0)}
        return cls(ckpts, device)


def generation_size(width: int, height: int, resolution: int, stride: int) -> tuple[int, int]:
    """The documented size rule: same aspect, the model's pixel area, sides multiples of the stride."""
    scale = resolution / math.sqrt(width * height)
    return (max(stride, round(height * scale / stride) * stride), max(stride, round(width * scale / stride) * stride))


def decode_input(b64: str, what: str) -> Image.Image:
    """A base64 image from a request -> RGB; UserError (a 422) for bad base64, non-images, bombs."""
    if b64.startswith(("http://", "https://")):
        raise UserError(f"{what}: image URLs are not fetched; send the image as base64")
    try:
        data = base64.b64decode(b64.partition(",")[2] if b64.startswith("data:") else b64, validate=True)
    except (ValueError, TypeError):
        raise UserError(f"{what}: not valid base64") from None
    if not data:
        raise UserError(f"{what}: empty image")
    from flowfactory.images import ImageDecodeError

    try:
        return decode_rgb(data, max_pixels=MAX_INPUT_PIXELS)
    except ImageDecodeError as e:
        raise UserError(f"{what}: not a readable image ({e})") from None


class Heartbeat(threading.Thread):
    """Every `every_s`: this process's heartbeat in the store (when it runs workers), and the re-queue of
    running jobs whose worker process died (`JobStore.recover`), so a crashed worker's jobs finish
    elsewhere without a restart."""

    def __init__(self, store: JobStore, beat: bool = True, every_s: float = 2.0, stale_s: float = 60.0):
        super().__init__(daemon=True, name="heartbeat")
        self.store, self.beat, self.every_s, self.stale_s = store, beat, every_s, stale_s
        self.stop = threading.Event()
        if beat:  # before any worker of this process claims a job
            store.heartbeat()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                if self.beat:
                    self.store.heartbeat()
                self.store.recover(self.stale_s)
            except Exception:  # a busy database this round: try again next round
                traceback.print_exc()


class Worker(threading.Thread):
    def __init__(self, store: JobStore, models: ModelSet, moderator: Moderator, results: Path, batch_size: int = 8,
                 poll_s: float = 0.05, name: str = "worker"):  # fmt: skip
        super().__init__(daemon=True, name=name)
        self.store, self.models, self.moderator = store, models, moderator
        self.results, self.batch_size, self.poll_s = Path(results), batch_size, poll_s
        self.stop = threading.Event()
        self.batches: list[int] = []  # sizes of the batches run (telemetry, tests)

    def run(self) -> None:
        while not self.stop.is_set():
            jobs = self.store.claim(self.batch_size)
            if not jobs:
                self.stop.wait(self.poll_s)
                continue
            try:
                self.run_batch(jobs)
            except Exception as e:  # a failed batch fails its jobs, never the worker
                traceback.print_exc()
                for j in jobs:
                    self.store.finish(j.id, "Error", error=f"generation failed: {e}")

    def run_batch(self, jobs: list[Job]) -> None:
        self.batches.append(len(jobs))
        r0 = jobs[0].request
        kind, tier = ENDPOINTS[jobs[0].endpoint]
        ran, path, steps, guidance = self.models.resolve(kind, tier)
        pipe = self.models.pipeline(path)
        width, height = r0["width"], r0["height"]
        gh, gw = generation_size(width, height, pipe.cfg.resolution, pipe.cfg.stride)
        steps = min(r0.get("steps") or steps, 50)
        guidance = r0["guidance"] if r0.get("guidance") is not None else guidance
        cond = self.condition(pipe, kind, jobs, gh, gw)
        start = time.time()
        with torch.no_grad():
            images, _ = pipe.generate([j.request["prompt"] for j in jobs], gh, gw, steps=steps, guidance=guidance,
                                      seeds=[j.request["seed"] for j in jobs], cond=cond)  # fmt: skip
        end = time.time()
        for job, img in zip(jobs, to_uint8(images)):
            out = Image.fromarray(img).resize((width, height), Image.BICUBIC)
            tol = job.request.get("safety_tolerance", 2)
            decision = self.moderator.image(out, tol)
            self.store.log_moderation(job.id, job.key_id, "output image", decision.allowed, decision.reason)
            if not decision.allowed:
                self.store.finish(job.id, "Content Moderated", error=decision.reason)
                continue
            fmt = job.request.get("output_format", "jpeg")
            name = f"{job.id}.{'png' if fmt == 'png' else 'jpg'}"
            buf = io.BytesIO()
            out.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
            atomic_write(self.results / name, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
            self.store.finish(job.id, "Ready", result={
                "sample": f"{job.request['_base_url']}v1/results/{name}", "file": name, "prompt": job.request["prompt"],
                "seed": job.request["seed"], "start_time": start, "end_time": end, "duration": end - start,
                "tier": ran, "steps": steps, "guidance": guidance, "generated_size": [gw, gh],
                "batch_size": len(jobs)})  # fmt: skip

    def condition(self, pipe, kind: str, jobs: list[Job], h: int, w: int):
        """Image conditioning of a batch (edit / fill / control jobs run one at a time)."""
        if kind == "t2i":
            return None
        (job,) = jobs
        r = job.request

        def tensor(key: str, size=(h, w)):
            im = decode_input(r[key], key).resize((size[1], size[0]), Image.BICUBIC)
            return to_tensor(im)[None]

        if kind == "edit":
            refs = [k for k in ("input_image", "input_image_2", "input_image_3", "input_image_4") if r.get(k)]
            return pipe.context([tensor(k) for k in refs])
        if kind == "fill":
            mask = decode_input(r["mask"], "mask").convert("L").resize((w, h), Image.NEAREST)
            m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
            return pipe.fill_condition(tensor("image"), m)
        return pipe.control_condition(tensor("control_image"))
