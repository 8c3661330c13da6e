"""Training data sources behind one interface, chosen by a spec string in the recipe.

    shapes                     the procedural shapes world (endless)
    edits                      shapes-world edit pairs with their context images (Kontext training)
    fills                      shapes-world scenes with an inpainting / outpainting mask (fill training)
    controls:edges|depth       shapes-world scenes with their edge or depth map (control training)
    variations                 a scene and the same objects in another layout (Redux training)
    folder:PATH                an image folder (captions: metadata.jsonl, or sidecar .txt / .json)
    webdataset:URLS            tar shards, local or any URL webdataset opens ("shards/{000..015}.tar")
    preferences:FILE.jsonl     a preference export (the chosen image of each pair)
    cache:DIR                  latents (and frozen text embeddings) written by `flowfactory cache`
    A@0.7+B@0.3                a mixture: each global batch comes from one source, drawn by weight

A map-style source has `__len__`, `sample(i) -> Sample | None` (None: unreadable or deleted,
counted in `skipped`) and `bucket_of[i]`; a stream source has `stream(rank, world)`.
`flowfactory.data.batches.Batches` turns either into the global batch of a step, for every rank.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from flowfactory.data.buckets import Micro, make_buckets, nearest_bucket, resize_crop
from flowfactory.data.shapes import ShapesDataset
from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.errors import UserError
from flowfactory.images import ImageDecodeError, decode_rgb, to_tensor

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAPTION_KEYS = ("caption", "text", "prompt")


@dataclass
class Sample:
    caption: str
    micro: Micro  # SDXL micro-conditioning: orig_h, orig_w, crop_top, crop_left, target_h, target_w
    key: str  # stable id (relative path, shard key, ...)
    image: torch.Tensor | None = None  # [3, H, W] in [-1, 1]
    latent: torch.Tensor | None = None  # [C, h, w] (cached sources)
    txt: torch.Tensor | None = None  # [L, D] frozen text embedding (cached sources)
    pooled: torch.Tensor | None = None  # [D]
    hash: str = ""  # SHA-256 of the source file's bytes (for tombstones)
    context: list[torch.Tensor] | None = None  # Kontext: context images [3, H, W] (source, then references)
    rejected: torch.Tensor | None = None  # preference pairs: the rejected image (the chosen one is `image`)
    mask: torch.Tensor | None = None  # fill: [1, H, W], 1 = repaint
    control: torch.Tensor | None = None  # control: the control image [3, H, W]
    reference: torch.Tensor | None = None  # Redux: the image to make variations of [3, H, W]


@dataclass
class DataOptions:
    image_size: int  # square side; with buckets, the side of the constant pixel area
    stride: int  # bucket sides are multiples of it (the model's stride)
    seed: int = 0
    length: int = 0  # shapes only: 0 endless, else a fixed set of N scenes
    buckets: bool = False  # aspect-ratio buckets (else every image is resized and cropped square)
    max_ratio: float = 2.0  # widest bucket aspect ratio
    random_crop: bool = True  # else centred crops
    tombstones: str = ""  # tombstone file ("" = the default list)
    t2i_ratio: float = 0.2  # edit pairs: share of plain text-to-image batches (context dropped)

    @classmethod
    def of(cls, cfg) -> "DataOptions":
        """The data options of a `TrainConfig`."""
        return cls(cfg.image_size, cfg.model.stride, cfg.seed, cfg.dataset_size, cfg.buckets, cfg.max_aspect,
                   cfg.random_crop, cfg.tombstones, cfg.t2i_ratio)  # fmt: skip

    def bucket_list(self) -> list[tuple[int, int]]:
        if self.buckets:
            return make_buckets(self.image_size, self.stride, self.max_ratio)
        return [(self.image_size, self.image_size)]


def caption_of(meta: dict) -> str:
    for k in CAPTION_KEYS:
        if isinstance(meta.get(k), str):
            return meta[k]
    return ""


def _warn_skip(skipped: Counter, key: str, why: str) -> None:
    skipped[why] += 1
    warnings.warn(f"skipping {key}: {why} ({sum(skipped.values())} skipped so far)", stacklevel=3)


class _Decoded:
    """Shared by sources that decode image bytes: buckets, crops, tombstones, skip counts."""

    def __init__(self, opts: DataOptions):
        self.opts = opts
        self.buckets = opts.bucket_list()
        self.tombstones = Tombstones(opts.tombstones or None)
        self.skipped: Counter = Counter()

    def make_sample(self, data: bytes, caption: str, key: str, crop_seed: int) -> Sample | None:
        h = content_hash(data)
        if self.tombstones.is_deleted(hash=h, id=key):
            self.skipped["deleted"] += 1
            return None
        try:
            im = decode_rgb(data)
        except ImageDecodeError as e:
            _warn_skip(self.skipped, key, f"unreadable image ({e})")
            return None
        bucket = self.buckets[nearest_bucket(im.height, im.width, self.buckets)]
        rng = np.random.default_rng([self.opts.seed, crop_seed]) if self.opts.random_crop else None
        im, micro = resize_crop(im, bucket, rng)
        return Sample(caption=caption, micro=micro, key=key, image=to_tensor(im), hash=h)


class ShapesSource:
    """The shapes world as a source: sample i is scene i (no buckets: square, uncropped)."""

    def __init__(self, opts: DataOptions):
        self.data = ShapesDataset(opts.image_size, opts.seed, opts.length)
        self.bucket_of = None  # endless stream by index
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.data)

    def sample(self, i: int) -> Sample:
        img, text = self.data[i]
        s = self.data.image_size
        return Sample(caption=text, micro=(s, s, 0, 0, s, s), key=f"shapes/{self.data.seed}/{i}", image=img)


class EditSource:
    """Shapes-world edit pairs for Kontext training (endless): the target image, the instruction as
    caption, and the context images (the source, then the reference for style / character edits).

    Batches need one context count, so the kind of a whole block of `block` consecutive indices
    (a global batch; `Batches` sets it) is drawn first: plain text-to-image with probability
    `t2i_ratio`, else edits without a reference or with one, in KontextBench's proportions.
    """

    WITH_REFERENCE = ("style", "character")

    def __init__(self, opts: DataOptions):
        from flowfactory.data.edits import CATEGORIES

        self.opts, self.block = opts, 1
        self.shapes = ShapesDataset(opts.image_size, opts.seed, 0)
        self.bucket_of = None
        self.skipped: Counter = Counter()
        self.groups = {False: [c for c in CATEGORIES if c not in self.WITH_REFERENCE], True: list(self.WITH_REFERENCE)}
        total = sum(CATEGORIES.values())
        self.p_ref = sum(CATEGORIES[c] for c in self.WITH_REFERENCE) / total
        self.weights = {k: np.array([CATEGORIES[c] for c in v], float) for k, v in self.groups.items()}

    def __len__(self) -> int:
        return 2**62

    def _image(self, scene) -> torch.Tensor:
        from flowfactory.data.shapes import render

        return torch.from_numpy(render(scene, self.opts.image_size)).permute(2, 0, 1).float() / 127.5 - 1

    def sample(self, i: int) -> Sample:
        from flowfactory.data.edits import sample_edit

        s = self.opts.image_size
        block = np.random.default_rng([self.opts.seed, 17, i // self.block])
        if block.random() < self.opts.t2i_ratio:
            img, text = self.shapes[i]
            return Sample(caption=text, micro=(s, s, 0, 0, s, s), key=f"shapes/{self.opts.seed}/{i}", image=img)
        with_ref = bool(block.random() < self.p_ref)
        cats, w = self.groups[with_ref], self.weights[with_ref]
        rng = np.random.default_rng([self.opts.seed, 23, i])
        pair = sample_edit(rng, cats[rng.choice(len(cats), p=w / w.sum())])
        context = [self._image(pair.source)] + ([self._image(pair.reference)] if with_ref else [])
        return Sample(caption=pair.instruction, micro=(s, s, 0, 0, s, s), key=f"edits/{self.opts.seed}/{i}",
                      image=self._image(pair.target), context=context)  # fmt: skip


class StructureSource:
    """Shapes-world scenes with a fill mask (`fills`: the box of one object; outpainting borders in
    a quarter of the samples) or a control image (`controls:edges`, `controls:depth`)."""

    def __init__(self, opts: DataOptions, kind: str, encoder: str = ""):
        from flowfactory.data.structure import CONTROL_ENCODERS

        if kind == "controls" and encoder not in CONTROL_ENCODERS:
            raise UserError(f"unknown control encoder '{encoder}' (choose from: {', '.join(CONTROL_ENCODERS)})")
        self.opts, self.kind, self.encoder = opts, kind, CONTROL_ENCODERS.get(encoder)
        self.shapes = ShapesDataset(opts.image_size, opts.seed, opts.length)
        self.bucket_of = None
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.shapes)

    def sample(self, i: int) -> Sample:
        from flowfactory.data.structure import object_mask

        scene, text = self.shapes.scene(i)
        img, _ = self.shapes[i]
        s = self.opts.image_size
        out = Sample(caption=text, micro=(s, s, 0, 0, s, s), key=f"{self.kind}/{self.opts.seed}/{i}", image=img)
        rng = np.random.default_rng([self.opts.seed, 31, i])
        if self.kind == "fills":
            if rng.random() < 0.25 or not scene.objects:  # outpainting: a border band
                m = np.ones((s, s), np.float32)
                k = int(rng.integers(s // 8, s // 3))
                side = int(rng.integers(4))
                keep = {0: np.s_[k:, :], 1: np.s_[:-k, :], 2: np.s_[:, k:], 3: np.s_[:, :-k]}[side]
                m[keep] = 0
            else:
                m = object_mask(scene, int(rng.integers(len(scene.objects))), s)
            out.mask = torch.from_numpy(m)[None]
        else:
            out.control = torch.from_numpy(self.encoder(scene, s)).permute(2, 0, 1).float() / 127.5 - 1
        return out


class VariationSource:
    """Redux training (`variations`): the target is a scene, the reference the same objects (same
    background) in another layout; no caption, so the image tokens carry the content."""

    def __init__(self, opts: DataOptions):
        self.opts, self.bucket_of, self.skipped = opts, None, Counter()

    def __len__(self) -> int:
        return 2**62

    def sample(self, i: int) -> Sample:
        from flowfactory.data.shapes import Scene, place, render, sample_scene

        rng = np.random.default_rng([self.opts.seed, 53, i])
        while True:
            scene = sample_scene(rng)
            moved: list = []
            for o in scene.objects:
                p = place(rng, o, moved)
                if p is None:
                    break
                moved.append(p)
            if len(moved) == len(scene.objects):
                break
        s = self.opts.image_size

        def tensor(sc):
            return torch.from_numpy(render(sc, s)).permute(2, 0, 1).float() / 127.5 - 1

        return Sample(caption="", micro=(s, s, 0, 0, s, s), key=f"variations/{self.opts.seed}/{i}",
                      image=tensor(scene), reference=tensor(Scene(scene.background, tuple(moved))))  # fmt: skip


class ImageFolder(_Decoded):
    """A folder of images with captions: `metadata.jsonl` (`file_name` + `text`/`caption`/`prompt`,
    the Hugging Face imagefolder layout) or a sidecar `NAME.txt` / `NAME.json` next to each image.
    A path to a `.jsonl` manifest (e.g. from `flowfactory curate`) reads only the files it lists.

    Reading each file's header gives its size (for the bucket); files that are not images are
    skipped with a counted warning, and so are files that fail to decode later.
    """

    def __init__(self, root: str | Path, opts: DataOptions):
        super().__init__(opts)
        root = Path(root)
        if root.suffix == ".jsonl" and root.is_file():
            self.root = root.parent
            entries = [(self.root / rel, cap) for rel, cap in _read_manifest(root).items()]
        elif root.is_dir():
            self.root = root
            meta = _read_manifest(root / "metadata.jsonl") if (root / "metadata.jsonl").exists() else {}
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            entries = [(p, meta.get(p.relative_to(root).as_posix(), None)) for p in files]
            entries = [(p, _sidecar_caption(p) if cap is None else cap) for p, cap in entries]
        else:
            raise UserError(f"image folder {root} does not exist")
        self._index(entries)
        if not self.files:
            raise UserError(f"no readable images in {root} (looked for {', '.join(sorted(IMAGE_EXTS))})")

    def _index(self, entries: list[tuple[Path, str]]) -> None:
        self.files: list[Path] = []
        self.captions: list[str] = []
        self.bucket_of: list[int] = []
        for path, caption in entries:
            size = _header_size(path)
            if size is None:
                _warn_skip(self.skipped, str(path), "not a readable image")
                continue
            self.files.append(path)
            self.captions.append(caption)
            self.bucket_of.append(nearest_bucket(size[0], size[1], self.buckets))

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, i: int) -> Sample | None:
        path = self.files[i]
        try:
            data = path.read_bytes()
        except OSError as e:
            _warn_skip(self.skipped, str(path), f"cannot read ({e})")
            return None
        return self.make_sample(data, self.captions[i], path.relative_to(self.root).as_posix(), i)


def _read_manifest(path: Path) -> dict[str, str]:
    """JSONL of {file_name, text|caption|prompt} -> {file_name: caption}; bad lines warned and skipped."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[str(rec["file_name"])] = caption_of(rec)
        except (json.JSONDecodeError, KeyError, TypeError):
            warnings.warn(f"{path}:{n}: not a JSON object with a file_name: line ignored", stacklevel=3)
    return out


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) as displayed (EXIF rotation applied), from the header only; None if not an image."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
            return (h, w) if w > 0 and h > 0 else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _sidecar_caption(path: Path) -> str:
    txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
    if txt.exists():
        return txt.read_text(errors="replace").strip()
    if js.exists():
        try:
            return caption_of(json.loads(js.read_text()))
        except (json.JSONDecodeError, AttributeError):
            return ""
    return ""


