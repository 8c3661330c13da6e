"""edit / fill / generate --control on the command line: outputs and one-line errors."""

import json

import pytest
from PIL import Image
from test_cli import assert_one_line_error, run

from flowfactory.config import model_config
from flowfactory.pipeline import Pipeline


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    for name in ("tiny-latent", "tiny-fill", "tiny-control"):
        Pipeline.from_config(model_config(name)).save(d / f"{name}.safetensors")
    Image.new("RGB", (24, 16), (240, 40, 40)).save(d / "img.png")
    Image.new("RGB", (20, 20), (40, 40, 230)).save(d / "ref.png")
    mask = Image.new("L", (24, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(d / "mask.png")
    Image.new("L", (16, 16), 0).save(d / "small_mask.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG not really")
    return d


def test_edit_with_references_keeps_the_source_size(files):
    rc, out, err = run("edit", str(files / "img.png"), "make it blue", "--ref", str(files / "ref.png"), "--ref",
                       str(files / "ref.png"), "--checkpoint", str(files / "tiny-latent.safetensors"), "--steps", "2",
                       "-o", str(files / "edited.png"), "--json")  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["width"] == 24 and Image.open(files / "edited.png").size == (24, 16)


def test_edit_errors(files):
    ckpt = ["--checkpoint", str(files / "tiny-latent.safetensors"), "--steps", "1"]
    refs = sum((["--ref", str(files / "ref.png")] for _ in range(4)), [])
    assert_one_line_error(*run("edit", str(files / "img.png"), "x", *refs, *ckpt)[::2], "at most 4")
    assert_one_line_error(*run("edit", str(files / "corrupt.png"), "x", *ckpt)[::2], "cannot read image")
    assert_one_line_error(*run("edit", str(files / "img.png"), "x", "--ref", str(files / "nope.png"), *ckpt)[::2],
                          "cannot read image")  # fmt: skip


def test_fill_inpaint_and_outpaint(files):
    common = ["--checkpoint", str(files / "tiny-fill.safetensors"), "--steps", "2"]
    rc, _, err = run("fill", str(files / "img.png"), str(files / "mask.png"), "a cross", *common, "-o",
                     str(files / "filled.png"))  # fmt: skip
    assert rc == 0, err
    assert Image.open(files / "filled.png").size == (24, 16)
    rc, _, err = run("fill", str(files / "img.png"), str(files / "mask.png"), "more", "--expand", "4", "0", "4", "4",
                     *common, "-o", str(files / "outpaint.png"))  # fmt: skip
    assert rc == 0, err
    assert Image.open(files / "outpaint.png").size == (32, 20)
    assert_one_line_error(*run("fill", str(files / "img.png"), str(files / "small_mask.png"), "x", *common)[::2],
                          "same size")  # fmt: skip
    assert_one_line_error(*run("fill", str(files / "img.png"), str(files / "mask.png"), "x", "--checkpoint",
                               str(files / "tiny-latent.safetensors"))[::2], "not a fill model")  # fmt: skip


def test_generate_with_control(files):
    rc, _, err = run("generate", "a circle", "--control", str(files / "img.png"), "--checkpoint",
                     str(files / "tiny-control.safetensors"), "--steps", "2", "-o", str(files / "ctl.png"))  # fmt: skip
    assert rc == 0, err
    assert_one_line_error(*run("generate", "a circle", "--checkpoint", str(files / "tiny-control.safetensors"))[::2],
                          "needs a control image")  # fmt: skip
    assert_one_line_error(*run("generate", "a circle", "--control", str(files / "img.png"), "--checkpoint",
                               str(files / "tiny-latent.safetensors"))[::2], "not a control model")  # fmt: skip


def test_editbench_runs_a_kontext_checkpoint_with_multi_turn_identity(files):
    """The model is the default editor; a checkpoint with a baseline editor (which would ignore it and
    score the baseline) is a usage error."""
    rc, out, err = run("eval", "editbench", "--checkpoint", str(files / "tiny-latent.safetensors"),
                       "--pairs", "5", "--steps", "1", "--identity-chains", "2", "--out", str(files / "eb"), "--json")  # fmt: skip
    assert rc == 0, err
    summary = json.loads(out)
    assert 0.0 <= summary["overall"] <= 1.0
    ident = summary["character_identity"]
    assert ident["chains"] == 2 and len(ident["identity_rate_per_turn"]) == 5
    assert (files / "eb" / "character-identity.json").exists()
    rc, _, err = run("eval", "editbench", "--checkpoint", str(files / "tiny-latent.safetensors"), "--pairs", "5",
                     "--steps", "1", "--seed", "1", "--out", str(files / "eb-seed1"))  # fmt: skip
    assert rc == 0, err
    rec = json.loads((files / "eb-seed1" / "editbench-model.json").read_text())
    assert (rec["seed"], rec["steps"], rec["guidance"]) == (1, 1, 3.0)
    # another seed samples other noise for the same pairs: the edited images (the grid) differ
    grids = [(files / d / "editbench-model.png").read_bytes() for d in ("eb", "eb-seed1")]
    assert grids[0] != grids[1]
    assert_one_line_error(*run("eval", "editbench", "--editor", "identity", "--checkpoint",
                               str(files / "tiny-latent.safetensors"), "--out", str(files / "eb2"))[::2],
                          "--checkpoint is for --editor model or autoencoder")  # fmt: skip
    assert not (files / "eb2").exists()


def test_eval_control_reports_count_and_positions(files):
    rc, out, err = run("eval", "control", "--checkpoint", str(files / "tiny-control.safetensors"), "--pairs", "4",
                       "--steps", "1", "--out", str(files / "ctl-eval"), "--json")  # fmt: skip
    assert rc == 0, err
    s = json.loads(out)
    assert s["cases"] == 4 and s["encoder"] == "edges"
    # every object in place implies the right count; identity too implies in place
    assert 1 >= s["count_followed"] >= s["positions_followed"] >= s["positions_and_identity"] >= 0
    assert "count followed" in (files / "ctl-eval" / "control-edges.md").read_text()


def test_lora_for_another_base_is_a_clear_error(files, tmp_path):
    from flowfactory.models.lora import apply_lora, save_lora

    other = Pipeline.from_config(model_config("tiny-control"))
    apply_lora(other.transformer, rank=2)
    save_lora(other.transformer, tmp_path / "control.safetensors", "tiny-control")
    assert_one_line_error(*run("generate", "a circle", "--checkpoint", str(files / "tiny-latent.safetensors"),
                               "--lora", str(tmp_path / "control.safetensors"))[::2], "trained for base 'tiny-control'")  # fmt: skip
    base = Pipeline.from_config(model_config("tiny-latent"))
    apply_lora(base.transformer, rank=2)
    save_lora(base.transformer, tmp_path / "ok.safetensors", "tiny-latent")
    rc, _, err = run("generate", "a circle", "--checkpoint", str(files / "tiny-latent.safetensors"), "--lora",
                     str(tmp_path / "ok.safetensors"), "--steps", "1", "-o", str(tmp_path / "x.png"))  # fmt: skip
    assert rc == 0, err
