"""Our weight bundle: a directory with `config.json` and safetensors files; save, validate and load.

    config.json        format, format_version, kind ("vqvae" | "gpt"), name, fps, class_names,
                       vqvae (every VQVAEConfig setting), gpt (every GPTConfig setting; kind "gpt")
    vqvae.safetensors  the VQ-VAE's tensors (names as in the official checkpoints, without "vqvae.")
    gpt.safetensors    the prior's own tensors (kind "gpt"), without its VQ-VAE's
    class-guide/       optional, in a frames prior's bundle (set-class-guide): a class prior's bundle, its
                       frame recognizer (recognizer.safetensors) and guide.json ({"scale": S})
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .classifier import FrameRecognizer, load_classifier, save_classifier
from .errors import CheckpointError, ConfigError
from .fidelity import choose_precision
from .files import write_safetensors
from .gpt import GPTConfig, VideoGPT
from .limits import MAX_GUIDANCE, MAX_TEMPERATURE, is_guidance_scale, is_temperature
from .precision import PRECISIONS, check_precision
from .sampling import ClassGuide
from .vqvae import VQVAE, VQVAEConfig

BUNDLE_FORMAT = "videogpt-serve-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
VQVAE_FILE = "vqvae.safetensors"
GPT_FILE = "gpt.safetensors"
CLASS_GUIDE_DIR = "class-guide"
RECOGNIZER_FILE = "recognizer.safetensors"
GUIDE_FILE = "guide.json"
DEFAULT_FPS = 8.0
UNCONDITIONAL = ("dropped", "classes")
# A prior holds its frozen VQ-VAE under this prefix; bundles keep those tensors in VQVAE_FILE.
VQVAE_PREFIX = "vqvae."


@dataclass
class BundleInfo:
    """What a bundle says about its model besides the architecture."""

    name: str
    kind: str = "gpt"
    fps: float = DEFAULT_FPS
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    # The classifier-free guidance scale of requests that name none (1: off; needs condition dropout).
    guidance: float = 1.0
    # The sampling temperature of requests that name none (1: the prior's own distribution).
    temperature: float = 1.0
    # How a class-conditional prior samples requests without a class: "dropped", through its class-dropped
    # path (condition dropout), or "classes": draw a class uniformly, then sample it (at the request's
    # guidance), p(x) = sum_c p(c) p(x | c) for balanced classes.
    unconditional: str = "dropped"
    # Measured fidelity of reduced decoding precisions on the bundle's own codes (`videogpt-serve fidelity`):
    # {"bfloat16": {"kl_nats_per_code": ..., "top1_agreement": ...}, ...}; what precision auto consults.
    precision_fidelity: dict[str, dict[str, float]] | None = None


def config_from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a config dataclass from JSON data: every field present, no unknown ones.

    Settings added after bundles were first written (the class's LATER_SETTINGS) may be missing: older
    bundles predate them and get their defaults, which are what those bundles' models computed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of settings, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown setting '{unknown[0]}' (known: {', '.join(names)})")
    missing = [n for n in names if n not in data and n not in getattr(cls, "LATER_SETTINGS", ())]
    if missing:
        raise ConfigError(f"{where}: missing setting '{missing[0]}'")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_class_names(class_names: Any, class_cond_dim: int | None, where: str) -> list[str] | None:
    if class_names is None:
        return None
    if not isinstance(class_names, list) or not all(isinstance(n, str) and n for n in class_names):
        raise ConfigError(f"{where}: class_names must be a list of non-empty strings")
    if class_cond_dim is None:
        raise ConfigError(f"{where}: class_names are given but the model is not class-conditional")
    if len(class_names) != class_cond_dim:
        raise ConfigError(f"{where}: {len(class_names)} class_names for a model with {class_cond_dim} classes")
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"{where}: class_names must be unique")
    return class_names


def read_bundle_config(bundle_dir: str | Path) -> tuple[BundleInfo, VQVAEConfig, GPTConfig | None]:
    """Parse and validate a bundle's config.json."""
    path = Path(bundle_dir) / CONFIG_FILE
    if not Path(bundle_dir).is_dir():
        raise CheckpointError(f"{bundle_dir}: no such bundle directory")
    if not path.is_file():
        raise CheckpointError(f"{bundle_dir}: not a bundle (no {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{path}: not a {BUNDLE_FORMAT} config (its 'format' field is missing or different)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {raw.get('format_version')!r} is not supported "
                          f"(this version reads {FORMAT_VERSION})")
    kind = raw.get("kind")
    if kind not in ("vqvae", "gpt"):
        raise ConfigError(f"{path}: kind must be 'vqvae' or 'gpt', got {kind!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: name must be a non-empty string")
    fps = raw.get("fps", DEFAULT_FPS)
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps <= 240:
        raise ConfigError(f"{path}: fps must be a number in (0, 240], got {fps!r}")
    vq_config = config_from_dict(VQVAEConfig, raw.get("vqvae"), f"{path}: vqvae")
    gpt_config = None
    if kind == "gpt":
        gpt_config = config_from_dict(GPTConfig, raw.get("gpt"), f"{path}: gpt")
        try:
            gpt_config.check_against(vq_config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    n_classes = gpt_config.class_cond_dim if gpt_config else None
    class_names = check_class_names(raw.get("class_names"), n_classes, str(path))
    source = raw.get("source") or {}
    guidance = raw.get("guidance", 1.0)
    check_guidance(guidance, gpt_config, str(path))
    temperature = raw.get("temperature", 1.0)
    check_temperature(temperature, str(path))
    unconditional = raw.get("unconditional", "dropped")
    check_unconditional(unconditional, gpt_config, str(path))
    fidelity = check_precision_fidelity(raw.get("precision_fidelity"), str(path))
    info = BundleInfo(name=name, kind=kind, fps=float(fps), class_names=class_names, source=source,
                      guidance=float(guidance), temperature=float(temperature), unconditional=unconditional,
                      precision_fidelity=fidelity)
    return info, vq_config, gpt_config


def update_config(bundle_dir: str | Path, changes: dict[str, Any]) -> BundleInfo:
    """Set fields of a bundle's config.json in place (its sampling defaults, its fidelity record); refused
    with the reading's error, and the file left as it was, unless the result is a valid bundle config."""
    path = Path(bundle_dir) / CONFIG_FILE
    read_bundle_config(bundle_dir)
    before = path.read_text()
    path.write_text(json.dumps({**json.loads(before), **changes}, indent=2) + "\n")
    try:
        return read_bundle_config(bundle_dir)[0]
    except ConfigError:
        path.write_text(before)
        raise


def check_precision_fidelity(value: Any, where: str) -> dict[str, dict[str, float]] | None:
    """A bundle's recorded fidelity per reduced precision, validated (None: not measured)."""
    if value is None:
        return None
    reduced = [p for p in PRECISIONS if p != "float32"]
    if not isinstance(value, dict) or not set(value) <= set(reduced) or not all(
            isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and not isinstance(v.get(k), bool)
                                        for k in ("kl_nats_per_code", "top1_agreement")) for v in value.values()):
        raise ConfigError(f"{where}: precision_fidelity must map {' and/or '.join(reduced)} to "
                          "{kl_nats_per_code, top1_agreement} numbers")
    return {p: {k: float(v[k]) for k in ("kl_nats_per_code", "top1_agreement")} for p, v in value.items()}


