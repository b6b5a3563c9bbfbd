"""A dataset's videos encoded to codes once, so that training a prior skips the VQ-VAE in every step (the
VQ-VAE is frozen: its codes of a video never change). Keeps each item's codes, label and first frames."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..vqvae import VQVAE


class EncodedVideos(Dataset):
    def __init__(self, videos: Dataset, vqvae: VQVAE, n_cond_frames: int = 0, batch: int = 64,
                 device: str | torch.device = "cpu", log=None):
        """Encode every item of videos (items with "video" (3, T, H, W) and "label"); n_cond_frames: the
        first frames kept for frame-conditional priors (stored as uint8)."""
        codes, labels, frames = [], [], []
        vqvae = vqvae.to(device).eval()
        for start in range(0, len(videos), batch):
            items = [videos[i] for i in range(start, min(len(videos), start + batch))]
            video = torch.stack([item["video"] for item in items])
            with torch.no_grad():
                codes.append(vqvae.encode(video.to(device)).cpu().to(torch.int16))
            labels += [item["label"] for item in items]
            if n_cond_frames:
                frames.append(((video[:, :, :n_cond_frames] + 0.5) * 255).round().to(torch.uint8))
            if log is not None and (start // batch) % 50 == 0:
                log(f"encoded {start + len(items)} of {len(videos)} videos")
        self.codes = torch.cat(codes)
        self.labels = torch.stack(labels)
        self.frames = torch.cat(frames) if frames else None
        self.class_names = getattr(videos, "class_names", None)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"codes": self.codes[index].long(), "label": self.labels[index]}
        if self.frames is not None:
            item["frames"] = self.frames[index].float() / 255 - 0.5
        return item
