"""The command line: outputs, and one-line errors for bad input (no traceback, non-zero exit)."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from flowfactory.checkpoint import save_checkpoint
from flowfactory.config import ModelConfig, tiny
from flowfactory.models.flux import Flux, FluxParams
from flowfactory.models.text import DualTextParams
from flowfactory.pipeline import Pipeline


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "flowfactory", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc, err, needle):
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and needle in lines[0], err


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    Pipeline.from_config(tiny()).save(path)
    return path


def test_generate_writes_png_and_json_record(tiny_ckpt, tmp_path):
    out = tmp_path / "a.png"
    rc, stdout, err = run("generate", "a red circle", "-o", str(out), "--checkpoint", str(tiny_ckpt), "--seed", "3",
                          "--steps", "3", "--guidance", "2", "--json")  # fmt: skip
    assert rc == 0, err
    rec = json.loads(stdout)
    assert rec["prompt"] == "a red circle" and rec["seed"] == 3 and rec["steps"] == 3 and rec["guidance"] == 2.0
    assert set(rec["timings"]) >= {"load_s", "denoise_s"}
    from PIL import Image

    assert Image.open(out).size == (16, 16)


def test_bad_image_size(tiny_ckpt, tmp_path):
    rc, _, err = run("generate", "a red circle", "-o", str(tmp_path / "x.png"), "--checkpoint", str(tiny_ckpt),
                     "--size", "15")  # fmt: skip
    assert_one_line_error(rc, err, "not a positive multiple of the model's stride 2")


def test_bad_output_path_steps_and_image_count(tiny_ckpt, tmp_path):
    """Checked before the model runs: an output that is no image format or a directory, zero steps
    (not silently the default) and zero images; nothing is written."""
    base = ("generate", "a red circle", "--checkpoint", str(tiny_ckpt), "--steps", "2")
    assert_one_line_error(*run(*base, "-o", str(tmp_path / "a.txt"))[::2], "'.txt' is not an image format")
    assert_one_line_error(*run(*base, "-o", str(tmp_path / "noext"))[::2], "'(no extension)' is not an image format")
    (tmp_path / "d.png").mkdir()
    assert_one_line_error(*run(*base, "-o", str(tmp_path / "d.png"))[::2], "it is a directory")
    out = str(tmp_path / "a.png")
    assert_one_line_error(*run(*base, "-o", out, "--steps", "0")[::2], "--steps: must be at least 1, got 0")
    assert_one_line_error(*run(*base, "-o", out, "--num-images", "0")[::2], "--num-images: must be at least 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]
    rc, _, err = run(*base, "-o", str(tmp_path / "a.jpg"))  # any format Pillow writes
    assert rc == 0 and (tmp_path / "a.jpg").stat().st_size > 0, err


def test_counts_and_rates_are_checked_before_any_work(tmp_path):
    """Zero or negative counts and non-positive learning rates are usage errors (they used to train
    nothing and exit 0, divide by zero, or end in an optimizer's traceback)."""
    out = tmp_path / "run"
    for args, needle in [(("eval", "editbench", "--pairs", "0"), "--pairs: must be at least 1, got 0"),
                         (("eval", "geneval", "--batch-size", "-2"), "--batch-size: must be at least 1, got -2"),
                         (("eval", "geneval", "--limit", "x"), "--limit: invalid integer 'x'"),
                         (("train", "--recipe", "tiny-shapes", "--steps", "0"), "--steps: must be at least 1"),
                         (("train", "--recipe", "tiny-shapes", "--lr", "nan"), "--lr: must be a positive number"),
                         (("train", "--recipe", "tiny-shapes", "--lora-rank", "0"), "--lora-rank: must be at least 1"),
                         (("align", "dpo", "--pairs", "p.jsonl", "--lr", "-1"), "--lr: must be a positive number")]:
        assert_one_line_error(*run(*args, "--out", str(out))[::2], needle)
    assert not out.exists()


def test_empty_prompt(tiny_ckpt):
    rc, _, err = run("generate", "  ", "--checkpoint", str(tiny_ckpt))
    assert_one_line_error(rc, err, "empty prompt")


def test_unknown_model_name():
    rc, _, err = run("info", "--model", "flux9-ultra")
    assert_one_line_error(rc, err, "unknown model 'flux9-ultra'")


def test_checkpoint_shapes_do_not_match_config(tmp_path):
    cfg = tiny()
    other = Flux(FluxParams(**{**cfg.flux.__dict__, "hidden_size": 48, "axes_dim": [8, 8, 8]}))
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, cfg, {"transformer": other.state_dict()})
    rc, _, err = run("generate", "a red circle", "--checkpoint", str(path))
    assert_one_line_error(rc, err, "has shape")


def test_missing_checkpoint_and_corrupt_file(tmp_path):
    rc, _, err = run("generate", "a red circle", "--checkpoint", str(tmp_path / "nope.safetensors"))
    assert_one_line_error(rc, err, "checkpoint not found")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    rc, _, err = run("generate", "a red circle", "--checkpoint", str(junk))
    assert_one_line_error(rc, err, "cannot read checkpoint")


