"""`videogpt-serve convert`: a failed conversion leaves no folder behind; a bundle's files are readable by
the other users of a shared model folder (as the umask allows), although safetensors writes them 0600."""

from __future__ import annotations

import os
import stat

import pytest

from cli.main import main


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_failed_convert_leaves_no_folder(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "bundles" / "classes"
    code = main(["convert", str(fixtures_dir / "gpt_classcond_full.ckpt"), str(out), "--class-names", "a,b"])
    assert code == 2
    assert "class" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_convert_keeps_a_folder_that_was_there(tmp_path, fixtures_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["convert", str(tmp_path / "missing.ckpt"), str(out)]) == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_bundle_files_get_the_umask_s_read_bits(tmp_path, fixtures_dir, umask_022):
    out = tmp_path / "uncond"
    assert main(["convert", str(fixtures_dir / "gpt_uncond_sparse.ckpt"), str(out)]) == 0
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert modes == {"config.json": 0o644, "gpt.safetensors": 0o644, "vqvae.safetensors": 0o644}
