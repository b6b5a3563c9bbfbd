"""The VideoGPT VQ-VAE: 3D-conv encoder with axial attention, EMA codebook, 3D-conv decoder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, InputError
from .layers import PADDINGS, MultiHeadAttention, SamePadConv3d, SamePadConvTranspose3d, halving_strides
from .settings import Settings, require_int


@dataclass(frozen=True)
class VQVAEConfig(Settings):
    """Every setting of a VQ-VAE; the names are those of the official `args`."""

    embedding_dim: int = 256
    n_codes: int = 2048
    n_hiddens: int = 240
    n_res_layers: int = 4
    downsample: tuple[int, int, int] = (4, 4, 4)
    sequence_length: int = 16
    resolution: int = 64
    # Ours, not the reference's: False drops the axial attention from the residual blocks, so each code
    # sees only its neighbourhood. Codes of a background cell are then the same wherever the digit is,
    # and a shifted digit gets shifted codes: far fewer distinct code patterns for the prior to learn.
    axial_attention: bool = True
    # Ours too: "replicate" pads the convolutions with the edge values instead of zeros. Zero is mid-grey
    # for video in [-0.5, 0.5], so with zeros the first and last code steps and the border cells see a grey
    # frame around a dark one and get codes of their own; replicate keeps a digit's codes the same there.
    padding: str = "zeros"

    LATER_SETTINGS: ClassVar[tuple[str, ...]] = ("axial_attention", "padding")

    def __post_init__(self) -> None:
        object.__setattr__(self, "downsample", tuple(self.downsample))
        if not isinstance(self.axial_attention, bool):
            raise ConfigError(f"axial_attention must be true or false, got {self.axial_attention!r}")
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        for name in ("embedding_dim", "n_codes", "n_hiddens", "sequence_length", "resolution"):
            require_int(name, getattr(self, name), 1)
        require_int("n_res_layers", self.n_res_layers, 0)
        if self.n_hiddens < 2:
            raise ConfigError(f"n_hiddens must be at least 2 (the residual blocks halve it), got {self.n_hiddens}")
        if len(self.downsample) != 3:
            raise ConfigError(f"downsample must have 3 entries (t, h, w), got {list(self.downsample)}")
        for d in self.downsample:
            if not isinstance(d, int) or isinstance(d, bool) or d < 1 or d & (d - 1):
                raise ConfigError(f"downsample entries must be powers of two, got {list(self.downsample)}")
        if max(self.downsample) < 2:
            raise ConfigError("downsample must shrink at least one axis (an entry of 2 or more)")
        sizes = (self.sequence_length, self.resolution, self.resolution)
        for axis, size, d in zip("thw", sizes, self.downsample):
            if size % d:
                raise ConfigError(f"downsample {list(self.downsample)} does not divide the video size "
                                  f"{list(sizes)} on axis {axis}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        sizes = (self.sequence_length, self.resolution, self.resolution)
        return tuple(s // d for s, d in zip(sizes, self.downsample))  # type: ignore[return-value]



class AxialBlock(nn.Module):
    """Sum of three non-causal self-attentions along W, H and T of a channels-first video."""

    def __init__(self, n_hiddens: int, n_head: int = 2):
        super().__init__()
        self.attn_w = MultiHeadAttention(n_hiddens, n_hiddens, n_head)
        self.attn_h = MultiHeadAttention(n_hiddens, n_hiddens, n_head)
        self.attn_t = MultiHeadAttention(n_hiddens, n_hiddens, n_head)

    @staticmethod
    def _along(attn: MultiHeadAttention, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Self-attention along grid axis (1 = T, 2 = H, 3 = W) of x (B, T, H, W, C).

        The tensor layouts and the order of operations are the reference's, step for step: codes are an
        argmin, and near-ties flip under a different but equally valid float rounding.
        """
        def heads_first(t: torch.Tensor, d: int) -> torch.Tensor:  # (B, T, H, W, heads*d) -> (B, heads, T, H, W, d)
            return t.view(*t.shape[:-1], attn.n_head, d).movedim(-2, 1).contiguous()

        def axis_last(t: torch.Tensor) -> torch.Tensor:  # the attended axis second to last
            return t.movedim(axis + 1, -2).contiguous()

        q = axis_last(heads_first(attn.w_qs(x), attn.d_k))
        k = axis_last(heads_first(attn.w_ks(x), attn.d_k))
        v = axis_last(heads_first(attn.w_vs(x), attn.d_v))
        grid_shape = v.shape
        q, k, v = q.flatten(end_dim=-3), k.flatten(end_dim=-3), v.flatten(end_dim=-3)
        weights = F.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
        out = torch.matmul(weights, v).view(grid_shape).movedim(-2, axis + 1).contiguous()
        return attn.fc(out.movedim(1, -2).contiguous().flatten(start_dim=-2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(1, -1).contiguous()
        out = self._along(self.attn_w, x, 3) + self._along(self.attn_h, x, 2) + self._along(self.attn_t, x, 1)
        return out.movedim(-1, 1).contiguous()


class AttentionResidualBlock(nn.Module):
    def __init__(self, n_hiddens: int, attention: bool = True, padding: str = "zeros"):
        super().__init__()
        layers: list[nn.Module] = [
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            SamePadConv3d(n_hiddens, n_hiddens // 2, 3, bias=False, padding=padding),
            nn.BatchNorm3d(n_hiddens // 2),
            nn.ReLU(),
            SamePadConv3d(n_hiddens // 2, n_hiddens, 1, bias=False),
        ]
        if attention:
            layers += [nn.BatchNorm3d(n_hiddens), nn.ReLU(), AxialBlock(n_hiddens, 2)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _res_stack(n_hiddens: int, n_res_layers: int, attention: bool, padding: str) -> nn.Sequential:
    return nn.Sequential(*[AttentionResidualBlock(n_hiddens, attention, padding) for _ in range(n_res_layers)],
                         nn.BatchNorm3d(n_hiddens), nn.ReLU())


class Encoder(nn.Module):
    def __init__(self, n_hiddens: int, n_res_layers: int, downsample: tuple[int, int, int], attention: bool = True,
                 padding: str = "zeros"):
        super().__init__()
        strides = halving_strides(downsample)
        self.convs = nn.ModuleList(
            SamePadConv3d(3 if i == 0 else n_hiddens, n_hiddens, 4, stride=s, padding=padding)
            for i, s in enumerate(strides))
        self.conv_last = SamePadConv3d(n_hiddens, n_hiddens, 3, padding=padding)
        self.res_stack = _res_stack(n_hiddens, n_res_layers, attention, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.res_stack(self.conv_last(x))


class Decoder(nn.Module):
    def __init__(self, n_hiddens: int, n_res_layers: int, upsample: tuple[int, int, int], attention: bool = True,
                 padding: str = "zeros"):
        super().__init__()
        strides = halving_strides(upsample)
        self.res_stack = _res_stack(n_hiddens, n_res_layers, attention, padding)
        self.convts = nn.ModuleList(
            SamePadConvTranspose3d(n_hiddens, 3 if i == len(strides) - 1 else n_hiddens, 4, stride=s)
            for i, s in enumerate(strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_stack(x)
        for i, convt in enumerate(self.convts):
            x = convt(x)
            if i < len(self.convts) - 1:
                x = F.relu(x)
        return x


class Codebook(nn.Module):
    """K code vectors, kept as exponential moving averages of the encoder outputs assigned to them."""

    def __init__(self, n_codes: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("embeddings", torch.randn(n_codes, embedding_dim))
        self.register_buffer("N", torch.zeros(n_codes))
        self.register_buffer("z_avg", self.embeddings.clone())
        self.n_codes = n_codes

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of flat (M, E); first code on ties."""
        # The reference's expansion of the squared distance, term for term, so codes match it exactly;
        # in float32 even under bf16 autocast, where rounded distances would pick other codes near ties.
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            distances = ((flat ** 2).sum(dim=1, keepdim=True)
                         - 2 * flat @ self.embeddings.t()
                         + (self.embeddings.t() ** 2).sum(dim=0, keepdim=True))
        return torch.argmin(distances, dim=1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (B, t, h, w) of a channels-first encoder output z (B, E, t, h, w)."""
        flat = z.movedim(1, -1).flatten(end_dim=-2)
        return self.nearest(flat).view(z.shape[0], *z.shape[2:])

    @property
    def needs_init(self) -> bool:
        """A codebook that never saw data (all counts zero) starts from the first batch's encoder outputs."""
        return not bool(self.N.any())

    def _sample_rows(self, flat: torch.Tensor) -> torch.Tensor:
        """n_codes random rows of flat; with fewer rows than codes, jittered repeats (as the reference)."""
        rows, width = flat.shape
        if rows < self.n_codes:
            flat = flat.repeat((self.n_codes + rows - 1) // rows, 1)
            flat = flat + torch.randn_like(flat) * (0.01 / math.sqrt(width))
        return flat[torch.randperm(flat.shape[0], device=flat.device)[: self.n_codes]]

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> None:
        initial = self._sample_rows(flat)
        self.embeddings.copy_(initial)
        self.z_avg.copy_(initial)
        self.N.fill_(1.0)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """EMA of counts and sums (decay 0.99); codes used less than once are restarted at encoder outputs."""
        onehot = F.one_hot(codes, self.n_codes).type_as(flat)
        self.N.mul_(0.99).add_(onehot.sum(dim=0), alpha=0.01)
        self.z_avg.mul_(0.99).add_((flat.t() @ onehot).t(), alpha=0.01)
        total = self.N.sum()
        weights = (self.N + 1e-7) / (total + self.n_codes * 1e-7) * total
        self.embeddings.copy_(self.z_avg / weights.unsqueeze(1))
        used = (self.N >= 1).float().unsqueeze(1)
        self.embeddings.mul_(used).add_(self._sample_rows(flat) * (1 - used))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise z (B, E, t, h, w) for training: straight-through embeddings, codes, commitment loss,
        perplexity; in training mode the codebook also takes its EMA step. All in float32 (the EMA sums would
        lose precision in bf16), so under autocast it runs with autocast off."""
        with torch.autocast(z.device.type, enabled=False):
            return self._quantise_for_training(z.float())

    def _quantise_for_training(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = z.movedim(1, -1).flatten(end_dim=-2)
        if self.training and self.needs_init:
            self._initialise(flat.detach())
        codes = self.nearest(flat.detach())
        embeddings = self.lookup(codes.view(z.shape[0], *z.shape[2:]))
        commitment = 0.25 * F.mse_loss(z, embeddings.detach())
        if self.training:
            self._update(flat.detach(), codes)
        usage = F.one_hot(codes, self.n_codes).float().mean(dim=0)
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        return {"embeddings": (embeddings - z).detach() + z, "codes": codes.view(z.shape[0], *z.shape[2:]),
                "commitment_loss": commitment, "perplexity": perplexity}

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors, channels first: (B, t, h, w) -> (B, E, t, h, w). The codes may be on another device
        (the engine hands finished grids back on the CPU); they move to the codebook's."""
        return F.embedding(codes.to(self.embeddings.device), self.embeddings).movedim(-1, 1)


class VQVAE(nn.Module):
    """Encodes (B,3,T,H,W) video in [-0.5, 0.5] to (B,t,h,w) codes and decodes them back."""

    # The parts that decide a video's codes (held fixed by freeze_codes).
    CODE_SIDE: ClassVar[tuple[str, ...]] = ("encoder", "pre_vq_conv", "codebook")

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c.n_hiddens, c.n_res_layers, c.downsample, c.axial_attention, c.padding)
        self.decoder = Decoder(c.n_hiddens, c.n_res_layers, c.downsample, c.axial_attention, c.padding)
        self.pre_vq_conv = SamePadConv3d(c.n_hiddens, c.embedding_dim, 1)
        self.post_vq_conv = SamePadConv3d(c.embedding_dim, c.n_hiddens, 1)
        self.codebook = Codebook(c.n_codes, c.embedding_dim)
        self.codes_frozen = False

    def code_modules(self) -> tuple[nn.Module, ...]:
        return tuple(getattr(self, name) for name in self.CODE_SIDE)

    def freeze_codes(self) -> None:
        """Hold the codes fixed: later training changes only the decoder (and post-VQ conv), so a prior
        trained on this VQ-VAE's codes stays valid with the fine-tuned decoder."""
        for module in self.code_modules():
            module.requires_grad_(False)
        self.codes_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> VQVAE:
        super().train(mode)
        if self.codes_frozen:  # no BatchNorm statistics or codebook EMA updates on the code side
            for module in self.code_modules():
                module.eval()
        return self

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    @property
    def n_codes(self) -> int:
        return self.config.n_codes

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def check_video(self, video: torch.Tensor) -> None:
        """Raise InputError unless video is a float (B, 3, T, R, R) batch of this model's size."""
        c = self.config
        expected = (3, c.sequence_length, c.resolution, c.resolution)
        if not isinstance(video, torch.Tensor) or not video.is_floating_point():
            raise InputError("video must be a float tensor (B, 3, T, H, W) with values in [-0.5, 0.5]")
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise InputError(f"video has shape {tuple(video.shape)}; this VQ-VAE takes "
                             f"(B, {', '.join(map(str, expected))})"
                             f" (B videos, RGB, {c.sequence_length} frames of {c.resolution}x{c.resolution})")

    def check_codes(self, codes: torch.Tensor, any_length: bool = False) -> None:
        """Raise InputError unless codes is an integer (B, t, h, w) batch of valid code indices (any_length:
        any number of latent time steps t)."""
        shape = self.latent_shape
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise InputError("codes must be an integer tensor (B, t, h, w)")
        if codes.dim() != 4 or tuple(codes.shape[2:]) != shape[1:] or codes.shape[1] < 1 \
                or (not any_length and codes.shape[1] != shape[0]):
            grid = f"(B, {'t' if any_length else shape[0]}, {shape[1]}, {shape[2]})"
            raise InputError(f"codes have shape {tuple(codes.shape)}; this model's latent grid is {grid}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_codes):
            raise InputError(f"codes must lie in 0..{self.n_codes - 1}, got values "
                             f"{int(codes.min())}..{int(codes.max())}")

    def encode_continuous(self, video: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation encoder output z, (B, E, t, h, w)."""
        return self.pre_vq_conv(self.encoder(video))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """float (B,3,T,H,W) in [-0.5, 0.5] -> long (B,t,h,w) codes."""
        self.check_video(video)
        return self.codebook.quantize(self.encode_continuous(video))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of codes, (B, E, t, h, w)."""
        return self.codebook.lookup(codes)

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E, t, h, w) code vectors -> (B, 3, T, H, W) video, not clamped."""
        return self.decoder(self.post_vq_conv(embeddings))

    def training_losses(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference's objective: MSE(x̂, x) / 0.06 + 0.25 MSE(z, sg(e)); the codebook learns by EMA."""
        vq = self.codebook(self.encode_continuous(video))
        reconstruction = self.decode_embeddings(vq["embeddings"])
        recon_loss = F.mse_loss(reconstruction, video) / 0.06
        with torch.no_grad():  # PSNR of the displayed (clamped) video, pixel values in [0, 1]
            mse = F.mse_loss(reconstruction.clamp(-0.5, 0.5), video)
            psnr = 10 * torch.log10(1 / mse.clamp_min(1e-10))
        return {"loss": recon_loss + vq["commitment_loss"], "recon_loss": recon_loss,
                "commitment_loss": vq["commitment_loss"], "perplexity": vq["perplexity"], "psnr": psnr,
                "reconstruction": reconstruction}

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """long (B,t,h,w) codes -> float (B,3,T,H,W) video, not clamped."""
        self.check_codes(codes)
        return self.decode_embeddings(self.embed(codes.long()))

    @property
    def convolutional(self) -> bool:
        """Whether decoding is convolutional only (no axial attention): codes of any length decode as one
        grid, each frame from the codes around it."""
        return not self.config.axial_attention

    def decode_long(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, t', h, w) of any length -> video (B, 3, T', H, W). A convolutional VQ-VAE decodes them as
        one grid (each frame sees the codes around it, as in training); one with axial attention, whose
        attention along time spans what it is given, decodes native-length windows overlapping by half and
        cross-fades them linearly, so no frame is far from the middle of a window it was decoded in."""
        t = self.latent_shape[0]
        if self.convolutional or codes.shape[1] <= t:
            return self.decode_any_length(codes)
        self.check_codes(codes, any_length=True)
        steps, stride = codes.shape[1], max(1, t // 2)
        starts = [*range(0, steps - t, stride), steps - t]
        per_step = self.config.downsample[0]
        video = weight = None
        for start in starts:
            window = self.decode_embeddings(self.embed(codes[:, start:start + t].long()))
            ramp = torch.minimum(torch.arange(1, window.shape[2] + 1), torch.arange(window.shape[2], 0, -1))
            ramp = ramp.to(window).clamp(max=stride * per_step).view(1, 1, -1, 1, 1)
            if video is None:
                video = window.new_zeros(window.shape[0], 3, steps * per_step, *window.shape[3:])
                weight = window.new_zeros(1, 1, steps * per_step, 1, 1)
            frames = slice(start * per_step, (start + t) * per_step)
            video[:, :, frames] += window * ramp
            weight[:, :, frames] += ramp
        return video / weight

    def decode_any_length(self, codes: torch.Tensor) -> torch.Tensor:
        """long (B, t', h, w) codes of any number t' of latent time steps -> (B, 3, t' * time downsample, H, W)."""
        self.check_codes(codes, any_length=True)
        return self.decode_embeddings(self.embed(codes.long()))
