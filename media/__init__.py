"""Images and videos in and out of bytes and files with ffmpeg (imageio-ffmpeg): numpy only, no torch.

The gateway decodes uploads with it, the worker encodes mp4s, the training data loader reads clips.
"""

from .decode import DecodeError, DecodeLimits, pad_frames, read_frames
from .encode import MP4_CONTENT_TYPE, png_bytes, tile, write_mp4, write_png

__all__ = [
    "MP4_CONTENT_TYPE", "DecodeError", "DecodeLimits", "pad_frames", "png_bytes", "read_frames", "tile",
    "write_mp4", "write_png",
]
