"""Convert the official VideoGPT Lightning checkpoints (VQ-VAE or GPT) into our bundle format."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .bundle import DEFAULT_FPS, VQVAE_PREFIX, BundleInfo, load_weights, save_bundle
from .errors import CheckpointError, ConfigError
from .gpt import GPTConfig, VideoGPT
from .safe_checkpoint import TensorRef, read_checkpoint
from .vqvae import VQVAE, VQVAEConfig

VQVAE_SETTINGS = (
    "embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample", "sequence_length", "resolution")
# Full-attention GPTs save their N x N causal masks (512 MB for BAIR); they are derived, so dropped.
_MASK_BUFFER = re.compile(r"^attn_stack\.attn_nets\.\d+\.attn\.attn\.mask$")


def _settings(checkpoint: dict, where: str) -> dict[str, Any]:
    hp = checkpoint.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise CheckpointError(f"{where}: no hyper_parameters: not a VideoGPT Lightning checkpoint")
    args = hp.get("args", hp)
    settings = vars(args) if hasattr(args, "__dict__") else args
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: hyper_parameters['args'] is not a set of settings")
    return settings


def _arg(settings: dict, name: str, where: str, default: Any = ...) -> Any:
    if name in settings:
        return settings[name]
    if default is ...:
        raise CheckpointError(f"{where}: the checkpoint's args lack '{name}'")
    return default


def _shape(state: dict, name: str, where: str) -> tuple[int, ...]:
    if name not in state:
        raise CheckpointError(f"{where}: missing tensor '{name}'")
    return tuple(state[name].shape)


def _count(state: dict, prefix: str) -> int:
    """How many numbered children `prefix.<i>.` have tensors."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for name in state if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def _downsample(value: Any) -> list[int]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"downsample must be three integers, got {value!r}") from None


def vqvae_config_from_args(settings: dict, where: str) -> VQVAEConfig:
    """A VQ-VAE checkpoint's args hold every setting."""
    values = {name: _arg(settings, name, where) for name in VQVAE_SETTINGS}
    values["downsample"] = _downsample(values["downsample"])
    return VQVAEConfig(**values)


