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


@dataclass
class WarmupCosineFactor:
    """``LambdaLR``'s lr_lambda: the schedule as a factor of the peak.

    A plain object (not a closure), so ``LambdaLR.state_dict`` keeps its numbers and a resumed run
    goes on with the checkpoint's schedule. The run's length is set by ``resolve`` once training
    starts: asking Lightning for it earlier (in ``configure_optimizers``) makes it build the
    training loader before a checkpoint is read, and Lightning then skips restoring the loader's
    place in the epoch (a mid-epoch resume would no longer be exact).
    """

    peak: float
    initial_lr: float
    min_lr: float
    warmup_steps: int | None  # as configured; None: from warmup_ratio
    warmup_ratio: float | None
    total: int | None = None  # the run's optimizer steps, once resolved
    warmup: int | None = None

    def __call__(self, step: int) -> float:
        if self.total is None or self.warmup is None:  # LambdaLR's first call, before resolve(): step 0
            warms_up = self.warmup_steps if self.warmup_steps is not None else bool(self.warmup_ratio)
            return (self.initial_lr if warms_up else self.peak) / self.peak
        return warmup_cosine_lr(step, self.peak, self.total, self.warmup, self.initial_lr, self.min_lr) / self.peak

    def resolve(self, total: float) -> None:
        """Fix the run's length (Lightning's ``estimated_stepping_batches``) and so the warmup: the
        configured steps, else ``int(warmup_ratio * total)`` (the book's ``int(0.2 * total_steps)``).
        Raises ``UserError`` when the run has no length or the warmup does not fit in it."""
        if not math.isfinite(total):
            raise UserError(
                "scheduler=warmup_cosine needs the run's length in optimizer steps, but the trainer has no limit: "
                "set trainer.max_epochs or trainer.max_steps"
            )
        total = int(total)
        if self.warmup_steps is not None:
            warmup, given = self.warmup_steps, f"scheduler.warmup_steps={self.warmup_steps}"
        else:
            warmup = int((self.warmup_ratio or 0.0) * total)
            given = f"scheduler.warmup_ratio={self.warmup_ratio} ({warmup} steps)"
        if warmup >= total:
            raise UserError(
                f"{given} leaves no steps for the cosine decay: this run has {total} optimizer steps "
                "(trainer.max_epochs/max_steps, batches per epoch, trainer.accumulate_grad_batches); "
                "give a warmup shorter than the run"
            )
        self.total, self.warmup = total, warmup


def build_scheduler(
    optimizer: torch.optim.Optimizer, scheduler_cfg: dict[str, Any], peak: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``warmup_cosine`` scheduler (``scheduler_cfg`` is ``cfg.scheduler``); its factor is
    resolved against the run's length when training starts (``GPTLitModule.on_train_start``)."""
    name = scheduler_cfg.get("name")
    if name != "warmup_cosine":
        raise UserError(f"scheduler.name={name} is not a schedule; choose one of {', '.join(SCHEDULER_NAMES)}")
    factor = WarmupCosineFactor(
        peak=peak,
        initial_lr=float(scheduler_cfg.get("initial_lr") or 0.0),
        min_lr=float(scheduler_cfg.get("min_lr") or 0.0),
        warmup_steps=scheduler_cfg.get("warmup_steps"),
        warmup_ratio=scheduler_cfg.get("warmup_ratio"),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, total: float) -> int:
    """Fix a fresh run's schedule to its length and set the optimizer's rate for the current step;
    a resumed run's factor came back resolved from its checkpoint and stays. Returns the warmup."""
    factor = scheduler.lr_lambdas[0]
    assert isinstance(factor, WarmupCosineFactor)
    if factor.total is None:
        factor.resolve(total)
        for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
    assert factor.warmup is not None
    return factor.warmup