class PreferenceSource(ImageFolder):
    """A preference export (JSONL: prompt, chosen, rejected, source; paths relative to the file):
    `image` is the chosen image, `rejected` the other one, resized and cropped the same way
    (text-to-image training uses the chosen images; DPO both)."""

    def __init__(self, path: str | Path, opts: DataOptions):
        _Decoded.__init__(self, opts)
        path = Path(path)
        if not path.is_file():
            raise UserError(f"preference file {path} does not exist")
        self.root = path.parent
        entries, rejected = [], {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                rec = json.loads(line)
                entries.append((self.root / rec["chosen"], str(rec.get("prompt", ""))))
                rejected[self.root / rec["chosen"]] = self.root / rec["rejected"]
            except (json.JSONDecodeError, KeyError, TypeError):
                _warn_skip(self.skipped, f"{path}:{n}", "not a preference record")
        self._index(entries)
        self.rejected = [rejected[f] for f in self.files]
        if not self.files:
            raise UserError(f"no usable pairs in {path}")

    def sample(self, i: int) -> Sample | None:
        s = super().sample(i)
        if s is None:
            return None
        try:
            data = self.rejected[i].read_bytes()
        except OSError as e:
            _warn_skip(self.skipped, str(self.rejected[i]), f"cannot read ({e})")
            return None
        other = self.make_sample(data, s.caption, s.key + "#rejected", i)
        if other is None:
            return None
        if other.image.shape != s.image.shape:
            other.image = torch.nn.functional.interpolate(other.image[None], size=s.image.shape[1:], mode="bicubic",
                                                          align_corners=False)[0].clamp(-1, 1)  # fmt: skip
        s.rejected = other.image
        return s


class WebDatasetSource(_Decoded):
    """webdataset tar shards, streamed: shards split over ranks (torchrun) and DataLoader workers.

    A sample is the files sharing a key: the image (jpg/jpeg/png/webp) and its caption (txt, or
    json with caption/text/prompt). With as many shards as ranks x workers or more, every sample
    is read exactly once per epoch.
    """

    def __init__(self, urls: str, opts: DataOptions):
        super().__init__(opts)
        self.urls = urls
        self.bucket_of = None

    def stream(self, rank: int = 0, world: int = 1, epoch: int = 0) -> Iterator[Sample]:
        import braceexpand
        import webdataset as wds

        shards = list(braceexpand.braceexpand(self.urls))
        mine = shards[rank::world]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            mine = mine[info.id :: info.num_workers]
        pipe = wds.WebDataset(mine, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                              handler=wds.warn_and_continue)  # fmt: skip
        for n, rec in enumerate(pipe):
            key = rec.get("__key__", str(n))
            image = next((rec[k] for k in ("jpg", "jpeg", "png", "webp") if k in rec), None)
            if image is None:
                _warn_skip(self.skipped, key, "no image in the sample")
                continue
            caption = rec["txt"].decode("utf-8", "replace").strip() if "txt" in rec else ""
            if not caption and "json" in rec:
                try:
                    caption = caption_of(json.loads(rec["json"]))
                except (json.JSONDecodeError, AttributeError):
                    pass
            s = self.make_sample(image, caption, key, hash((epoch, key)) & 0x7FFFFFFF)
            if s is not None:
                yield s


# ---------------------------------------------------------------------------------------------
# Specs and batches


def parse_spec(spec: str) -> list[tuple[str, str, float]]:
    """"folder:photos@0.7+shapes@0.3" -> [("folder", "photos", 0.7), ("shapes", "", 0.3)]."""
    out = []
    for part in spec.split("+"):
        part, _, weight = part.partition("@")
        kind, _, path = part.partition(":")
        if kind not in SOURCES:
            raise UserError(f"unknown data source '{kind}' in '{spec}' (choose from: {', '.join(SOURCES)})")
        if kind not in ("shapes", "edits", "fills", "variations") and not path:
            raise UserError(f"data source '{kind}' needs a path: '{kind}:PATH'")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"bad mixture weight '{weight}' in '{spec}'") from None
        if w <= 0:
            raise UserError(f"mixture weights must be positive, got {w} in '{spec}'")
        out.append((kind, path, w))
    return out


def build_source(kind: str, path: str, opts: DataOptions):
    if kind == "shapes":
        return ShapesSource(opts)
    if kind == "edits":
        return EditSource(opts)
    if kind == "variations":
        return VariationSource(opts)
    if kind in ("fills", "controls"):
        return StructureSource(opts, kind, path)
    if kind == "cache":
        from flowfactory.data.cache import CachedSource

        return CachedSource(path, opts)
    return SOURCES[kind](path, opts)


SOURCES = {"shapes": ShapesSource, "edits": EditSource, "fills": StructureSource, "controls": StructureSource,
           "variations": VariationSource,
           "folder": ImageFolder, "webdataset": WebDatasetSource,
           "preferences": PreferenceSource, "cache": None}  # fmt: skip
