"""Codebook learning as the reference, a training loop that resumes exactly, and the train commands."""

import itertools

import pytest
import torch

from cli.main import main
from models import VQVAE, GPTConfig, VideoGPT, VQVAEConfig, load_gpt, load_vqvae, sample
from models.data import MovingDigits, MovingDigitsSpec
from models.training import TrainSettings, resolve_precision, train
from models.vqvae import Codebook

TINY_VQ = VQVAEConfig(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=(2, 4, 4),
                      sequence_length=4, resolution=16)
TINY_DATA = MovingDigitsSpec(frames=4, resolution=16, scale=1)


def test_codebook_initialises_from_data_then_tracks_ema():
    torch.manual_seed(0)
    book = Codebook(n_codes=4, embedding_dim=3).train()
    assert book.needs_init
    z = torch.randn(2, 3, 2, 2, 2)  # 16 encoder outputs
    out = book(z)
    flat = z.movedim(1, -1).reshape(-1, 3)
    assert not book.needs_init
    # every code vector after the first step is an EMA of data points, or a restarted data point
    assert book.embeddings.shape == (4, 3)
    assert out["codes"].shape == (2, 2, 2, 2)
    assert out["embeddings"].shape == z.shape
    counts = torch.bincount(out["codes"].flatten(), minlength=4).float()
    assert torch.allclose(book.N, 0.99 * torch.ones(4) + 0.01 * counts)
    distances = torch.cdist(book.embeddings, flat)
    assert float(distances.min(dim=1).values.max()) < 5.0


def test_dead_codes_restart_at_encoder_outputs():
    book = Codebook(n_codes=3, embedding_dim=2).train()
    book.N.fill_(5.0)
    book.embeddings.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 50.0]]))
    book.z_avg.copy_(book.embeddings * 5.0)
    book.N[2] = 0.5  # code 2 has been dead for a while
    z = torch.tensor([[0.1, 0.0], [0.0, 0.2], [99.0, 101.0], [0.05, 0.05]]).t().reshape(1, 2, 4, 1, 1)
    book(z)
    data = z.movedim(1, -1).reshape(-1, 2)
    assert torch.cdist(book.embeddings[2:3], data).min() < 1e-3, "restarted at one of the encoder outputs"
    assert torch.cdist(book.embeddings[:1], torch.zeros(1, 2)) < 0.2, "live codes move by EMA"


def test_eval_mode_leaves_the_codebook_alone():
    book = Codebook(n_codes=4, embedding_dim=3).eval()
    before = {k: v.clone() for k, v in book.state_dict().items()}
    book(torch.randn(1, 3, 2, 2, 2))
    assert all(torch.equal(before[k], v) for k, v in book.state_dict().items())


def _vq_loss(model):
    return lambda batch: {k: v for k, v in model.training_losses(batch["video"]).items() if v.dim() == 0}


def test_training_reduces_the_loss_and_resumes_exactly(tmp_path):
    data = MovingDigits("train", length=64, seed=0, spec=TINY_DATA)
    val = MovingDigits("test", length=8, seed=0, spec=TINY_DATA)
    settings = TrainSettings(steps=8, batch_size=4, lr=1e-3, val_every=4, checkpoint_every=4)

    torch.manual_seed(1)
    straight = VQVAE(TINY_VQ)
    first = train(straight, _vq_loss(straight), data, val, settings, tmp_path / "a.pt", progress=False)

    torch.manual_seed(1)
    interrupted = VQVAE(TINY_VQ)
    half = TrainSettings(**{**settings.__dict__, "steps": 4})
    train(interrupted, _vq_loss(interrupted), data, val, half, tmp_path / "b.pt", progress=False)
    resumed = VQVAE(TINY_VQ)  # a new process: a fresh model picks up the checkpoint
    second = train(resumed, _vq_loss(resumed), data, val, settings, tmp_path / "b.pt", progress=False)

    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert first == second
    torch.manual_seed(1)
    untrained = VQVAE(TINY_VQ)
    with torch.no_grad():
        untrained_loss = untrained.training_losses(torch.stack([val[i]["video"] for i in range(8)]))["recon_loss"]
    assert first["recon_loss"] < float(untrained_loss)
    assert "psnr" in first