def test_missing_text_encoder_directory(tmp_path):
    base = tiny()
    text = DualTextParams(dim=base.text.dim, pooled_dim=base.text.pooled_dim, max_len=8)
    cfg = ModelConfig("tiny-dual", base.flux, None, text)
    path = tmp_path / "dual.safetensors"
    save_checkpoint(path, cfg, {"transformer": Flux(cfg.flux).state_dict()})
    rc, _, err = run("generate", "a red circle", "--checkpoint", str(path), "--t5", str(tmp_path / "t5"),
                     "--clip", str(tmp_path / "clip"))  # fmt: skip
    assert_one_line_error(rc, err, "T5 text-encoder directory not found")


def test_convert_roundtrip_through_cli(tiny_ckpt, tmp_path):
    d, r = tmp_path / "d.safetensors", tmp_path / "r.safetensors"
    assert run("convert", str(tiny_ckpt), str(d), "--to", "diffusers")[0] == 0
    assert "x_embedder.weight" in load_file(d)
    assert run("convert", str(d), str(r), "--to", "reference")[0] == 0
    original = Pipeline.from_checkpoint(tiny_ckpt).transformer.state_dict()
    back = load_file(r)
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
    # a bare reference file loads given its model name
    rc, _, err = run("generate", "a red circle", "--checkpoint", str(r), "--model", "tiny", "-o", str(tmp_path / "b.png"),
                     "--steps", "2")  # fmt: skip
    assert rc == 0, err
    rc, _, err = run("convert", str(tiny_ckpt), str(d), "--to", "reference")
    assert_one_line_error(rc, err, "not a diffusers FLUX transformer state dict")


def test_info_json():
    rc, out, _ = run("info", "--model", "flux1-schnell", "--resolution", "512", "--json")
    info = json.loads(out)
    assert rc == 0 and info["image_tokens"] == 1024 and not info["guidance_embed"]
    assert abs(info["parameters"] - 11.89e9) < 0.05e9


def test_serving_commands_refuse_bad_input_with_one_line(tmp_path):
    assert_one_line_error(*run("worker", "--dir", str(tmp_path / "none"))[::2], "no server data")
    assert_one_line_error(*run("feedback", "export", "--dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"))[::2],
                          "no server data")  # fmt: skip
    assert run("keys", "create", "--dir", str(tmp_path / "srv"))[0] == 0
    assert_one_line_error(*run("worker", "--dir", str(tmp_path / "srv"), "--workers", "0")[::2], "--workers must be")
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(*run("worker", "--dir", str(tmp_path / "srv"), "--models", str(tmp_path / "bad.json"))[::2],
                          "cannot read the model map")  # fmt: skip
    assert_one_line_error(*run("serve", "--dir", str(tmp_path / "srv"), "--workers", "-1")[::2], "--workers must be")


def test_align_judge_refuses_bad_options_before_sampling(tmp_path):
    out = tmp_path / "pairs"
    assert_one_line_error(*run("align", "judge", "--out", str(out), "--tasks", "position,shading")[::2],
                          "--tasks takes geneval tasks")  # fmt: skip
    rc, _, err = run("align", "judge", "--out", str(out), "--graded", "--solutions")
    assert rc == 2 and "not allowed with argument --graded" in err
    assert not out.exists()


def test_guidance_distillation_refuses_a_student_without_a_guidance_embedding(tiny_ckpt, tmp_path):
    out = tmp_path / "dev"
    rc, _, err = run("distill", "guidance", "--teacher", str(tiny_ckpt), "--out", str(out), "--student", str(tiny_ckpt))
    assert_one_line_error(rc, err, "has no guidance embedding")
    rc, _, err = run("distill", "guidance", "--teacher", str(tiny_ckpt), "--out", str(out), "--student",
                     "flowfactory/assets/shapes-demo-dev.safetensors")  # fmt: skip
    assert_one_line_error(rc, err, "not the teacher's architecture")
    assert not out.exists()


def test_ladd_refuses_a_student_of_another_architecture(tiny_ckpt, tmp_path):
    out = tmp_path / "schnell"
    rc, _, err = run("distill", "ladd", "--teacher", str(tiny_ckpt), "--out", str(out), "--student",
                     "flowfactory/assets/shapes-demo-dev.safetensors")  # fmt: skip
    assert_one_line_error(rc, err, "not the teacher's architecture")
    assert_one_line_error(*run("distill", "ladd", "--teacher", str(tiny_ckpt), "--out", str(out), "--d-lr-mult",
                               "0")[::2], "--d-lr-mult must be positive")  # fmt: skip
    assert not out.exists()


