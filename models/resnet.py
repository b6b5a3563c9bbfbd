"""The 3D ResNet that encodes conditioning frames for the GPT prior (the reference's `resnet34`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import halving_strides


class NormReLU(nn.Module):
    """torch LayerNorm over the channels of a channels-first tensor, in float32, then optional ReLU."""

    def __init__(self, channels: int, relu: bool = True):
        super().__init__()
        self.relu = relu
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(x.float()).type_as(x)
        return F.relu(out) if self.relu else out


class ChannelLayerNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, filters: int, stride: int | tuple[int, ...], use_projection: bool = False):
        super().__init__()
        self.use_projection = use_projection
        if use_projection:
            self.proj_conv = nn.Conv3d(in_channels, filters, kernel_size=1, stride=stride, bias=False)
            self.proj_bnr = NormReLU(filters, relu=False)
        self.conv1 = nn.Conv3d(in_channels, filters, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bnr1 = NormReLU(filters)
        self.conv2 = nn.Conv3d(filters, filters, kernel_size=3, stride=1, padding=1, bias=False)
        self.bnr2 = NormReLU(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj_bnr(self.proj_conv(x)) if self.use_projection else x
        h = self.bnr2(self.conv2(self.bnr1(self.conv1(x))))
        return F.relu(h + shortcut)


class BlockGroup(nn.Module):
    def __init__(self, in_channels: int, filters: int, blocks: int, stride: int | tuple[int, ...]):
        super().__init__()
        self.start_block = ResidualBlock(in_channels, filters, stride, use_projection=True)
        self.blocks = nn.Sequential(*[ResidualBlock(filters, filters, 1) for _ in range(blocks - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.start_block(x))


class FrameEncoder(nn.Module):
    """(B, 3, n, R, R) frames -> (B, n, R/s, R/s, out_dim) channels-last features.

    Four block groups; groups 2-4 halve the spatial axes while halvings of `stride` remain (stride
    (1, 4, 4) halves in groups 2 and 3, as the official models do).
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256), blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
                 out_dim: int = 240, stride: tuple[int, int, int] = (1, 4, 4)):
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(nn.Conv3d(3, w0, kernel_size=3, padding=1, bias=False), NormReLU(w0))
        group_strides = halving_strides(stride, stages=3)
        self.group1 = BlockGroup(w0, w0, blocks[0], stride=1)
        self.group2 = BlockGroup(w0, w1, blocks[1], stride=group_strides[0])
        self.group3 = BlockGroup(w1, w2, blocks[2], stride=group_strides[1])
        self.group4 = BlockGroup(w2, out_dim, blocks[3], stride=group_strides[2])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # Under bfloat16 autocast, torch's CPU 3D convolution of a single three-channel frame returns NaN on
        # some CPUs (oneDNN on an AVX-512 BF16 Xeon; two frames or more channels are fine): the stem keeps
        # float32, and the layers after it may take autocast's bfloat16.
        with torch.autocast(frames.device.type, enabled=False):
            x = self.stem(frames.float())
        x = self.group4(self.group3(self.group2(self.group1(x))))
        return x.movedim(1, -1)
