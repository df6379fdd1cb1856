"""Moving weights between gpt_lab and the book's own code.

The book's ``MultiHeadAttention`` stores a causal ``mask`` buffer; ours does not need one.
Loading a book state dict drops the masks (a pre-hook in ``MultiHeadAttention``); exporting adds
them back so the book's class loads our weights with ``strict=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt_lab.model.gpt import GPTModel
from gpt_lab.storage import atomic_write


def export_book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the book's layout, ``mask`` buffers included."""
    state = model.state_dict()
    n = model.context_length
    mask = torch.triu(torch.ones(n, n), diagonal=1)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[key] = value
        if key.endswith(".att.W_query.weight"):
            out[key.removesuffix("W_query.weight") + "mask"] = mask
    # The book's module order puts the buffer after the attention's parameters; order is cosmetic.
    return out


def save_book_checkpoint(model: GPTModel, path: str | Path) -> Path:
    """Write ``model.pth`` as the book's ``torch.save(model.state_dict(), path)`` would (atomically)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(export_book_state_dict(model), f)
    return path
