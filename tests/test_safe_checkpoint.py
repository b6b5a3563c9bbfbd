"""Checkpoints are read without running their code; files that are not checkpoints get clear errors."""

import os
import shutil
import subprocess
import zipfile

import pytest
import torch
from official_format import write_official_checkpoint

from models import CheckpointError, UnsafeCheckpointError, convert_official_checkpoint
from models.safe_checkpoint import read_checkpoint


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


class RunsSubprocess:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("payload", [RunsShellCommand, RunsEval, RunsSubprocess])
@pytest.mark.parametrize("where", ["state_dict", "hyper_parameters"])
def test_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path, fixtures_dir, payload, where):
    marker = tmp_path / "pwned"
    good = read_checkpoint(fixtures_dir / "vqvae_s244.ckpt")
    state = {k: v.load() for k, v in good["state_dict"].items()}
    ckpt = tmp_path / "evil.ckpt"
    args = vars(good["hyper_parameters"]["args"])
    if where == "state_dict":
        state["encoder.convs.0.conv.weight"] = payload(marker)
    else:
        args = {**args, "data_path": payload(marker)}
    write_official_checkpoint(ckpt, state, args) if where == "hyper_parameters" else _save_raw(ckpt, state, args)
    with pytest.raises(UnsafeCheckpointError) as err:
        convert_official_checkpoint(ckpt, tmp_path / "out")
    assert "refused" in str(err.value) and "nothing from the file was run" in str(err.value)
    assert any(name in str(err.value) for name in ("system", "eval", "subprocess"))
    assert not marker.exists()
    assert not (tmp_path / "out" / "config.json").exists()


def _save_raw(path, state, args):
    import argparse

    torch.save({"state_dict": state, "hyper_parameters": {"args": argparse.Namespace(**args)}}, path)


def test_official_checkpoint_reads_without_pytorch_lightning(fixtures_dir):
    import importlib.util

    assert importlib.util.find_spec("pytorch_lightning") is None
    ckpt = read_checkpoint(fixtures_dir / "gpt_uncond_sparse.ckpt")
    assert ckpt["global_step"] == 1234
    (callback_class,) = ckpt["callbacks"]
    assert callback_class.qualname == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert ckpt["state_dict"]["fc_out.weight"].load().shape == (64, 48)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        convert_official_checkpoint(tmp_path / "nope.ckpt", tmp_path / "out")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        convert_official_checkpoint(tmp_path, tmp_path / "out")


def test_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("these are not the weights you are looking for\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        convert_official_checkpoint(bogus, tmp_path / "out")


def test_zip_without_a_pickle(tmp_path):
    path = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="no single data.pkl"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_checkpoint_with_missing_tensor_data(tmp_path, fixtures_dir):
    path = tmp_path / "broken.ckpt"
    with zipfile.ZipFile(fixtures_dir / "vqvae_s244.ckpt") as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("/data/0"):
                dst.writestr(item, src.read(item))
    with pytest.raises(CheckpointError, match="missing from the zip"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_truncated_checkpoint(tmp_path, fixtures_dir):
    path = tmp_path / "truncated.ckpt"
    data = (fixtures_dir / "vqvae_s244.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        convert_official_checkpoint(path, tmp_path / "out")


def test_plain_state_dict_is_not_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "other.ckpt"
    write_official_checkpoint(path, {"layer.weight": torch.zeros(3, 3)}, {"lr": 0.1})
    with pytest.raises(CheckpointError, match="neither a VideoGPT VQ-VAE nor a GPT"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_gpt_checkpoint_with_wrong_shapes(tmp_path, fixtures_dir):
    ckpt = read_checkpoint(fixtures_dir / "gpt_classcond_full.ckpt")
    state = {k: v.load() for k, v in ckpt["state_dict"].items()}
    state["attn_stack.attn_nets.1.fc_block.0.weight"] = torch.zeros(100, 48)
    path = write_official_checkpoint(tmp_path / "bad.ckpt", state, vars(ckpt["hyper_parameters"]["args"]))
    with pytest.raises(CheckpointError, match=r"attn_stack\.attn_nets\.1\.fc_block\.0\.weight' has shape \[100, 48\]"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_gpt_checkpoint_whose_args_contradict_its_tensors(tmp_path, fixtures_dir):
    ckpt = read_checkpoint(fixtures_dir / "gpt_uncond_sparse.ckpt")
    state = {k: v.load() for k, v in ckpt["state_dict"].items()}
    args = {**vars(ckpt["hyper_parameters"]["args"]), "layers": 5}
    path = write_official_checkpoint(tmp_path / "bad.ckpt", state, args)
    with pytest.raises(CheckpointError, match="args say layers=5 but the tensors have 2"):
        convert_official_checkpoint(path, tmp_path / "out")


def test_cli_convert_reports_errors_without_traceback(tmp_path, fixtures_dir):
    from cli.main import main

    assert main(["convert", str(fixtures_dir / "gpt_uncond_sparse.ckpt"), str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "config.json").exists()
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"\x00" * 10)
    assert main(["convert", str(bogus), str(tmp_path / "bad")]) == 2


def test_console_script_convert(tmp_path, fixtures_dir):
    exe = shutil.which("videogpt-serve") or os.path.join(os.path.dirname(os.sys.executable), "videogpt-serve")
    result = subprocess.run([exe, "convert", str(fixtures_dir / "gpt_classcond_full.ckpt"), str(tmp_path / "b"),
                             "--class-names", "a,b,c,d,e", "--fps", "10"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "gpt bundle 'gpt_classcond_full'" in result.stdout
    info = subprocess.run([exe, "info", str(tmp_path / "b")], capture_output=True, text=True)
    assert '"class_names": [' in info.stdout and '"fps": 10.0' in info.stdout
    bad = subprocess.run([exe, "convert", str(tmp_path / "missing.ckpt"), str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "error:" in bad.stderr and "no such file" in bad.stderr and "Traceback" not in bad.stderr
