"""Own data: folders, shards, aspect buckets with micro-conditioning, caching, curation, deletions."""

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers_data import aspect_folder, awkward_folder, picture, write_shards

from flowfactory.cli import main
from flowfactory.conditioning import MICRO_FIELDS
from flowfactory.config import recipe, tiny_latent
from flowfactory.data.buckets import BucketPlan, make_buckets, nearest_bucket
from flowfactory.data.cache import CachedSource, build_cache
from flowfactory.data.curate import CurateOptions, curate
from flowfactory.data.batches import Batches
from flowfactory.data.sources import DataOptions, ImageFolder, parse_spec
from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.checkpoint import load_checkpoint
from flowfactory.errors import UserError
from flowfactory.models.text import PrecomputedText
from flowfactory.pipeline import Pipeline
from flowfactory.train.logs import read_metrics
from flowfactory.train.trainer import Trainer


def test_buckets_are_stride_multiples_of_near_constant_area():
    buckets = make_buckets(64, 8, max_ratio=2.0)
    assert (64, 64) in buckets and len(buckets) >= 5
    for h, w in buckets:
        assert h % 8 == 0 and w % 8 == 0
        assert 0.75 * 64 * 64 <= h * w <= 64 * 64
        assert 0.5 <= h / w <= 2.0
    assert buckets[nearest_bucket(300, 600, buckets)][1] > buckets[nearest_bucket(300, 600, buckets)][0]
    assert buckets[nearest_bucket(100, 100, buckets)] == (64, 64)


def test_bucket_plan_batches_one_bucket_and_covers_the_epoch():
    bucket_of = [0] * 10 + [1] * 7 + [2] * 3
    plan = BucketPlan(bucket_of, batch_size=4, seed=0)
    seen = set()
    for step in range(plan.per_epoch):
        batch = plan.batch(step)
        assert len(batch) == 4 and len({bucket_of[i] for i in batch}) == 1
        seen.update(batch)
    assert seen == set(range(20))
    assert plan.batch(plan.per_epoch) != plan.batch(0) or plan.per_epoch == 1  # reshuffled next epoch
    assert BucketPlan(bucket_of, 4, 0).batch(3) == plan.batch(3)  # a pure function of (seed, step)


