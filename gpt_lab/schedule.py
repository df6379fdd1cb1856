"""Appendix D's learning-rate schedule: linear warmup, then cosine decay, per optimizer step.

For optimizer step ``s`` of ``total`` (peak = ``optim.lr``):

- ``s < warmup``: ``initial_lr + s * (peak - initial_lr) / warmup``
- otherwise: ``min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``

PyTorch's ``LambdaLR`` applies it (as a factor of the peak) and Lightning steps it after every
optimizer step (``interval: step``), so gradient accumulation counts one step per update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gpt_lab.config import SCHEDULER_NAMES
from gpt_lab.errors import UserError


def warmup_cosine_lr(step: int, peak: float, total: int, warmup: int, initial_lr: float, min_lr: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based); after ``total`` steps it stays at ``min_lr``."""
    if step < warmup:
        return initial_lr + step * (peak - initial_lr) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps(scheduler_cfg: dict[str, Any], total: int) -> int:
    """Steps of linear warmup: ``scheduler.warmup_steps`` if given, else ``int(warmup_ratio * total)``
    (the book's ``int(0.2 * total_steps)``), else none."""
    if scheduler_cfg.get("name", "constant") == "constant":
        return 0
    if scheduler_cfg.get("warmup_steps") is not None:
        return int(scheduler_cfg["warmup_steps"])
    return int((scheduler_cfg.get("warmup_ratio") or 0.0) * total)


@dataclass
class WarmupCosineFactor:
    """``LambdaLR``'s lr_lambda: the schedule as a factor of the peak. A plain object (not a closure),
    so ``LambdaLR.state_dict`` keeps its numbers and a resumed run goes on with the same schedule."""

    peak: float
    total: int
    warmup: int
    initial_lr: float
    min_lr: float

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(step, self.peak, self.total, self.warmup, self.initial_lr, self.min_lr) / self.peak


def build_scheduler(
    optimizer: torch.optim.Optimizer, scheduler_cfg: dict[str, Any], peak: float, total: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's ``warmup_cosine`` scheduler over ``total`` optimizer steps (Lightning's
    ``estimated_stepping_batches``). Raises ``UserError`` for a warmup that does not fit the run."""
    name = scheduler_cfg.get("name")
    if name != "warmup_cosine":
        raise UserError(f"scheduler.name={name} is not a schedule; choose one of {', '.join(SCHEDULER_NAMES)}")
    if not math.isfinite(total):
        raise UserError(
            f"scheduler={name} needs the run's length in optimizer steps, but the trainer has no limit: "
            "set trainer.max_epochs or trainer.max_steps"
        )
    total = int(total)
    warmup = warmup_steps(scheduler_cfg, total)
    if warmup >= total:
        given = (
            f"scheduler.warmup_steps={scheduler_cfg['warmup_steps']}"
            if scheduler_cfg.get("warmup_steps") is not None
            else f"scheduler.warmup_ratio={scheduler_cfg.get('warmup_ratio')} ({warmup} steps)"
        )
        raise UserError(
            f"{given} leaves no steps for the cosine decay: this run has {total} optimizer steps "
            "(trainer.max_epochs/max_steps, batches per epoch, trainer.accumulate_grad_batches); "
            "give a warmup shorter than the run"
        )
    factor = WarmupCosineFactor(
        peak=peak,
        total=total,
        warmup=warmup,
        initial_lr=float(scheduler_cfg.get("initial_lr") or 0.0),
        min_lr=float(scheduler_cfg.get("min_lr") or 0.0),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