def vqvae_config_from_tensors(state: dict, settings: dict, where: str) -> VQVAEConfig:
    """A GPT checkpoint names its VQ-VAE only by path: read its settings off the `vqvae.*` tensors."""
    n_codes, embedding_dim = _shape(state, "vqvae.codebook.embeddings", where)
    n_hiddens = _shape(state, "vqvae.encoder.conv_last.conv.weight", where)[0]
    n_res_layers = _count(state, "vqvae.encoder.res_stack") - 1  # the last entry is the closing BatchNorm
    latent = [_shape(state, f"attn_stack.pos_embd.emb.d_{i}", where)[0] for i in range(3)]
    sequence_length = int(_arg(settings, "sequence_length", where))
    resolution = int(_arg(settings, "resolution", where))
    downsample = []
    for axis, size, lat in zip("thw", (sequence_length, resolution, resolution), latent):
        if size % lat:
            raise CheckpointError(f"{where}: video size {size} on axis {axis} is not a multiple "
                                  f"of the latent size {lat}")
        downsample.append(size // lat)
    return VQVAEConfig(embedding_dim=embedding_dim, n_codes=n_codes, n_hiddens=n_hiddens, n_res_layers=n_res_layers,
                       downsample=downsample, sequence_length=sequence_length, resolution=resolution)


def gpt_config_from_checkpoint(state: dict, settings: dict, where: str) -> GPTConfig:
    """The prior's settings: architecture sizes from the tensors, the rest from args, checked against each other."""
    hidden_dim = _shape(state, "fc_in.weight", where)[0]
    layers = _count(state, "attn_stack.attn_nets")
    class_cond_dim = _shape(state, "norm.w.weight", where)[1] if "norm.w.weight" in state else None
    n_cond_frames = _shape(state, "cond_pos_embd.emb.d_0", where)[0] if "cond_pos_embd.emb.d_0" in state else 0
    for name, from_tensors in (("hidden_dim", hidden_dim), ("layers", layers), ("n_cond_frames", n_cond_frames)):
        if name in settings and settings[name] != from_tensors:
            raise CheckpointError(f"{where}: args say {name}={settings[name]!r} but the tensors have {from_tensors}")
    args_classes = settings.get("class_cond_dim", class_cond_dim) if settings.get("class_cond", True) else None
    if args_classes != class_cond_dim:
        raise CheckpointError(f"{where}: args say class_cond_dim={args_classes!r} "
                              f"but the tensors have {class_cond_dim}")
    resnet: dict[str, Any] = {}
    if n_cond_frames:
        groups = [f"resnet.group{g}" for g in (1, 2, 3, 4)]
        resnet = dict(
            resnet_widths=[_shape(state, f"{g}.start_block.conv1.weight", where)[0] for g in groups[:3]],
            resnet_blocks=[1 + _count(state, f"{g}.blocks") for g in groups],
            resnet_dim=_shape(state, f"{groups[3]}.start_block.conv1.weight", where)[0],
        )
    return GPTConfig(
        hidden_dim=hidden_dim, heads=int(_arg(settings, "heads", where)), layers=layers,
        dropout=float(settings.get("dropout", 0.2)), attn_dropout=float(settings.get("attn_dropout", 0.3)),
        attn_type=str(_arg(settings, "attn_type", where)), class_cond_dim=class_cond_dim,
        n_cond_frames=n_cond_frames, **resnet)


def _plain(value: Any) -> int | str | None:
    """A checkpoint field as a JSON value for the bundle's provenance note."""
    return value if value is None or isinstance(value, (int, str)) else str(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_official_checkpoint(ckpt_path: str | Path, out_dir: str | Path, *, name: str | None = None,
                                fps: float = DEFAULT_FPS, class_names: list[str] | None = None) -> Path:
    """Convert an official VideoGPT VQ-VAE or GPT `.ckpt` into a bundle at out_dir; returns out_dir.

    The checkpoint is read with a restricted unpickler: no code from it runs.
    """
    path = Path(ckpt_path)
    where = str(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{where}: no state_dict: not a VideoGPT Lightning checkpoint")
    state = {k: v for k, v in checkpoint["state_dict"].items() if not _MASK_BUFFER.match(str(k))}
    if not all(isinstance(v, TensorRef) for v in state.values()):
        raise CheckpointError(f"{where}: state_dict holds something other than tensors")
    settings = _settings(checkpoint, where)
    try:
        if "fc_in.weight" in state:
            vq_config = vqvae_config_from_tensors(state, settings, where)
            gpt_config = gpt_config_from_checkpoint(state, settings, where)
            gpt_config.check_against(vq_config)
            model: VQVAE | VideoGPT = VideoGPT(gpt_config, VQVAE(vq_config))
            vq_state = {k[len(VQVAE_PREFIX):]: v for k, v in state.items() if k.startswith(VQVAE_PREFIX)}
            load_weights(model.vqvae, vq_state, f"{where} (its VQ-VAE)")
            own = {k: v for k, v in state.items() if not k.startswith(VQVAE_PREFIX)}
            load_weights(model, own, where, skip_prefix=VQVAE_PREFIX)
        elif "codebook.embeddings" in state:
            model = VQVAE(vqvae_config_from_args(settings, where))
            load_weights(model, state, where)
        else:
            raise CheckpointError(f"{where}: neither a VideoGPT VQ-VAE nor a GPT checkpoint "
                                  "(no codebook.embeddings, no fc_in.weight)")
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    info = BundleInfo(
        name=name or path.stem, kind="gpt" if isinstance(model, VideoGPT) else "vqvae", fps=fps,
        class_names=class_names,
        source={"converted_from": path.name, "sha256": _sha256(path),
                "global_step": _plain(checkpoint.get("global_step")),
                "pytorch_lightning_version": _plain(checkpoint.get("pytorch-lightning_version")),
                "vqvae": _plain(settings.get("vqvae"))},
    )
    return save_bundle(model, out_dir, info)
