"""moving-digits is deterministic and moves as specified; real video folders load, skip bad files, refuse empty."""

import logging

import numpy as np
import pytest
import torch

from media import write_mp4
from models.data import EmptyDatasetError, MovingDigits, MovingDigitsSpec, VideoFolder, moving_digit


def centroids(frames):
    mass = frames.astype(np.float64).sum(axis=-1)
    ys, xs = np.mgrid[: mass.shape[1], : mass.shape[2]]
    total = mass.sum(axis=(1, 2))
    return np.stack([(mass * xs).sum(axis=(1, 2)) / total, (mass * ys).sum(axis=(1, 2)) / total], axis=1)


def test_videos_are_deterministic_by_seed_and_differ_across_seeds_and_splits():
    a, label_a = moving_digit(3, "train", 5)
    b, label_b = moving_digit(3, "train", 5)
    assert np.array_equal(a, b) and label_a == label_b
    assert not np.array_equal(a, moving_digit(4, "train", 5)[0])
    assert not np.array_equal(a, moving_digit(3, "test", 5)[0])


@pytest.mark.parametrize("spec", [MovingDigitsSpec(), MovingDigitsSpec(resolution=32, scale=2)])
def test_one_bright_digit_moves_and_stays_inside(spec):
    for i in range(20):
        frames, label = moving_digit(0, "train", i, spec)
        assert frames.shape == (16, spec.resolution, spec.resolution, 3) and frames.dtype == np.uint8
        assert 0 <= label <= 9
        lit = frames.max(axis=-1) > 0
        assert lit.any(axis=(1, 2)).all(), "the digit is on every frame"
        assert frames.max() >= 200, "bright on dark"
        assert lit.mean() < 0.3
        steps = np.linalg.norm(np.diff(centroids(frames), axis=0), axis=1)
        assert steps.mean() >= 0.5, "the digit moves"


def test_integer_velocity_moves_whole_pixels_at_a_constant_speed():
    spec = MovingDigitsSpec(resolution=32, scale=2, min_speed=1.0, max_speed=1.5)
    seen = set()
    for i in range(40):
        frames, _ = moving_digit(0, "train", i, spec)
        lit = frames.max(axis=-1) > 0
        # the glyph's lit pixels keep their shape: frame t is frame 0 shifted by whole pixels
        shifts = []
        for t in range(1, len(frames)):
            matches = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                       if np.array_equal(np.roll(lit[t - 1], (dy, dx), axis=(0, 1)), lit[t])]
            assert matches, f"video {i}: frame {t} is not a whole-pixel shift of frame {t - 1}"
            shifts.append(matches[0])
        moves = [s for s in shifts if s != (0, 0)]
        assert moves and all(max(abs(dx), abs(dy)) == 1 for dx, dy in moves)
        seen.add(shifts[0])
    assert len(seen) >= 6, "all eight directions are drawn"


def test_labels_cover_all_digits_and_test_uses_other_glyphs():
    labels = {moving_digit(0, "train", i)[1] for i in range(200)}
    assert labels == set(range(10))
    dataset = MovingDigits("test", length=3, seed=1)
    item = dataset[2]
    assert item["video"].shape == (3, 16, 64, 64) and item["video"].dtype == torch.float32
    assert float(item["video"].min()) >= -0.5 and float(item["video"].max()) <= 0.5
    assert int(item["label"]) == moving_digit(1, "test", 2)[1]
    with pytest.raises(IndexError):
        dataset[3]


def test_each_video_has_one_of_six_pure_colours():
    pure = {(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1)}
    seen = set()
    for i in range(60):
        frames, _ = moving_digit(0, "train", i, MovingDigitsSpec(resolution=32, scale=2))
        brightest = frames.reshape(-1, 3)[frames.reshape(-1, 3).sum(axis=1).argmax()]
        colour = tuple(int(c) for c in (brightest > 0))
        assert colour in pure and set(brightest.tolist()) <= {0, int(brightest.max())}
        seen.add(colour)
    assert seen == pure
    any_hue, _ = moving_digit(0, "train", 1, MovingDigitsSpec(hues=0, min_saturation=0.4))
    assert len(set(any_hue.reshape(-1, 3)[any_hue.reshape(-1, 3).sum(axis=1).argmax()].tolist())) == 3
    with pytest.raises(ValueError, match="hues must be >= 0"):
        MovingDigitsSpec(hues=-1)


def test_zero_saturation_gives_white_digits():
    frames, _ = moving_digit(0, "train", 1, MovingDigitsSpec(min_saturation=0.0, max_saturation=0.0))
    lit = frames.max(axis=-1) > 0
    assert np.array_equal(frames[..., 0][lit], frames[..., 2][lit])


def test_glyph_must_fit():
    with pytest.raises(ValueError, match="do not fit"):
        MovingDigitsSpec(resolution=16, scale=3)


def _write_clip(path, frames=20, size=(48, 80)):
    rng = np.random.default_rng(len(str(path)))
    video = rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8)
    write_mp4(video, path, fps=8)


def test_video_folder_reads_classes_and_clips(tmp_path, caplog):
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        _write_clip(tmp_path / "train" / cls / "a.mp4", frames=20)
    _write_clip(tmp_path / "train" / "dog" / "long.mp4", frames=33)
    (tmp_path / "train" / "dog" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with caplog.at_level(logging.WARNING):
        dataset = VideoFolder(tmp_path, "train", frames=8, resolution=32)
    assert "broken.mp4" in caplog.text
    assert dataset.class_names == ["cat", "dog"]
    # 20 frames -> 2 clips of 8, 33 frames -> 4 clips
    assert len(dataset) == 2 + 2 + 4
    labels = sorted(int(dataset[i]["label"]) for i in range(len(dataset)))
    assert labels == [0, 0, 1, 1, 1, 1, 1, 1]
    video = dataset[len(dataset) - 1]["video"]
    assert video.shape == (3, 8, 32, 32)


def test_video_folder_without_classes_and_empty(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(EmptyDatasetError, match="no clip of 8 frames in 0 video"):
        VideoFolder(tmp_path, "test", frames=8, resolution=32)
    _write_clip(tmp_path / "test" / "short.mp4", frames=4)
    with pytest.raises(EmptyDatasetError, match="no clip of 8 frames in 1 video"):
        VideoFolder(tmp_path, "test", frames=8, resolution=32)
    _write_clip(tmp_path / "test" / "ok.mp4", frames=8)
    dataset = VideoFolder(tmp_path, "test", frames=8, resolution=32)
    assert len(dataset) == 1 and int(dataset[0]["label"]) == -1
    with pytest.raises(EmptyDatasetError, match="no such folder"):
        VideoFolder(tmp_path, "train", frames=8, resolution=32)
