"""Tiers resolve by name from a manifest; the CLI takes a tier's checkpoint, steps and guidance."""

import json

import pytest
from test_cli import assert_one_line_error, run

from flowfactory.config import model_config
from flowfactory.errors import UserError
from flowfactory.pipeline import Pipeline
from flowfactory.tiers import Tier, load_tiers, resolve_tier, write_tiers


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiers")
    Pipeline.from_config(model_config("tiny")).save(d / "base.safetensors")
    tiers = [Tier("pro", d / "base.safetensors", 6, 3.0), Tier("dev", d / "base.safetensors", 3, 2.5),
             Tier("schnell", d / "base.safetensors", 1, 1.0)]  # fmt: skip
    write_tiers(d / "tiers.json", "tiny", tiers)
    return d / "tiers.json"


def test_tiers_resolve_by_name(manifest):
    tiers = load_tiers(manifest)
    assert set(tiers) == {"pro", "dev", "schnell"}
    assert resolve_tier(manifest, "schnell").steps == 1
    assert json.loads(manifest.read_text())["tiers"]["dev"]["checkpoint"] == "base.safetensors"  # relative
    with pytest.raises(UserError, match="no tier 'turbo'"):
        resolve_tier(manifest, "turbo")


def test_generate_uses_the_tier_defaults_and_flags_win(manifest, tmp_path):
    rc, out, err = run("generate", "a red circle", "--tier", "dev", "--tiers", str(manifest), "-o",
                       str(tmp_path / "a.png"), "--json")  # fmt: skip
    assert rc == 0, err
    rec = json.loads(out)
    assert (rec["steps"], rec["guidance"], rec["tier"]) == (3, 2.5, "dev")
    rc, out, _ = run("generate", "a red circle", "--tier", "dev", "--tiers", str(manifest), "--steps", "2", "-o",
                     str(tmp_path / "b.png"), "--json")  # fmt: skip
    assert json.loads(out)["steps"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"tiers": {"pro": {"checkpoint": "missing.safetensors", "steps": 4, "guidance": 1}}}')
    assert_one_line_error(*run("generate", "x", "--tier", "pro", "--tiers", str(bad))[::2], "does not exist")


def test_edit_takes_its_own_tiers_and_other_commands_have_none(tmp_path):
    """`edit --tier` reads the edit manifest (`tiers-edit.json` by default, not the text-to-image
    one); a command without shipped tiers says so in one line."""
    from PIL import Image

    from flowfactory.cli.common import DEFAULT_EDIT_TIERS

    assert DEFAULT_EDIT_TIERS.name == "tiers-edit.json"
    Pipeline.from_config(model_config("tiny-latent")).save(tmp_path / "edit.safetensors")
    write_tiers(tmp_path / "edit-tiers.json", "tiny-edit", [Tier("pro", tmp_path / "edit.safetensors", 2, 3.0),
                                                            Tier("schnell", tmp_path / "edit.safetensors", 1, 1.0)])
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "src.png")
    rc, out, err = run("edit", str(tmp_path / "src.png"), "make it blue", "--tier", "schnell", "--tiers",
                       str(tmp_path / "edit-tiers.json"), "-o", str(tmp_path / "e.png"), "--json")  # fmt: skip
    assert rc == 0, err
    rec = json.loads(out)
    assert (rec["steps"], rec["guidance"], rec["checkpoint"]) == (1, 1.0, str(tmp_path / "edit.safetensors"))
    assert_one_line_error(*run("vary", str(tmp_path / "src.png"), "--tier", "dev")[::2], "no tiers are shipped")
