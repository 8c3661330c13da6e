"""Training: learning happens, resume is exact, DDP / FSDP2 under torchrun match one process."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_train import short_config
from safetensors.torch import load_file

from flowfactory.config import tiny_latent, tiny_shapes
from flowfactory.errors import UserError
from flowfactory.pipeline import Pipeline
from flowfactory.train.autoencoder import AETrainConfig, train_autoencoder
from flowfactory.train.logs import read_metrics
from flowfactory.train.trainer import Trainer


def test_training_lowers_validation_loss(tmp_path):
    cfg = dataclasses.replace(tiny_shapes(), steps=200)
    Trainer(cfg, tmp_path, progress=False).fit()
    val = [m["val_loss"] for m in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in m]
    assert len(val) == 5  # steps 0, 50, 100, 150, 200
    assert val[-1] < 0.5 * val[0], val
    # the exported checkpoint rebuilds the whole model from the file alone and samples
    pipe = Pipeline.from_checkpoint(tmp_path / "checkpoints" / "step_0000200.safetensors")
    images, _ = pipe.generate(["a red circle"], 16, 16, steps=4, seed=1)
    again, _ = pipe.generate(["a red circle"], 16, 16, steps=4, seed=1)
    assert images.shape == (1, 3, 16, 16) and torch.equal(images, again)


def test_ema_decay_warms_up_so_a_short_run_exports_its_recent_weights(tmp_path):
    """At decay 0.999 without warm-up, 100 updates towards a parameter that jumped from 0 to 1
    would leave the EMA at 1 - 0.999^100 = 0.095 (the export mostly the starting point); with
    min(decay, (1 + n) / (10 + n)) it is past 0.9, and a long run still averages at 0.999.
    Training logs the EMA weights' validation loss next to the trained weights'."""
    from flowfactory.train.trainer import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], 0.999)
    with torch.no_grad():
        p.fill_(1.0)
    for n in range(100):
        ema.update(n)
    assert 0.9 < ema.shadow[0][0].item() < 1.0
    assert ema.decay_at(0) == 0.1 and ema.decay_at(20_000) == 0.999

    cfg = short_config(ema_decay=0.99, steps=6, val_every=3)
    Trainer(cfg, tmp_path, progress=False).fit()
    logged = [m for m in read_metrics(tmp_path / "metrics.jsonl") if "val_loss" in m and m["step"] > 0]
    assert [m["step"] for m in logged] == [3, 6] and all(m["val_loss_ema"] > 0 for m in logged)
    assert logged[-1]["val_loss_ema"] != logged[-1]["val_loss"]


def _same_weights(one, other) -> bool:
    a, b = _weights(one), _weights(other)
    return all(torch.equal(a[k], b[k]) for k in a)


def _interrupted_run(cfg, out, first: int) -> Trainer:
    """Train `first` steps, then finish in a new Trainer resumed from the run directory."""
    Trainer(cfg, out, progress=False).fit(steps=first)
    resumed = Trainer(cfg, out, progress=False)
    assert resumed.step == first
    resumed.fit()
    return resumed


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_is_exact(tmp_path):
    cfg = short_config(ema_decay=0.9, steps=10)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    resumed = _interrupted_run(cfg, tmp_path / "b", 5)
    assert _same_weights(straight, resumed)
    assert all(torch.equal(x, y) for x, y in zip(straight.ema.shadow, resumed.ema.shadow))


def test_sigterm_saves_the_state_and_the_run_resumes_exactly(tmp_path):
    cfg = short_config(ema_decay=0.9, steps=8, checkpoint_every=100)
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.fit()
    stopped = Trainer(cfg, tmp_path / "b", progress=False)
    step = stopped.train_step

    def preempted_at_3():
        metrics = step()
        if stopped.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends on preemption
        return metrics

    stopped.train_step = preempted_at_3
    stopped.fit()
    assert stopped.step == 3 and (tmp_path / "b" / "checkpoints" / "step_0000003.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there while training
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    assert resumed.step == 3
    resumed.fit()
    assert _same_weights(straight, resumed)


def test_grad_accumulation_matches_full_batch(tmp_path):
    one = Trainer(short_config(steps=3), tmp_path / "a", progress=False)
    one.fit()
    two = Trainer(short_config(steps=3, grad_accum=2), tmp_path / "b", progress=False)
    two.fit()
    a, b = _weights(one), _weights(two)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_data_workers_give_the_same_batches(tmp_path):
    """Batches made ahead by worker processes are the inline ones, also across a resume and with accumulation."""
    inline = Trainer(short_config(steps=4, grad_accum=2), tmp_path / "a", progress=False)
    inline.fit()
    ahead = _interrupted_run(short_config(steps=4, grad_accum=2, data_workers=2), tmp_path / "b", 2)
    assert _same_weights(inline, ahead)
    for bad in ({"data_workers": -1}, {"checkpoint_every": 0}):
        with pytest.raises(UserError, match="data_workers >= 0 and checkpoint_every >= 1"):
            Trainer(short_config(**bad), tmp_path / "c", progress=False)


def test_bf16_and_latent_model_train(tmp_path):
    cfg = short_config(model=tiny_latent(), image_size=16, precision="bf16", steps=4, export_dtype="bf16")
    trainer = Trainer(cfg, tmp_path, progress=False)
    m = trainer.fit()
    assert torch.isfinite(torch.tensor(m["loss"]))
    # a bf16 export is half the size and loads back into an fp32 model
    path = tmp_path / "checkpoints" / "step_0000004.safetensors"
    assert load_file(path)["transformer.img_in.weight"].dtype == torch.bfloat16
    pipe = Pipeline.from_checkpoint(path)
    w = pipe.transformer.img_in.weight
    assert w.dtype == torch.float32
    assert torch.allclose(w, trainer.pipe.transformer.img_in.weight.detach(), rtol=1e-2, atol=1e-3)


def test_autoencoder_training_improves_reconstruction(tmp_path):
    cfg = AETrainConfig(model=tiny_latent(), image_size=16, steps=60, batch_size=8, lr=2e-3, gan_weight=0.1, gan_start=40)
    train_autoencoder(dataclasses.replace(cfg, steps=0), tmp_path / "untrained", progress=False)
    before = read_metrics(tmp_path / "untrained" / "metrics.jsonl")[-1]["val_psnr"]
    path = train_autoencoder(cfg, tmp_path, progress=False)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert metrics[-1]["val_psnr"] > before + 5, (before, metrics[-1])
    assert any("d_loss" in m for m in metrics)
    pipe = Pipeline.with_trained_autoencoder(tiny_latent(), path)
    assert pipe.cfg.ae.scale_factor == pytest.approx(metrics[-1]["scale_factor"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_ranks_match_one_process(tmp_path, mode):
    single = tmp_path / "single"
    Trainer(short_config(), single, progress=False).fit()
    worker = Path(__file__).parent / "dist_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path / mode), mode]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = [m["loss"] for m in read_metrics(single / "metrics.jsonl") if "loss" in m]
    got = [m["loss"] for m in read_metrics(tmp_path / mode / "metrics.jsonl") if "loss" in m]
    assert len(ref) == len(got) == 12
    # same global batch, noise and timesteps: equal up to float reduction order
    assert max(abs(a - b) / abs(a) for a, b in zip(ref, got)) < 1e-3, (ref, got)


def test_sample_grids_and_tensorboard_are_written(tmp_path):
    Trainer(short_config(steps=2, sample_every=2, sample_steps=2), tmp_path, progress=False).fit()
    from PIL import Image

    grid = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert grid.size == (32, 16)  # two 16-px samples side by side
    assert any((tmp_path / "tb").iterdir())