def test_ladd_recipes_carry_the_shipped_settings_and_flags_override_them_both_ways():
    """`--recipe shapes-schnell` / `shapes-edit-schnell` alone give the shipped schnell tiers' LADD settings
    (a copy of the teacher with the generic defaults lost the edit source image); every flag overrides them,
    the shifted schedule in both directions."""
    from flowfactory.cli import build_parser
    from flowfactory.cli.train import distill_config
    from flowfactory.errors import UserError

    def cfg(*flags):
        argv = ["distill", "ladd", "--teacher", "t.safetensors", "--out", "o", *flags]
        return distill_config(build_parser().parse_args(argv))

    for name, steps, on_policy in (("shapes-schnell", 480, True), ("shapes-edit-schnell", 240, False)):
        c = cfg("--recipe", name)
        assert (c.steps, c.lr, c.ladd_d_lr_mult, c.ladd_t_hat_mean, c.ladd_distill_weight, c.ladd_schedule_shift,
                c.ladd_on_policy, c.ladd_path_grad, c.seed) == (steps, 1e-4, 10.0, 0.0, 100.0, True, on_policy,
                                                                on_policy, 0)  # fmt: skip
    c = cfg("--no-shifted-schedule", "--no-on-policy", "--distill-weight", "0", "--t-hat-mean", "1", "--d-lr-mult",
            "1", "--seed", "3")  # fmt: skip
    assert (c.ladd_schedule_shift, c.ladd_on_policy, c.ladd_distill_weight, c.ladd_t_hat_mean, c.ladd_d_lr_mult,
            c.seed) == (False, False, 0.0, 1.0, 1.0, 3)  # fmt: skip
    with pytest.raises(UserError, match="on-policy LADD .* give --distill-weight above 0, or --no-on-policy"):
        cfg("--distill-weight", "0")  # the recipe's on-policy path has nothing to place without the term
    assert cfg("--adv-weight", "0").ladd_adv_weight == 0.0 and cfg().ladd_adv_weight == 1.0
    with pytest.raises(UserError, match="nothing to learn"):
        cfg("--adv-weight", "0", "--distill-weight", "0", "--no-on-policy")
    assert cfg("--no-path-grad").ladd_path_grad is False and cfg().ladd_path_grad  # the recipe's default
    assert not cfg("--no-on-policy").ladd_path_grad  # the recipe's path gradient goes with its on-policy path
    assert cfg("--schedule-mu", "1.1").ladd_schedule_mu == 1.1 and cfg().ladd_schedule_mu == 0.0
    with pytest.raises(UserError, match="--schedule-mu fixes the shifted schedule"):
        cfg("--schedule-mu", "1.1", "--no-shifted-schedule")
    with pytest.raises(UserError, match="--schedule-mu must be positive"):
        cfg("--schedule-mu", "0")
    with pytest.raises(UserError, match="--path-grad .* needs --on-policy"):
        cfg("--path-grad", "--no-on-policy")
    with pytest.raises(UserError, match="--adv-weight must be at least 0"):
        cfg("--adv-weight", "-1")
    assert cfg("--all-steps").ladd_all_steps and not cfg("--all-steps", "--no-all-steps").ladd_all_steps
    with pytest.raises(UserError, match="--all-steps .* needs --on-policy"):
        cfg("--all-steps", "--no-on-policy")
    assert cfg().ladd_final_only and not cfg("--recipe", "shapes-edit-schnell").ladd_final_only
    assert not cfg("--no-final-only").ladd_final_only and cfg("--no-final-only", "--final-only").ladd_final_only
    # the recipe's final-only grading goes with its path gradient and gives way to --all-steps
    assert not cfg("--no-path-grad").ladd_final_only and not cfg("--no-on-policy").ladd_final_only
    assert cfg("--all-steps").ladd_all_steps and not cfg("--all-steps").ladd_final_only
    with pytest.raises(UserError, match="--final-only .* needs --path-grad"):
        cfg("--final-only", "--no-path-grad")
    with pytest.raises(UserError, match="give one of them"):
        cfg("--final-only", "--all-steps")
    assert cfg("--teacher-guidance", "4").teacher_guidance == 4.0 and cfg().teacher_guidance == 3.0
    with pytest.raises(UserError, match="--teacher-guidance must be at least 1"):
        cfg("--teacher-guidance", "0.5")
    assert cfg("--recipe", "tiny-schnell", "--shifted-schedule").ladd_schedule_shift
    assert not cfg("--recipe", "tiny-schnell").ladd_schedule_shift


def test_atomic_write_refuses_a_directory_and_keeps_the_old_file_when_a_write_fails(tmp_path):
    from flowfactory.checkpoint import atomic_write
    from flowfactory.errors import UserError

    with pytest.raises(UserError, match="it is a directory"):
        atomic_write(tmp_path, lambda tmp: None)
    target = tmp_path / "m.json"
    target.write_text("old")

    def failing(tmp):
        open(tmp, "w").write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="cannot write .*m.json: No space left on device"):
        atomic_write(target, failing)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    atomic_write(target, lambda tmp: open(tmp, "w").write("new"))
    assert target.read_text() == "new"
    rc, _, err = run("curate", str(tmp_path), "--out", str(tmp_path))
    assert_one_line_error(rc, err, "is a directory: give the manifest file to write")