def test_awkward_files_are_converted_or_skipped_with_a_count(tmp_path):
    awkward_folder(tmp_path / "imgs")
    opts = DataOptions(image_size=16, stride=2, buckets=True, tombstones=str(tmp_path / "t.jsonl"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = ImageFolder(tmp_path / "imgs", opts)
        names = {p.name for p in src.files}
        assert "zero.jpg" not in names and "corrupt.png" not in names  # refused at scan
        samples = [src.sample(i) for i in range(len(src))]
    assert sum(src.skipped.values()) == 3  # zero-byte, corrupt, truncated
    assert any("truncated.png" in str(w.message) for w in caught)
    good = {s.key: s for s in samples if s is not None}
    assert set(good) == {"rgb.png", "rgb2.png", "cmyk.jpg", "grey16.png", "palette.png", "rgba.png", "huge.jpg"}
    for s in good.values():
        assert s.image.shape == (3, 16, 16) and s.image.min() >= -1 and s.image.max() <= 1
    assert good["huge.jpg"].micro[:2] == (3000, 3000)
    assert good["grey16.png"].image.std() > 0.1  # 16-bit data scaled, not clipped to white
    # batches over several epochs never fail: the truncated file is replaced by a same-bucket sample
    batches = Batches(f"folder:{tmp_path / 'imgs'}", opts, batch_size=4)
    for step in range(6):
        assert len(batches.get(step, 0, 4)) == 4


def test_folder_trains_with_buckets_and_logs_histogram_and_micro_conditioning(tmp_path):
    aspect_folder(tmp_path / "imgs")
    code = main(["train", "--recipe", "tiny-buckets", "--data", f"folder:{tmp_path / 'imgs'}", "--out",
                 str(tmp_path / "run"), "--steps", "6", "--tombstones", str(tmp_path / "t.jsonl"), "--json"])  # fmt: skip
    assert code == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    hist = next(r["bucket_histogram"] for r in rows if "bucket_histogram" in r)
    assert len(hist) >= 3 and sum(hist.values()) == 24
    last = next(r for r in rows if "loss" in r)
    assert {f"micro_{k}" for k in MICRO_FIELDS} <= set(last)
    seen = next(r["buckets_seen"] for r in rows if "buckets_seen" in r)
    assert sum(seen.values()) == 6 * 16 and len(seen) >= 2 and set(seen) <= set(hist)


def test_a_batch_never_mixes_buckets_and_micro_conditioning_is_recorded(tmp_path):
    aspect_folder(tmp_path / "imgs")
    opts = DataOptions(image_size=16, stride=2, buckets=True, tombstones=str(tmp_path / "t.jsonl"))
    batches = Batches(f"folder:{tmp_path / 'imgs'}", opts, batch_size=4)
    for step in range(12):
        samples = batches.get(step, 0, 4)
        assert len({s.image.shape for s in samples}) == 1
        for s in samples:
            oh, ow, top, left, th, tw = s.micro
            assert (th, tw) == tuple(s.image.shape[1:])
            assert 0 <= top <= max(0, round(oh * max(th / oh, tw / ow)) - th)


def test_micro_conditioning_model_generates_and_keeps_reference_shape_without_it():
    from flowfactory.config import model_config

    pipe = Pipeline.from_config(model_config("tiny-micro"))
    assert pipe.transformer.vector_in.in_layer.in_features == 32 + 6 * 8
    images, _ = pipe.generate(["a red circle"], 16, 24, steps=2)
    assert images.shape == (1, 3, 16, 24)
    assert Pipeline.from_config(model_config("tiny")).transformer.vector_in.in_layer.in_features == 32


def test_webdataset_torchrun_ranks_read_disjoint_complete_epoch(tmp_path):
    urls = write_shards(tmp_path / "shards", shards=4, per_shard=5)
    worker = Path(__file__).parent / "wds_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker), urls,
           str(tmp_path / "keys")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    k0, k1 = (json.loads((tmp_path / f"keys.{r}.json").read_text()) for r in (0, 1))
    assert len(k0) == len(set(k0)) and len(k1) == len(set(k1))
    assert not set(k0) & set(k1)
    assert set(k0) | set(k1) == {f"s{s:03d}_{j:03d}" for s in range(4) for j in range(5)}


def test_webdataset_source_trains_in_one_process(tmp_path):
    urls = write_shards(tmp_path / "shards", shards=2, per_shard=6)
    cfg = dataclasses.replace(recipe("tiny-shapes"), dataset=f"webdataset:{urls}", steps=3, batch_size=4, val_every=0,
                              tombstones=str(tmp_path / "t.jsonl"))  # fmt: skip
    metrics = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert metrics["step"] == 3 and metrics["loss"] > 0


def test_mixture_draws_whole_batches_by_weight(tmp_path):
    aspect_folder(tmp_path / "imgs", sizes=((32, 32),), per=4)
    opts = DataOptions(image_size=16, stride=2, tombstones=str(tmp_path / "t.jsonl"))
    batches = Batches(f"folder:{tmp_path / 'imgs'}@3+shapes@1", opts, batch_size=2)
    kinds = [batches.get(step, 0, 2)[0].key.startswith("shapes") for step in range(400)]
    assert 0.15 < sum(kinds) / 400 < 0.35
    with pytest.raises(UserError, match="unknown data source"):
        parse_spec("photos:x")
    with pytest.raises(UserError, match="needs a path"):
        parse_spec("folder")


@pytest.mark.parametrize("frozen_text", [False, True])
def test_training_from_the_cache_matches_raw_images(tmp_path, frozen_text):
    aspect_folder(tmp_path / "imgs", sizes=((32, 32), (24, 48)), per=4)
    cfg = dataclasses.replace(recipe("tiny-shapes"), model=tiny_latent(), image_size=16, buckets=True, batch_size=4,
                              dataset=f"folder:{tmp_path / 'imgs'}", val_every=0, tombstones=str(tmp_path / "t.jsonl"),
                              train_text_encoder=not frozen_text)  # fmt: skip
    raw = Trainer(cfg, tmp_path / "raw", progress=False)
    opts = DataOptions.of(cfg)
    build_cache(cfg.dataset, opts, raw.pipe, tmp_path / "cache", shard_size=3, text=frozen_text, progress=False)
    cached = Trainer(dataclasses.replace(cfg, dataset=f"cache:{tmp_path / 'cache'}"), tmp_path / "c", progress=False)
    cached.pipe.load_state_dict(raw.pipe.state_dict(), strict=False)
    assert cached.pipe.autoencoder.encoder is None  # not in memory while training from the cache
    assert isinstance(cached.pipe.text_encoder, PrecomputedText) == frozen_text  # nor a frozen text encoder
    with torch.no_grad():
        for step in range(4):
            a, b = raw.loss(*raw.batch(step, 0)).item(), cached.loss(*cached.batch(step, 0)).item()
            assert abs(a - b) < 1e-5 * abs(a), (step, a, b)
    assert cached.sample_grid().exists()  # sample grids still work without the encoders
    _, comps = load_checkpoint(cached.export())
    assert torch.equal(comps["text_encoder"]["embed.weight"], raw.pipe.text_encoder.embed.weight)


def test_cache_build_resumes_after_interruption(tmp_path):
    aspect_folder(tmp_path / "imgs", sizes=((32, 32),), per=7)
    pipe = Pipeline.from_config(tiny_latent())
    opts = DataOptions(16, 4, tombstones=str(tmp_path / "t.jsonl"))
    spec = f"folder:{tmp_path / 'imgs'}"
    full = build_cache(spec, opts, pipe, tmp_path / "full", shard_size=3, progress=False)
    build_cache(spec, opts, pipe, tmp_path / "part", shard_size=3, progress=False)
    index = json.loads((tmp_path / "part" / "index.json").read_text())  # as if killed after shard 1
    (tmp_path / "part" / index["shards"].pop()["file"]).unlink()
    index.update(count=6, position=6, done=False)
    (tmp_path / "part" / "index.json").write_text(json.dumps(index))
    resumed = build_cache(spec, opts, pipe, tmp_path / "part", shard_size=3, progress=False)
    assert resumed["count"] == full["count"] == 7 and len(resumed["shards"]) == 3
    a, b = CachedSource(tmp_path / "full", opts), CachedSource(tmp_path / "part", opts)
    for i in range(7):
        assert torch.equal(a.sample(i).latent, b.sample(i).latent)
    with pytest.raises(UserError, match="other settings"):
        build_cache(spec, dataclasses.replace(opts, image_size=8), pipe, tmp_path / "part", progress=False)


def test_curate_finds_planted_duplicates_and_bad_files(tmp_path):
    root = tmp_path / "imgs"
    aspect_folder(root, sizes=((96, 96), (80, 120)), per=3)
    (root / "copy.png").write_bytes((root / "img_0_0.png").read_bytes())
    (root / "copy.txt").write_text("an exact copy")
    picture(96, 96, 1).resize((128, 128)).save(root / "bigger.png")  # a near duplicate of img_0_1, larger
    (root / "bigger.txt").write_text("the same picture, resized")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    picture(20, 20, 9).save(root / "small.png")
    (root / "small.txt").write_text("too small")
    picture(96, 96, 11).save(root / "nocaption.png")
    picture(64, 400, 12).save(root / "thin.png")
    (root / "thin.txt").write_text("a very thin strip")
    code = main(["curate", str(root), "--out", str(tmp_path / "curated.jsonl"), "--scorer", "helpers_data:brightness",
                 "--min-score", "0", "--tombstones", str(tmp_path / "t.jsonl"), "--json"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "curated.jsonl.report.json").read_text())
    reasons = {d["file_name"]: d["reason"] for d in report["dropped"]}
    assert [reasons.get(n) for n in ("copy.png", "img_0_0.png")].count("duplicate") == 1  # one of the pair kept
    assert reasons["img_0_1.png"] == "near_duplicate"  # the larger copy is kept
    assert reasons["broken.png"] == "unreadable"
    assert reasons["small.png"] == "too_small"
    assert reasons["nocaption.png"] == "empty_caption"
    assert reasons["thin.png"] == "aspect"
    kept = [json.loads(line)["file_name"] for line in (tmp_path / "curated.jsonl").read_text().splitlines()]
    assert all(k.startswith("imgs/") for k in kept)  # relative to the manifest
    kept = [k.removeprefix("imgs/") for k in kept]
    assert "bigger.png" in kept and report["kept"] == len(kept) == 6 and len(report["dropped"]) == 6
    src = ImageFolder(tmp_path / "curated.jsonl", DataOptions(16, 2, tombstones=str(tmp_path / "t.jsonl")))
    assert sorted(p.name for p in src.files) == sorted(kept)
    assert main(["curate", str(root), "--out", str(tmp_path / "x.jsonl"), "--scorer", "nosuch.module:f"]) == 2
    strict = curate(root, tmp_path / "y.jsonl", CurateOptions(scorer="helpers_data:brightness", min_score=1.1,
                                                              tombstones=str(tmp_path / "t.jsonl")), progress=False)  # fmt: skip
    assert strict["kept"] == 0 and strict["dropped_by_reason"]["low_score"] == 6


def test_deleted_image_never_appears_again_raw_or_cached(tmp_path):
    files = aspect_folder(tmp_path / "imgs", sizes=((32, 32),), per=6)
    tomb = tmp_path / "tombstones.jsonl"
    opts = DataOptions(16, 4, tombstones=str(tomb))
    spec = f"folder:{tmp_path / 'imgs'}"
    pipe = Pipeline.from_config(tiny_latent())
    build_cache(spec, opts, pipe, tmp_path / "old-cache", shard_size=4, progress=False)
    victim = content_hash(files[2].read_bytes())
    assert main(["data", "delete", str(files[2]), "--tombstones", str(tomb), "--reason", "test"]) == 0
    assert Tombstones(tomb).is_deleted(hash=victim)
    raw = Batches(spec, opts, batch_size=2)
    old = Batches(f"cache:{tmp_path / 'old-cache'}", opts, batch_size=2)  # built before the deletion
    build_cache(spec, opts, pipe, tmp_path / "new-cache", shard_size=4, progress=False)
    new = Batches(f"cache:{tmp_path / 'new-cache'}", opts, batch_size=2)
    assert len(new.sources[0]) == 5
    for batches in (raw, old, new):
        hashes = {s.hash for step in range(9) for s in batches.get(step, 0, 2)}
        assert victim not in hashes and len(hashes) == 5
    assert main(["data", "delete", "--tombstones", str(tomb)]) == 2


def test_staged_recipe_runs_each_stage_from_the_last(tmp_path):
    out = tmp_path / "staged"
    assert main(["train", "--recipe", "tiny-staged", "--out", str(out), "--steps", "2", "--lr", "1e-12", "--json"]) == 0
    _, pre = load_checkpoint(out / "pre" / "checkpoints" / "step_0000002.safetensors")
    _, mid = load_checkpoint(out / "mid" / "checkpoints" / "step_0000002.safetensors")
    fresh = Pipeline.from_config(recipe("tiny-staged").model, seed=1).transformer.img_in.weight
    k = "img_in.weight"
    assert torch.allclose(pre["transformer"][k], mid["transformer"][k], atol=1e-6)  # from the last stage (lr ~ 0)
    assert not torch.allclose(fresh, mid["transformer"][k])
