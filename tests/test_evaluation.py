"""The quality measures measure what they say; `eval` writes a report and a contact sheet."""

import json
from pathlib import Path

import torch

from cli.main import main
from media import read_frames
from models.data import MovingDigitsSpec, moving_digit
from models.data.frames import frames_to_tensor
from models.evaluation import check_bars, frechet_distance, motion_stats, psnr

REPO = Path(__file__).resolve().parents[1]


def test_psnr_of_known_errors():
    a = torch.zeros(2, 3, 4, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    values = psnr(b, a)
    assert abs(float(values[0]) - 20.0) < 1e-4 and float(values[1]) > 90


def test_frechet_distance_is_zero_for_equal_sets_and_grows_with_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen)
    assert abs(frechet_distance(x, x)) < 1e-6
    assert abs(frechet_distance(x, x + 2.0) - 16.0) < 1e-6  # |mean shift|^2 = 4 * 2^2
    assert frechet_distance(x, x * 3) > 1.0


def test_motion_of_real_digits_and_of_a_still_or_doubled_one():
    spec = MovingDigitsSpec(resolution=32, scale=2)
    videos = torch.stack([frames_to_tensor(moving_digit(0, "test", i, spec)[0]) for i in range(8)])
    displacement, one_digit = motion_stats(videos, 16)
    assert float(displacement.mean()) > 1.0 and bool(one_digit.all())
    still = videos[:1, :, :1].expand(-1, -1, 16, -1, -1)
    assert float(motion_stats(still, 16)[0]) < 1e-4
    doubled = videos[:1].clone()
    doubled[..., :8, :8] = 0.5  # a second bright blob in the corner
    doubled[..., -8:, -8:] = 0.5
    assert not bool(motion_stats(doubled, 16)[1])


def test_check_bars_reports_met_and_missed():
    bars = check_bars({"reconstruction": {"psnr_db": 30.0}, "class": {"classifier_agreement": 0.5}})
    assert {b["metric"]: b["met"] for b in bars} == {"reconstruction.psnr_db": True,
                                                     "class.classifier_agreement": False}


def _train_tiny_vqvae(out, common: list[str]) -> None:
    """A 2-step VQ-VAE for 16 frames of 32x32 moving digits, the size the eval's data needs."""
    assert main(["train-vqvae", "--out", str(out), "--frames", "16", "--resolution", "32", "--n-hiddens", "8",
                 "--embedding-dim", "8", "--n-codes", "16", "--n-res-layers", "0", "--downsample", "8", "8", "8",
                 *common]) == 0


