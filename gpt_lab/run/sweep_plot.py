"""The sweep summary's plot: training jobs side by side (``summary.png`` beside summary.md).

One horizontal bar per completed job in each panel: validation loss, key/value cache bytes per token,
training tokens/s and generation tokens/s (issue 25: what ``experiment=ablation`` compares). A job is
labelled by the overrides that differ between the jobs. Drawn only when at least two completed jobs
report a validation loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt_lab.storage import atomic_write

PANELS = (
    ("val_loss", "validation loss"),
    ("kv_bytes_per_token", "KV cache bytes / token"),
    ("train_tokens_per_second", "training tokens/s"),
    ("generation_tokens_per_second", "generation tokens/s"),
)


def shared_overrides(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The overrides every one of two or more rows has, in the first row's order (none for a single row)."""
    words = [str(row.get("overrides") or "").split() for row in rows]
    if len(words) < 2:
        return []
    shared = set.intersection(*(set(w) for w in words))
    return [w for w in words[0] if w in shared]


def job_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each row's overrides without those all rows share: ``+ablation=mla experiment=ablation`` -> ``+ablation=mla``."""
    shared = set(shared_overrides(rows))
    kept = [" ".join(w for w in str(row.get("overrides") or "").split() if w not in shared) for row in rows]
    return [label or f"job {row.get('job')}" for label, row in zip(kept, rows, strict=True)]


def plot_summary(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``summary.png`` in ``sweep_dir`` for the completed training jobs of ``rows``; None when under two."""
    done = [r for r in rows if r.get("status") == "completed" and r.get("val_loss") is not None]
    if len(done) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in PANELS if any(r.get(key) is not None for r in done)]
    labels = job_labels(done)
    size = (3.2 * len(panels), 0.45 * len(done) + 1.4)
    fig, axes = plt.subplots(1, len(panels), figsize=size, sharey=True, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        values = [float(r.get(key) or 0.0) for r in done]
        ax.barh(range(len(done)), values, color="tab:blue" if key == "val_loss" else "tab:gray")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        if key == "val_loss":
            ax.set_xlim(min(values) * 0.97, max(values) * 1.01)  # the differences, not the common part
    axes[0][0].set_yticks(range(len(done)), labels)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    path = Path(sweep_dir) / "summary.png"
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