def check_unconditional(unconditional: Any, gpt_config: GPTConfig | None, where: str) -> None:
    if unconditional not in UNCONDITIONAL:
        raise ConfigError(f"{where}: unconditional must be one of {', '.join(UNCONDITIONAL)}, got {unconditional!r}")
    if unconditional == "classes" and not (gpt_config and gpt_config.class_conditional
                                           and gpt_config.conditions_optional):
        raise ConfigError(f"{where}: unconditional 'classes' needs a class-conditional prior trained with "
                          "condition dropout")


def check_guidance(guidance: Any, gpt_config: GPTConfig | None, where: str) -> None:
    if not is_guidance_scale(guidance):
        raise ConfigError(f"{where}: guidance must be a number in [0, {MAX_GUIDANCE}], got {guidance!r}")
    if guidance != 1 and not (gpt_config and gpt_config.conditions_optional):
        raise ConfigError(f"{where}: guidance {guidance} needs a prior trained with condition dropout")


def check_temperature(temperature: Any, where: str) -> None:
    if not is_temperature(temperature):
        raise ConfigError(f"{where}: temperature must be a number in (0, {MAX_TEMPERATURE:g}], got {temperature!r}")


def check_tensors(expected: dict[str, torch.Tensor], got: dict[str, Any], where: str) -> None:
    """Raise CheckpointError naming the first tensor that is missing, unexpected or of the wrong shape."""
    for name, ref in expected.items():
        if name not in got:
            raise CheckpointError(f"{where}: missing tensor '{name}' (expected shape {list(ref.shape)})")
        shape = list(got[name].shape)
        if shape != list(ref.shape):
            raise CheckpointError(f"{where}: tensor '{name}' has shape {shape}, the config expects {list(ref.shape)}")
        if got[name].dtype.is_floating_point != ref.dtype.is_floating_point:
            raise CheckpointError(f"{where}: tensor '{name}' has dtype {got[name].dtype}, expected {ref.dtype}")
    for name in got:
        if name not in expected:
            raise CheckpointError(f"{where}: unexpected tensor '{name}' (not part of a model with this config)")


