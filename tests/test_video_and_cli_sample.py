"""mp4 output through real ffmpeg, frame input, and the `sample` command end to end."""

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from cli.main import main
from media import pad_frames, read_frames, tile, write_mp4
from models import convert_official_checkpoint
from models.data.frames import frames_to_tensor, to_uint8_frames


def probe(path):
    """Frame count and size of a video, read back by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    return meta, np.stack(frames)


def codec_of(path):
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                            capture_output=True, text=True)
    return result.stderr


def test_write_mp4_is_h264_yuv420p_and_round_trips(tmp_path):
    video = torch.zeros(3, 8, 32, 32) - 0.5
    video[:, :, 8:24, 8:24] = 0.5  # a bright square on black
    frames = to_uint8_frames(video)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    out = write_mp4(frames, tmp_path / "square.mp4", fps=8, scale=2)
    assert out == {"frames": 8, "width": 64, "height": 64, "fps": 8, "content_type": "video/mp4"}
    _, decoded = probe(tmp_path / "square.mp4")
    assert decoded.shape == (8, 64, 64, 3)
    assert decoded[:, 24:40, 24:40].mean() > 240 and decoded[:, :10, :10].mean() < 15
    info = codec_of(tmp_path / "square.mp4")
    assert "h264" in info and "yuv420p" in info


def test_odd_sizes_are_padded_to_even(tmp_path):
    out = write_mp4(np.zeros((3, 15, 21, 3), dtype=np.uint8), tmp_path / "odd.mp4", fps=4)
    assert (out["width"], out["height"]) == (22, 16)
    assert probe(tmp_path / "odd.mp4")[1].shape == (3, 16, 22, 3)


def test_upscaling_is_nearest_neighbour_and_pads_odd_sides(tmp_path):
    frames = np.zeros((4, 5, 7, 3), dtype=np.uint8)
    frames[:, ::2, ::2] = 255  # a grid of single bright pixels: any blending would show between them
    out = write_mp4(frames, tmp_path / "crisp.mp4", fps=4, scale=3)
    assert (out["width"], out["height"]) == (22, 16)  # 21 x 15, padded to even sides
    decoded = probe(tmp_path / "crisp.mp4")[1].astype(int)
    assert decoded.shape == (4, 16, 22, 3)
    blocks = decoded[:, :15, :21].reshape(4, 5, 3, 7, 3, 3)
    bright = blocks[:, ::2, :, ::2].mean(axis=(0, 1, 3, 5))  # each of the 3x3 pixels of a bright block
    dark = blocks[:, 1::2, :, 1::2].mean(axis=(0, 1, 3, 5))
    assert bright.min() > 200 and dark.max() < 60  # every pixel of a block takes its source pixel's value
    assert decoded[:, 15:].mean() < 20 and decoded[:, :, 21:].mean() < 20  # the padding is black
    with pytest.raises(ValueError, match="scale >= 1"):
        write_mp4(frames, tmp_path / "bad.mp4", fps=4, scale=0)


def test_tile_places_samples_in_a_grid():
    videos = np.stack([np.full((2, 4, 4, 3), 10 * (i + 1), dtype=np.uint8) for i in range(3)])
    grid = tile(videos, gap=1)
    assert grid.shape == (2, 9, 9, 3)
    assert grid[0, 0, 0, 0] == 10 and grid[0, 0, 5, 0] == 20 and grid[0, 5, 0, 0] == 30 and grid[0, 5, 5, 0] == 0


def test_frames_from_an_image_are_resized_and_center_cropped(tmp_path):
    image = np.zeros((1, 40, 80, 3), dtype=np.uint8)
    image[:, :, 20:60] = 255  # the centre square is white, the sides black
    write_mp4(image, tmp_path / "wide.mp4", fps=1)
    frames = read_frames(tmp_path / "wide.mp4", 2, resolution=16)
    assert len(frames) == 1  # a one-frame video gives one frame; pad_frames repeats it as the models need
    clip = frames_to_tensor(pad_frames(frames, 2))
    assert clip.shape == (3, 2, 16, 16)
    assert float(clip.min()) >= -0.5 and float(clip.max()) <= 0.5
    assert float(clip[:, :, 4:12, 4:12].mean()) > 0.4  # the crop keeps the white centre


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("bundles")
    convert_official_checkpoint(fixtures_dir / "gpt_classcond_full.ckpt", out / "classes",
                                class_names=["zero", "one", "two", "three", "four"])
    convert_official_checkpoint(fixtures_dir / "gpt_framecond_full.ckpt", out / "frames")
    return out


def test_sample_command_writes_a_grid_mp4(bundles, tmp_path, capsys):
    out = tmp_path / "grid.mp4"
    assert main(["sample", str(bundles / "classes"), "--n", "4", "--label", "three", "--seed", "7",
                 "-o", str(out), "--scale", "2"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    _, frames = probe(out)
    assert frames.shape == (8, 2 * (2 * 32 + 2), 2 * (2 * 32 + 2), 3)


def test_sample_command_one_file_per_sample_with_frames(bundles, tmp_path):
    first = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    write_mp4(first, tmp_path / "cond.mp4", fps=1)
    assert main(["sample", str(bundles / "frames"), "--n", "2", "--frames", str(tmp_path / "cond.mp4"),
                 "--seed", "1", "--per-sample", "-o", str(tmp_path / "s.mp4"), "--scale", "1"]) == 0
    for i in range(2):
        assert probe(tmp_path / f"s_{i}.mp4")[1].shape == (8, 32, 32, 3)


def test_sample_command_rejects_unknown_labels(bundles, tmp_path, capsys):
    assert main(["sample", str(bundles / "classes"), "--label", "seven", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "neither a class index nor a class name (known: zero, one" in capsys.readouterr().err
    assert main(["sample", str(bundles / "classes"), "--label", "9", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert json.loads((bundles / "classes" / "config.json").read_text())["class_names"][3] == "three"
