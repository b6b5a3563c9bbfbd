"""Training data: the moving-digits generator and a loader for folders of real videos."""

from .encoded import EncodedVideos
from .moving_digits import CLASS_NAMES, MovingDigits, MovingDigitsSpec, moving_digit
from .video_folder import EmptyDatasetError, VideoFolder

__all__ = [
    "CLASS_NAMES", "EmptyDatasetError", "EncodedVideos", "MovingDigits", "MovingDigitsSpec", "VideoFolder",
    "moving_digit", "open_dataset",
]


def open_dataset(source: str, split: str, frames: int, resolution: int, length: int = 20000, seed: int = 0):
    """'moving-digits' (generated: `length` videos, seeded) or a folder root/{train,test}/[<class>/]*.mp4."""
    if source == "moving-digits":
        if resolution % 8 or resolution < 16:
            raise ValueError("moving-digits needs a resolution that is a multiple of 8 and at least 16, "
                             f"got {resolution}")
        spec = MovingDigitsSpec.for_video(frames, resolution)
        return MovingDigits(split, length=length if split == "train" else max(1, length // 10), seed=seed, spec=spec)
    return VideoFolder(source, split, frames, resolution)