def test_gpt_training_loss_and_conditioning():
    torch.manual_seed(0)
    vq = VQVAE(TINY_VQ).eval()
    gpt = VideoGPT(GPTConfig(hidden_dim=12, heads=2, layers=1, class_cond_dim=10, n_cond_frames=1,
                             resnet_widths=(4, 4, 4), resnet_blocks=(1, 1, 1, 1), resnet_dim=12), vq)
    video = torch.stack([MovingDigits("train", 4, spec=TINY_DATA)[i]["video"] for i in range(2)])
    loss = gpt.training_loss(video, torch.tensor([1, 2]))
    loss.backward()
    assert loss.item() > 0
    assert gpt.fc_out.weight.grad is not None and vq.encoder.convs[0].conv.weight.grad is None


TINY_TRAINING = ["--steps", "3", "--batch-size", "4", "--train-size", "40", "--val-every", "3"]


def _train_tiny_vqvae(out, seed: int = 0) -> None:
    assert main(["train-vqvae", "--out", str(out), "--frames", "4", "--resolution", "16", "--seed", str(seed),
                 "--n-hiddens", "8", "--embedding-dim", "8", "--n-codes", "16", "--n-res-layers", "1",
                 "--downsample", "2", "4", "4", *TINY_TRAINING]) == 0


def test_train_commands_write_bundles_that_sample(tmp_path, capsys):
    _train_tiny_vqvae(tmp_path / "vq")
    assert load_vqvae(tmp_path / "vq").config.latent_shape == (2, 4, 4)
    assert (tmp_path / "vq.train.pt").exists()
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(tmp_path / "gpt"), "--class-cond",
                 "--n-cond-frames", "1", "--hidden-dim", "12", "--heads", "2", "--layers", "1",
                 "--resnet-widths", "4", "4", "4", "--resnet-dim", "12", "--precision", "bfloat16",
                 *TINY_TRAINING]) == 0
    gpt = load_gpt(tmp_path / "gpt")
    assert gpt.info.class_names == [str(d) for d in range(10)]
    codes = sample(gpt, 2, class_labels=[3, 4], cond_frames=torch.zeros(2, 3, 1, 16, 16), seed=0)
    assert codes.shape == (2, 2, 4, 4)
    assert "wrote GPT bundle" in capsys.readouterr().out


