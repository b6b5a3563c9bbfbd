"""Training clips from a folder of videos in the reference layout: root/{train,test}/[<class>/]*.mp4."""

from __future__ import annotations

import logging
from pathlib import Path

import imageio_ffmpeg
import torch
from torch.utils.data import Dataset

from media import pad_frames, read_frames

from .frames import frames_to_tensor

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


class EmptyDatasetError(ValueError):
    """No usable clip was found."""


class VideoFolder(Dataset):
    """Clips of `frames` consecutive frames, resized and center-cropped to `resolution`.

    Each video gives its non-overlapping clips (a video shorter than `frames` gives none). Classes are the
    sub-folder names, sorted; videos directly under the split folder have no class (label -1). Files that
    cannot be decoded are skipped with a warning naming them.
    """

    def __init__(self, root: str | Path, split: str, frames: int, resolution: int):
        self.root, self.frames, self.resolution = Path(root), frames, resolution
        folder = self.root / split
        if not folder.is_dir():
            raise EmptyDatasetError(f"{folder}: no such folder (expected {self.root}/{split}/[<class>/]*.mp4)")
        self.class_names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        files: list[tuple[Path, int]] = [
            (p, -1) for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
        for label, name in enumerate(self.class_names):
            files += [(p, label) for p in sorted((folder / name).iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
        self.clips: list[tuple[Path, int, int]] = []  # (file, first frame, label)
        for path, label in files:
            try:
                n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
            except Exception as exc:  # ffmpeg refuses the file: corrupt, truncated or not a video
                log.warning("skipping %s: cannot be decoded (%s)", path, str(exc).splitlines()[0] if str(exc) else exc)
                continue
            self.clips += [(path, start, label) for start in range(0, n_frames - frames + 1, frames)]
        if not self.clips:
            raise EmptyDatasetError(f"{folder}: no clip of {frames} frames in {len(files)} video file(s)")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path, start, label = self.clips[index]
        # pad_frames: the container may have promised more frames than it holds
        frames = pad_frames(read_frames(path, start + self.frames, self.resolution)[start:], self.frames)
        return {"video": frames_to_tensor(frames), "label": torch.tensor(label)}
