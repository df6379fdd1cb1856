"""The book's loss, per batch and over a whole loader: plain PyTorch, no Lightning."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's loss: cross-entropy of logits (b, t, vocab) against targets (b, t), mean over tokens."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str | None = None,
) -> float:
    """Mean loss per target token of ``model`` over ``batches`` of (inputs, targets), in eval mode.

    With batches of equal size this is the book's ``calc_loss_loader`` (the mean of batch means);
    a smaller last batch is weighted by its tokens. The model's mode is restored afterwards.
    """
    device = device if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            total += batch_loss(model(inputs), targets).double().cpu() * targets.numel()
            count += targets.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("mean_loss: no batches to evaluate")
    return float(total / count)
