"""The book's loss plot: training and validation loss against epochs seen, tokens seen on a second axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpt_lab.storage import atomic_write


def plot_losses(evaluations: Sequence[Mapping[str, Any]], steps_per_epoch: int, path: str | Path) -> Path | None:
    """Write the loss curves of ``evaluations`` (``LossHistory.evaluations``) as a PNG; None when there are none.

    x: epochs seen (the step over ``steps_per_epoch``); a second x-axis above: tokens seen.
    """
    points = [e for e in evaluations if e.get("val_loss") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [e["step"] / max(steps_per_epoch, 1) for e in points]
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs, [e["train_loss"] for e in points], label="Training loss")
    ax1.plot(epochs, [e["val_loss"] for e in points], linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    tokens = [e.get("tokens_seen") for e in points]
    if all(t is not None for t in tokens):
        ax2 = ax1.twiny()  # the same curve against tokens seen, drawn invisibly to set the axis
        ax2.plot(tokens, [e["train_loss"] for e in points], alpha=0)
        ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
