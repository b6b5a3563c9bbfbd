"""Training data: the moving-digits generator and a loader for folders of real videos."""

from .moving_digits import CLASS_NAMES, MovingDigits, MovingDigitsSpec, moving_digit
from .video_folder import EmptyDatasetError, VideoFolder

__all__ = ["CLASS_NAMES", "EmptyDatasetError", "MovingDigits", "MovingDigitsSpec", "VideoFolder", "moving_digit"]
