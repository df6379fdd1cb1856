"""Moving weights between gpt_lab and the book's own code.

The book's ``MultiHeadAttention`` stores a causal ``mask`` buffer; ours does not need one.
Loading a book state dict drops the masks (a pre-hook in ``MultiHeadAttention``); exporting adds
them back so the book's class loads our weights with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from gpt_lab.model.gpt import GPTModel
from gpt_lab.storage import atomic_write


def book_masks(state: Mapping[str, torch.Tensor], context_length: int) -> dict[str, torch.Tensor]:
    """The book's ``trf_blocks.<i>.att.mask`` buffers (one shared tensor) for the blocks of ``state``."""
    mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)
    return {k.removesuffix("W_query.weight") + "mask": mask for k in state if k.endswith(".att.W_query.weight")}


def export_book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict in the book's layout, ``mask`` buffers included."""
    state = model.state_dict()
    # The book's module order puts the buffer after the attention's parameters; order is cosmetic.
    return {**state, **book_masks(state, model.context_length)}


def save_book_checkpoint(model: GPTModel, path: str | Path) -> Path:
    """Write ``model.pth`` as the book's ``torch.save(model.state_dict(), path)`` would (atomically)."""
    path = Path(path)
    with atomic_write(path) as f:
        torch.save(export_book_state_dict(model), f)
    return path