def own_state(module: nn.Module, skip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """module's state dict without the tensors under skip_prefix (a prior's frozen "vqvae.")."""
    state = module.state_dict()
    return {k: v for k, v in state.items() if not (skip_prefix and k.startswith(skip_prefix))}


def load_weights(module: nn.Module, tensors: dict[str, Any], where: str, skip_prefix: str | None = None) -> None:
    """Validate tensors against module's state dict (less skip_prefix), then copy them in, cast to its dtypes.

    Values may be tensors or anything with `.load()` returning one (checkpoint tensors read lazily).
    """
    expected = own_state(module, skip_prefix)
    check_tensors(expected, tensors, where)
    loaded = {}
    for name, target in expected.items():
        value = tensors[name]
        loaded[name] = (value if isinstance(value, torch.Tensor) else value.load()).to(target.dtype)
    # Not strict: the tensors under skip_prefix stay as they are; everything else was checked above.
    module.load_state_dict(loaded, strict=False)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: bundle is missing {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def load_vqvae(bundle_dir: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """The VQ-VAE of a bundle (a VQ-VAE bundle, or a GPT bundle's own), in eval mode."""
    info, vq_config, _ = read_bundle_config(bundle_dir)
    vq = VQVAE(vq_config)
    load_weights(vq, _read_safetensors(Path(bundle_dir) / VQVAE_FILE), str(Path(bundle_dir) / VQVAE_FILE))
    vq.info = info  # type: ignore[attr-defined]
    return vq.to(device).eval()


def load_gpt(bundle_dir: str | Path, device: str | torch.device = "cpu", with_class_guide: bool = True,
             precision: str = "float32") -> VideoGPT:
    """The GPT prior of a bundle, carrying its VQ-VAE as `.vqvae` and, when the bundle has one and
    with_class_guide, its class guide as `.class_guide`, in eval mode. precision: what it decodes in
    (`.decode_precision`; models/precision.py; auto: measured now, the report in `.precision_report`); its
    weights stay float32."""
    check_precision(precision)
    info, _, gpt_config = read_bundle_config(bundle_dir)
    if gpt_config is None:
        raise CheckpointError(f"{bundle_dir}: this bundle holds only a VQ-VAE; load it with load_vqvae")
    vq = load_vqvae(bundle_dir)
    gpt = VideoGPT(gpt_config, vq)
    path = Path(bundle_dir) / GPT_FILE
    load_weights(gpt, _read_safetensors(path), str(path), skip_prefix=VQVAE_PREFIX)
    gpt.info = info  # type: ignore[attr-defined]
    guide_dir = Path(bundle_dir) / CLASS_GUIDE_DIR
    if with_class_guide and guide_dir.is_dir():
        gpt.class_guide = _load_class_guide(gpt, guide_dir, device)
    gpt = gpt.to(device).eval()
    gpt.precision_report = None  # type: ignore[attr-defined]
    if precision == "auto":
        precision, gpt.precision_report = choose_precision(gpt, info.precision_fidelity)
    gpt.decode_precision = precision  # type: ignore[attr-defined]
    return gpt


def _contiguous(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """CPU copies for safetensors; floating tensors stored in dtype when given (loading casts them back)."""
    return {k: v.detach().to("cpu", dtype=dtype if dtype and v.is_floating_point() else v.dtype).contiguous()
            for k, v in state.items()}


def save_bundle(model: VQVAE | VideoGPT, out_dir: str | Path, info: BundleInfo,
                storage_dtype: torch.dtype | None = None) -> Path:
    """Write model (a VQ-VAE, or a prior with its VQ-VAE) as a bundle directory; returns the directory.

    storage_dtype (e.g. torch.float16) halves the files of shipped models; loading casts back to float32.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, VideoGPT):
        vq, gpt_config = model.vqvae, model.config
        check_class_names(info.class_names, gpt_config.class_cond_dim, "class_names")
        check_guidance(info.guidance, gpt_config, "guidance")
        check_temperature(info.temperature, "temperature")
        check_unconditional(info.unconditional, gpt_config, "unconditional")
        write_safetensors(_contiguous(own_state(model, VQVAE_PREFIX), storage_dtype), out / GPT_FILE)
    else:
        vq, gpt_config = model, None
        if info.class_names is not None:
            raise ConfigError("a VQ-VAE bundle has no classes: class_names must be None")
        (out / GPT_FILE).unlink(missing_ok=True)
    write_safetensors(_contiguous(vq.state_dict(), storage_dtype), out / VQVAE_FILE)
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "gpt" if gpt_config else "vqvae",
        "name": info.name,
        "fps": info.fps,
        "class_names": info.class_names,
        "vqvae": vq.config.to_dict(),
        "gpt": gpt_config.to_dict() if gpt_config else None,
        "latent_shape": list(vq.latent_shape),
        "n_tokens": math.prod(vq.latent_shape),
        "source": info.source,
        "guidance": info.guidance,
        "temperature": info.temperature,
        "unconditional": info.unconditional,
        "precision_fidelity": info.precision_fidelity,
    }
    if gpt_config is None:
        for key in ("gpt", "guidance", "temperature", "unconditional", "precision_fidelity"):
            del config[key]
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def code_difference(a: VQVAE, b: VQVAE) -> str | None:
    """Why VQ-VAEs a and b may encode a video to different codes (settings, or the first differing tensor of
    encoder, pre-VQ convolution and codebook), or None when they cannot."""
    if a.config != b.config:
        return "its VQ-VAE settings differ"
    state_a, state_b = a.state_dict(), b.state_dict()
    code_side = tuple(f"{name}." for name in VQVAE.CODE_SIDE)
    differing = [k for k in state_a if k.startswith(code_side) and not torch.equal(state_a[k], state_b[k])]
    return f"{differing[0]} differs" if differing else None


def set_decoder(prior_dir: str | Path, vqvae_dir: str | Path, storage_dtype: torch.dtype | None = None) -> Path:
    """Give the prior bundle at prior_dir the VQ-VAE of vqvae_dir: allowed only when the two encode every
    video to the same codes (identical encoder, pre-VQ conv and codebook), as after a decoder fine-tune."""
    gpt, new = load_gpt(prior_dir), load_vqvae(vqvae_dir)
    difference = code_difference(gpt.vqvae, new)
    if difference:
        raise ConfigError(f"{vqvae_dir}: its VQ-VAE encodes videos differently from {prior_dir}'s ({difference}), "
                          "so the prior's codes would not match; only a decoder fine-tuned with the codes held "
                          "fixed (train-vqvae --finetune-decoder) can replace it")
    gpt.vqvae.load_state_dict(new.state_dict())
    info = dataclasses.replace(gpt.info, source={**(gpt.info.source or {}), "decoder": str(vqvae_dir)})
    return save_bundle(gpt, prior_dir, info, storage_dtype=storage_dtype)


def check_class_guide(frames: VideoGPT, prior: VideoGPT, recognizer: FrameRecognizer, scale: Any,
                      where: str) -> None:
    """Refuse a class guide that cannot steer this frames prior, saying why."""
    if not frames.config.frame_conditional:
        raise ConfigError(f"{where}: a class guide steers frame-conditional priors, and this prior takes no frames")
    if not (prior.config.class_conditional and prior.config.conditions_optional):
        raise ConfigError(f"{where}: the guide's prior must be class-conditional and trained with condition dropout "
                          "(its logits without a class are the other half of the guidance)")
    difference = code_difference(frames.vqvae, prior.vqvae)
    if difference:
        raise ConfigError(f"{where}: the guide's prior was trained on other codes ({difference}): both priors "
                          "must share one VQ-VAE's encoder and codebook")
    if recognizer.config.n_classes != prior.config.class_cond_dim:
        raise ConfigError(f"{where}: the recognizer tells {recognizer.config.n_classes} classes and the prior "
                          f"{prior.config.class_cond_dim}")
    if not is_guidance_scale(scale):
        raise ConfigError(f"{where}: scale must be a number in [0, {MAX_GUIDANCE}], got {scale!r}")


def set_class_guide(frames_dir: str | Path, prior_dir: str | Path, recognizer_path: str | Path, scale: float,
                    storage_dtype: torch.dtype | None = None) -> Path:
    """Copy the class prior at prior_dir and the frame recognizer at recognizer_path into the frames prior
    bundle at frames_dir (its class-guide/ folder), to follow with the given scale."""
    # Without the frames bundle's present guide: it is being replaced (and may be the reason why).
    frames, prior = load_gpt(frames_dir, with_class_guide=False), load_gpt(prior_dir)
    recognizer = load_classifier(recognizer_path, "frame recognizer")
    check_class_guide(frames, prior, recognizer, scale, str(frames_dir))
    out = Path(frames_dir) / CLASS_GUIDE_DIR
    save_bundle(prior, out, prior.info, storage_dtype=storage_dtype)
    save_classifier(recognizer, out / RECOGNIZER_FILE)
    (out / GUIDE_FILE).write_text(json.dumps({"scale": scale, "prior": str(prior_dir),
                                              "recognizer": str(recognizer_path)}, indent=2) + "\n")
    return out


def _load_class_guide(frames: VideoGPT, guide_dir: Path, device: str | torch.device) -> ClassGuide:
    path = guide_dir / GUIDE_FILE
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a class guide's settings ({exc})") from None
    scale = settings.get("scale") if isinstance(settings, dict) else None
    prior = load_gpt(guide_dir)
    recognizer = load_classifier(guide_dir / RECOGNIZER_FILE, "frame recognizer")
    check_class_guide(frames, prior, recognizer, scale, str(guide_dir))
    return ClassGuide(prior.to(device), recognizer.to(device), float(scale))