def test_eval_command_writes_report_and_sheet(tmp_path, capsys):
    common = ["--steps", "2", "--batch-size", "4", "--train-size", "40", "--val-every", "2"]
    _train_tiny_vqvae(tmp_path / "work" / "vq", common)
    gpt_args = ["--vqvae", str(tmp_path / "work" / "vq"), "--hidden-dim", "12", "--heads", "2", "--layers", "1",
                *common]
    assert main(["train-gpt", *gpt_args, "--class-cond", "--out", str(tmp_path / "b" / "class")]) == 0
    assert main(["train-gpt", *gpt_args, "--n-cond-frames", "1", "--resnet-widths", "4", "4", "4",
                 "--resnet-dim", "12", "--out", str(tmp_path / "b" / "frames")]) == 0
    assert main(["train-gpt", *gpt_args, "--out", str(tmp_path / "b" / "unconditional")]) == 0
    assert main(["eval", str(tmp_path / "b"), "--out", str(tmp_path / "eval"), "--n", "6", "--batch", "3",
                 "--classifier-steps", "2"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report) >= {"real", "reconstruction", "class", "frames", "unconditional", "bars"}
    assert 0 <= report["class"]["classifier_agreement"] <= 1
    assert "first_frame_psnr_db" in report["frames"]
    assert 0 <= report["class"]["colour_purity"] <= 1 and report["real"]["colour_purity"] > 0.97
    assert "digit_stability" not in report["class"]  # no bundle here has a frame recognizer to read frames with
    assert report["video_frames"] == 16
    assert (tmp_path / "b" / "classifier.safetensors").exists()
    sheet = (tmp_path / "eval" / "contact_sheet.png").read_bytes()
    assert sheet.startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "reconstruction.psnr_db" in out and ("MISS" in out or "ok" in out)
    image = read_frames(tmp_path / "eval" / "contact_sheet.png", 1)[0]  # ffmpeg decodes it
    assert image.shape[1] >= 512 and image.shape[2] == 3 and image.max() > 0
    assert report["precision"] == "float32"
    # The same report with the priors decoding in int8: what a reduced precision costs is read side by side.
    assert main(["eval", str(tmp_path / "b" / "class"), "--out", str(tmp_path / "int8"), "--n", "3", "--batch", "3",
                 "--precision", "int8"]) == 0
    reduced = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert reduced["precision"] == "int8" and 0 <= reduced["class"]["classifier_agreement"] <= 1


def test_eval_of_a_prior_without_frames_mode(tmp_path, capsys):
    """A report without a frames section: the video length must not be mistaken for one (it was, and crashed)."""
    common = ["--steps", "2", "--batch-size", "4", "--train-size", "40", "--val-every", "2", "--device", "cpu"]
    _train_tiny_vqvae(tmp_path / "vq", common)
    assert main(["train-gpt", "--vqvae", str(tmp_path / "vq"), "--hidden-dim", "12", "--heads", "2", "--layers", "1",
                 "--class-cond", "--condition-dropout", "0.5", *common, "--out", str(tmp_path / "class")]) == 0
    assert main(["train-classifier", "--steps", "2", "--width", "4", "--device", "cpu",
                 "--out", str(tmp_path / "cls.safetensors")]) == 0
    assert main(["eval", str(tmp_path / "class"), "--classifier", str(tmp_path / "cls.safetensors"), "--device", "cpu",
                 "--out", str(tmp_path / "eval"), "--n", "4", "--batch", "2"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report) >= {"unconditional", "class"} and "frames" not in report
    assert {bar["metric"].split(".")[0] for bar in report["bars"]} == {"reconstruction", "class", "unconditional"}


def _real_videos(n: int = 8, length: int = 16) -> torch.Tensor:
    spec = MovingDigitsSpec(resolution=32, scale=2, frames=length)
    return torch.stack([frames_to_tensor(moving_digit(0, "test", i, spec)[0]) for i in range(n)])


def test_colour_purity_is_one_for_real_digits_and_falls_for_a_second_colour():
    from models.steadiness import colour_purity

    videos = _real_videos()
    assert float(colour_purity(videos).min()) > 0.97
    mixed = videos.clone()
    mixed[:, :, :, 16:] = mixed[:, :, :, 16:].flip(1)  # the lower half's channels reversed: another hue
    assert float(colour_purity(mixed).mean()) < 0.85


def test_digit_stability_of_real_digits_and_of_one_that_turns_into_another():
    from models.bundle import RECOGNIZER_FILE
    from models.classifier import load_classifier
    from models.steadiness import digit_stability, frame_digits

    recognizer = load_classifier(REPO / "weights" / "moving-digits-frames" / "class-guide" / RECOGNIZER_FILE,
                                 "frame recognizer")
    videos = _real_videos(20)
    assert float(digit_stability(recognizer, videos).mean()) > 0.95
    digits = frame_digits(recognizer, videos)
    majority = torch.mode(digits, dim=1).values
    a, b = next((i, j) for i in range(20) for j in range(20) if majority[i] != majority[j])
    turning = torch.cat([videos[a:a + 1, :, :10], videos[b:b + 1, :, 10:]], dim=2)  # 10 frames of one, 6 of another
    assert float(digit_stability(recognizer, turning)) <= 10 / 16 + 1 / 16


def test_seam_ratio_sees_a_jump_where_a_window_begins():
    from models.long_eval import seam_ratio

    videos = _real_videos(4, length=32)
    assert 0.7 < seam_ratio(videos, 16, 8) < 1.3
    jumped = videos.clone()
    jumped[:, :, 16:] = jumped[:, :, 16:].roll(6, dims=-1)  # everything from frame 16 on shifted 6 px
    assert seam_ratio(jumped, 16, 8) > 1.5


def test_eval_long_reports_windows_seams_and_steadiness_of_the_shipped_models(tmp_path):
    assert main(["eval", str(REPO / "weights" / "moving-digits"), str(REPO / "weights" / "moving-digits-frames"),
                 "--classifier", str(REPO / "weights" / "moving-digits-classifier.safetensors"), "--device", "cpu",
                 "--long", "32", "--n", "2", "--batch", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "long_report.json").read_text())
    for mode in ("class", "frames"):
        figures = report[mode]["32_frames"]
        assert len(figures["classifier_agreement"]) == len(figures["motion_px_per_frame"]) == 2  # 16-frame windows
        assert figures["seam_ratio"] > 0 and 0 <= figures["digit_stability"] <= 1
        assert 0 <= figures["colour_purity"] <= 1
    assert (tmp_path / "long_contact_sheet.png").read_bytes().startswith(b"\x89PNG")