def test_learning_rate_schedules():
    constant = TrainSettings(steps=100, lr=1e-3, warmup_steps=10)
    assert constant.lr_at(0) == pytest.approx(1e-4) and constant.lr_at(9) == pytest.approx(1e-3)
    assert constant.lr_at(50) == constant.lr_at(99) == 1e-3
    cosine = TrainSettings(steps=110, lr=1e-3, schedule="cosine", warmup_steps=10)
    assert cosine.lr_at(10) == pytest.approx(1e-3)
    assert cosine.lr_at(60) == pytest.approx(5e-4)
    rates = [cosine.lr_at(s) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(rates)) and rates[-1] < 1e-5
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        TrainSettings(schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainSettings(steps=10, warmup_steps=10)


def test_bad_training_settings():
    with pytest.raises(ValueError, match="steps must be at least 1"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainSettings(lr=0)


def test_codebook_picks_codes_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    book = Codebook(n_codes=256, embedding_dim=64).eval()
    # Encoder outputs almost halfway between two codes: float32 tells which is nearer, bf16 distances
    # (measured: 256 of these 4096 rows) do not.
    e = book.embeddings
    first, second = torch.randint(0, 256, (2, 4096))
    flat = 0.5 * (e[first] + e[second]) + 0.001 * (e[first] - e[second]) * torch.randn(4096, 1).sign()
    z = flat.t().reshape(1, 64, 16, 16, 16)
    plain = book(z)["codes"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = book(z)
        quantised = book.quantize(z.bfloat16())
    assert torch.equal(autocast["codes"], plain) and torch.equal(quantised, plain)
    assert autocast["embeddings"].dtype == torch.float32


def test_bf16_training_keeps_float32_weights_and_learns(tmp_path):
    data = MovingDigits("train", length=64, seed=0, spec=TINY_DATA)
    val = MovingDigits("test", length=8, seed=0, spec=TINY_DATA)
    torch.manual_seed(1)
    model = VQVAE(TINY_VQ)
    with torch.no_grad():
        before = model.training_losses(torch.stack([val[i]["video"] for i in range(8)]))["recon_loss"]
    settings = TrainSettings(steps=8, batch_size=4, lr=1e-3, val_every=8, precision="bfloat16")
    metrics = train(model, _vq_loss(model), data, val, settings, tmp_path / "bf16.pt", progress=False)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert metrics["recon_loss"] < float(before)
    state = torch.load(tmp_path / "bf16.pt", weights_only=True)
    assert state["settings"]["precision"] == "bfloat16"


def test_precision_choices():
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, auto"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="resolve auto first"):
        TrainSettings(precision="auto")


def test_a_decoder_finetune_keeps_the_codes_and_replaces_the_priors_decoder(tmp_path, capsys):
    _train_tiny_vqvae(tmp_path / "vq")
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--out", str(tmp_path / "gpt"), "--hidden-dim", "12",
                 "--heads", "2", "--layers", "1", *TINY_TRAINING]) == 0
    assert main(["train-vqvae", "--finetune-decoder", str(tmp_path / "vq"), "--out", str(tmp_path / "ft"),
                 "--lr", "1e-2", *TINY_TRAINING]) == 0
    base, tuned = load_vqvae(tmp_path / "vq"), load_vqvae(tmp_path / "ft")
    video = torch.stack([MovingDigits("test", 4, spec=TINY_DATA)[i]["video"] for i in range(4)])
    codes = base.encode(video)
    assert torch.equal(codes, tuned.encode(video))
    for name, value in base.state_dict().items():
        if name.startswith(("encoder.", "pre_vq_conv.", "codebook.")):
            assert torch.equal(value, tuned.state_dict()[name]), name
    # (Not every decoder tensor need move: where a tiny codebook gives the decoder one code, its first batch
    # norm sees a constant input, and its gain gets no gradient.)
    assert not torch.allclose(base.decode(codes), tuned.decode(codes), atol=1e-3)

    assert main(["set-decoder", str(tmp_path / "gpt"), "--vqvae", str(tmp_path / "ft")]) == 0
    gpt = load_gpt(tmp_path / "gpt")
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in gpt.vqvae.state_dict().items())
    assert gpt.info.source["decoder"] == str(tmp_path / "ft")

    _train_tiny_vqvae(tmp_path / "other", seed=1)  # another encoder: the prior's codes would not match
    assert main(["set-decoder", str(tmp_path / "gpt"), "--vqvae", str(tmp_path / "other")]) == 2
    assert "encodes videos differently" in capsys.readouterr().err
    assert all(torch.equal(v, tuned.state_dict()[k]) for k, v in load_gpt(tmp_path / "gpt").vqvae.state_dict().items())


def test_the_frame_encoder_under_bf16_autocast_tracks_float32_for_one_frame():
    """A single three-channel frame, what frames priors encode: torch's CPU bf16 conv3d returned NaN for it
    on an AVX-512 BF16 Xeon (a frames prior trained with --precision auto lost everything from step 1)."""
    from models.resnet import FrameEncoder

    torch.manual_seed(0)
    encoder = FrameEncoder(widths=(16, 32, 64), blocks=(1, 1, 1, 1), out_dim=96).eval()
    frames = torch.rand(8, 3, 1, 32, 32) - 0.5
    with torch.no_grad():
        plain = encoder(frames)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = encoder(frames).float()
    assert torch.isfinite(reduced).all()
    assert float((reduced - plain).norm() / plain.norm()) < 0.05
