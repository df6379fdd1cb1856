"""What chapter 4 reports about a model: parameter counts and memory size."""

from __future__ import annotations

import torch
from torch import nn

MIB = 1024 * 1024


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_params_tied(model: nn.Module) -> int:
    """Parameters with the output head shared with the token embedding, as the book computes it.

    For an untied model this is the total minus ``out_head``; a tied model already counts it once.
    """
    total = count_params(model)
    if model.out_head.weight is model.tok_emb.weight:
        return total
    return total - sum(p.numel() for p in model.out_head.parameters())


def size_mb(n_params: int, dtype: torch.dtype = torch.float32) -> float:
    """Memory of ``n_params`` parameters of ``dtype`` in MiB (the book's "MB")."""
    return n_params * torch.empty((), dtype=dtype).element_size() / MIB


def step_read_bytes(model: nn.Module) -> int:
    """Bytes of weights one generation step reads: every parameter and buffer once, in the dtype it
    is held in, but a single row of each embedding table (a token looks up one). Shared tensors
    count once. The memory-bandwidth bound of generation is bandwidth / (this + the cache read)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t[0].nbytes if isinstance(module, nn.Embedding) else t.nbytes
        total += getattr(module, "weight_nbytes", 0)  # a weight held outside parameters (model/packed.py)
    return total


def model_report(model: nn.Module) -> dict[str, float | int]:
    """The chapter's figures for ``model``: counts, and float32 / bf16 sizes of the total."""
    total = count_params(model)
    return {
        "total_params": total,
        "total_params_tied": count_params_tied(model),
        "size_mb": size_mb(total),
        "size_mb_bf16": size_mb(total, torch.bfloat16),
    }
