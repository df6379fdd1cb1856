"""What a classification run reports beyond accuracy: per-class precision / recall / F1 and the
confusion matrix (torchmetrics), and the chapter's figures as PNG (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

FIGURES = {"loss": "loss-plot.png", "accuracy": "accuracy-plot.png", "confusion": "confusion-matrix.png"}


def class_metrics(preds: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"precision": {class: p}, "recall": {...}, "f1": {...}, "confusion_matrix": [[...]]}``.

    The confusion matrix's rows are the true classes, its columns the predicted ones."""
    from torchmetrics.classification import (
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    k = len(class_names)
    out: dict[str, Any] = {}
    for name, metric in (
        ("precision", MulticlassPrecision(k, average=None, zero_division=0)),
        ("recall", MulticlassRecall(k, average=None, zero_division=0)),
        ("f1", MulticlassF1Score(k, average=None, zero_division=0)),
    ):
        values = metric(preds, targets) if len(targets) else torch.zeros(k)
        out[name] = {c: float(v) for c, v in zip(class_names, values, strict=True)}
    matrix = MulticlassConfusionMatrix(k)(preds, targets) if len(targets) else torch.zeros(k, k, dtype=torch.long)
    out["confusion_matrix"] = matrix.tolist()
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never a window
    import matplotlib.pyplot as plt

    return plt


def plot_values(
    epochs_seen: Sequence[float],
    examples_seen: Sequence[int],
    train_values: Sequence[float],
    val_values: Sequence[float],
    label: str,
    path: Path,
) -> Path:
    """The book's ``plot_values``: training and validation ``label`` against epochs, examples seen on a second axis."""
    plt = _pyplot()
    fig, ax1 = plt.subplots(figsize=(5, 3))
    marker = "o" if len(epochs_seen) < 20 else None  # a few points: each one visible
    ax1.plot(epochs_seen, train_values, marker=marker, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", marker=marker, label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()
    ax2.plot(examples_seen, train_values, alpha=0)  # invisible: aligns the second axis' ticks
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    _save(fig, path)
    return path


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> Any:
    """A matplotlib figure of the confusion matrix (rows: true class, columns: predicted)."""
    plt = _pyplot()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    peak = max((max(row) for row in matrix), default=0)
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i][j] > peak / 2 else "black"
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color=color)
    fig.tight_layout()
    return fig


def save_figures(
    out_dir: Path,
    eval_history: Sequence[Mapping[str, Any]],
    epoch_history: Sequence[Mapping[str, Any]],
    test_metrics: Mapping[str, Any],
    class_names: Sequence[str],
) -> dict[str, Path]:
    """Write the loss and accuracy figures (when there is a curve) and the test confusion matrix."""
    out: dict[str, Path] = {}
    if eval_history:
        out["loss"] = plot_values(
            [r["epoch"] for r in eval_history],
            [r["examples_seen"] for r in eval_history],
            [r["train_loss"] for r in eval_history],
            [r["val_loss"] for r in eval_history],
            "loss",
            out_dir / FIGURES["loss"],
        )
    if epoch_history:
        out["accuracy"] = plot_values(
            [r["epoch"] for r in epoch_history],
            [r["examples_seen"] for r in epoch_history],
            [r["train_accuracy"] for r in epoch_history],
            [r["val_accuracy"] for r in epoch_history],
            "accuracy",
            out_dir / FIGURES["accuracy"],
        )
    path = out_dir / FIGURES["confusion"]
    _save(confusion_figure(test_metrics["confusion_matrix"], class_names), path)
    out["confusion"] = path
    return out


def _save(fig: Any, path: Path) -> None:
    """A figure as PNG, complete under its name or absent (written beside, renamed), then closed."""
    from gpt_lab.storage import atomic_write

    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    _pyplot().close(fig)
