"""media: decoding limits (pixels from the header, wall time) and resize-and-crop by ffmpeg."""

import numpy as np
import pytest

from media import DecodeError, DecodeLimits, read_frames, write_mp4


@pytest.fixture
def clip(tmp_path):
    frames = np.zeros((10, 48, 80, 3), dtype=np.uint8)
    frames[:, 16:32, 32:48] = 255  # a white square in the centre
    path = tmp_path / "clip.mp4"
    write_mp4(frames, path, fps=5)
    return path


def test_resize_and_center_crop(clip):
    out = read_frames(clip, 3, resolution=24)
    assert out.shape == (3, 24, 24, 3)
    assert out[:, 8:16, 8:16].mean() > 200 and out[:, :, :2].mean() < 30


def test_bytes_and_paths_decode_alike(clip):
    assert np.array_equal(read_frames(clip.read_bytes(), 2, resolution=16), read_frames(clip, 2, resolution=16))


def test_pixel_limit_is_checked_before_decoding(clip):
    with pytest.raises(DecodeError, match="80x48 pixels are over the limit of 1000") as caught:
        read_frames(clip, 1, limits=DecodeLimits(max_pixels=1000))
    assert caught.value.too_large


def test_decode_time_limit(clip):
    with pytest.raises(DecodeError, match="took longer than") as caught:
        read_frames(clip, 10, limits=DecodeLimits(timeout_s=1e-9))
    assert caught.value.too_large


def test_undecodable_and_missing(tmp_path):
    with pytest.raises(DecodeError, match="cannot be decoded"):
        read_frames(b"not a video at all", 1)
    with pytest.raises(DecodeError, match="no such file"):
        read_frames(tmp_path / "missing.mp4", 1)
