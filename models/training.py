"""One training loop for both models: seeded batches, Adam, periodic validation, resumable checkpoints."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch], dict[str, torch.Tensor]]


SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bfloat16")


def resolve_precision(precision: str, device: str) -> str:
    """float32 or bfloat16. "auto" takes bfloat16 where the hardware computes it natively (CUDA with bf16,
    CPUs with AVX-512: there bf16 matmuls and convolutions ran 1.3-1.6x faster), else float32, which
    emulated bf16 would only slow down."""
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, auto, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 5000
    batch_size: int = 16
    lr: float = 3e-4
    grad_clip: float = 1.0
    val_every: int = 500
    val_batches: int = 4
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "cpu"
    # "constant", or "cosine": linear warm-up over warmup_steps, then a cosine decay to zero at `steps`.
    schedule: str = "constant"
    warmup_steps: int = 0
    # "bfloat16": the forward pass runs under autocast (weights, optimiser and codebook stay float32).
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "val_batches", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be float32 or bfloat16 (resolve auto first), got {self.precision!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate of update number `step` (0-based): a function of the step, so resuming needs no
        scheduler state."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * 0.5 * (1 + math.cos(math.pi * progress))


def collate(items: list[Batch]) -> Batch:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def batches(dataset: Dataset, batch_size: int, seed: int, start_step: int):
    """Endless shuffled batches, epoch e in the order of a generator seeded (seed, e): resumable at any step."""
    per_epoch = len(dataset) // batch_size
    if per_epoch == 0:
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for b in range(offset, per_epoch):
            yield collate([dataset[int(i)] for i in order[b * batch_size:(b + 1) * batch_size]])
            step += 1


def _to(batch: Batch, device: str) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


def _forward(loss_fn: LossFn, batch: Batch, settings: TrainSettings) -> dict[str, torch.Tensor]:
    """loss_fn(batch) in the settings' precision; scalars come back as float32."""
    bf16 = settings.precision == "bfloat16"
    with torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16, enabled=bf16):
        out = loss_fn(_to(batch, settings.device))
    return {k: v.float() if v.dim() == 0 else v for k, v in out.items()}


@torch.no_grad()
def validate(model: nn.Module, loss_fn: LossFn, dataset: Dataset, settings: TrainSettings) -> dict[str, float]:
    """Mean of every scalar loss_fn reports over the first val_batches batches of dataset (in eval mode)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = min(settings.val_batches, math.ceil(len(dataset) / settings.batch_size))
    for b in range(count):
        items = [dataset[i] for i in range(b * settings.batch_size, min(len(dataset), (b + 1) * settings.batch_size))]
        for key, value in _forward(loss_fn, collate(items), settings).items():
            if value.dim() == 0:
                totals[key] = totals.get(key, 0.0) + float(value) / count
    model.train(was_training)
    return totals


def train(model: nn.Module, loss_fn: LossFn, train_set: Dataset, val_set: Dataset, settings: TrainSettings,
          checkpoint: str | Path, progress: bool = True) -> dict[str, float]:
    """Train model in place for settings.steps steps, resuming from `checkpoint` when it exists.

    loss_fn(batch) returns a dict with "loss" (optimised) and other scalars to show and validate;
    entries that are not scalars (a reconstruction, say) are ignored.
    Returns the last validation figures.
    """
    from tqdm import tqdm

    checkpoint = Path(checkpoint)
    torch.manual_seed(settings.seed)
    model.to(settings.device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=settings.device, weights_only=True)
        if state.get("settings", {}).get("batch_size") != settings.batch_size:
            log.warning("%s was written with another batch size; the data order differs from an uninterrupted run",
                        checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log.info("resumed %s at step %d", checkpoint, step)
    metrics: dict[str, float] = {}
    bar = tqdm(total=settings.steps, initial=step, disable=not progress, dynamic_ncols=True)
    stream = batches(train_set, settings.batch_size, settings.seed, step)
    while step < settings.steps:
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(step)
        out = _forward(loss_fn, next(stream), settings)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        out = {k: v.detach() for k, v in out.items()}
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v.item():.4f}" for k, v in out.items() if v.dim() == 0})
        if step % settings.val_every == 0 or step == settings.steps:
            metrics = validate(model, loss_fn, val_set, settings)
            bar.write(f"step {step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            save_checkpoint(checkpoint, model, optimizer, step, settings)
    bar.close()
    model.eval()
    return metrics


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    settings: TrainSettings) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "settings": asdict(settings)}, tmp)
    os.replace(tmp, path)
