"""The book's loss, per batch and over a whole loader: plain PyTorch, no Lightning."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.tokenizer import IGNORE_INDEX


def batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's loss: cross-entropy of logits (b, t, vocab) against targets (b, t), mean over the
    targets that count (every one but ``IGNORE_INDEX``)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str | None = None,
    per_batch: bool = False,
) -> float:
    """Mean loss per target token of ``model`` over ``batches`` of (inputs, targets), in eval mode.

    Each batch weighs as many as its targets that count (``IGNORE_INDEX`` targets do not). With
    batches of equal size this is the book's ``calc_loss_loader`` (the mean of batch means); a
    smaller last batch is weighted by its tokens. ``per_batch=True`` is ``calc_loss_loader``
    exactly, whatever the batches hold: the mean of the batch means (chapter 7, where padding makes
    batches count different numbers of targets). The model's mode is restored afterwards.
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            weight = 1 if per_batch else int((targets != IGNORE_INDEX).sum())
            total += batch_loss(model(inputs), targets).double().cpu() * weight
            count += weight
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("mean_loss: no batches to evaluate")
    return float(total / count)
