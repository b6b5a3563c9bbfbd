"""train-gpt's retraining options: --encoded (each video encoded once beforehand) and --init BUNDLE (start
from a prior's weights, same architecture only)."""

from __future__ import annotations

import torch
from test_training import TINY_TRAINING, _train_tiny_vqvae

from cli.main import main
from models import load_gpt, sample

PRIOR = ["--class-cond", "--n-cond-frames", "1", "--condition-dropout", "0.2", "--hidden-dim", "12", "--heads", "2",
         "--layers", "1", "--resnet-widths", "4", "4", "4", "--resnet-dim", "12"]


def test_encoded_training_then_a_warm_start_from_it(tmp_path, capsys):
    _train_tiny_vqvae(tmp_path / "vq")
    first = tmp_path / "first"
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(first), "--encoded", *PRIOR,
                 *TINY_TRAINING]) == 0
    assert "encoded" in capsys.readouterr().err  # the videos were encoded once, up front
    gpt = load_gpt(first)
    assert sample(gpt, 1, class_labels=[3], cond_frames=torch.zeros(1, 3, 1, 16, 16), seed=0).shape == (1, 2, 4, 4)

    # A warm start: with a vanishing learning rate the weights stay those of the bundle it started from.
    second = tmp_path / "second"
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(second), "--init", str(first), *PRIOR,
                 *TINY_TRAINING, "--lr", "1e-12", "--encoded", "--dropout", "0.3"]) == 0
    assert "starting from the weights of" in capsys.readouterr().err
    start, warm = dict(load_gpt(first).named_parameters()), dict(load_gpt(second).named_parameters())
    assert all(torch.allclose(start[k], warm[k], atol=1e-6) for k in start)  # (BatchNorm statistics move on)
    assert load_gpt(second).info.source["initialised_from"] == str(first)


def test_init_refuses_another_architecture(tmp_path, capsys):
    _train_tiny_vqvae(tmp_path / "vq")
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(tmp_path / "first"), *PRIOR,
                 "--steps", "1", "--batch-size", "4", "--train-size", "40", "--val-every", "1"]) == 0
    capsys.readouterr()
    wider = [*PRIOR[:PRIOR.index("--hidden-dim")], "--hidden-dim", "24", *PRIOR[PRIOR.index("--heads"):]]
    out = tmp_path / "second"
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(out), "--init", str(tmp_path / "first"),
                 *wider, *TINY_TRAINING]) == 2
    err = capsys.readouterr().err
    assert "its prior has another architecture than these options build (hidden_dim 12 there, 24 here)" in err
    assert not out.exists()
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(out), "--init", str(tmp_path / "vq"),
                 *PRIOR, *TINY_TRAINING]) == 2
    assert "holds only a VQ-VAE; --init takes a GPT bundle" in capsys.readouterr().err
