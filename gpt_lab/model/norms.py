"""Normalisation layers: the book's LayerNorm (chapter 4) and RMSNorm (the book's GPT-to-Llama bonus).

``make_norm(cfg, dim)`` builds the one ``model.norm`` names. Neither draws random numbers, so the
choice leaves the other weights of ``torch.manual_seed(123)`` as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config.architecture import ARCH_DEFAULTS


class LayerNorm(nn.Module):
    """Layer norm over the last dimension with the book's ``scale``/``shift`` names (biased variance)."""

    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension, computed in float32 (Llama's).

    ``offset`` (Gemma 3's ``model.norm_offset``): the scale is ``1 + weight``, the weight starting at zero.
    """

    def __init__(self, dim: int, eps: float = 1e-5, offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm: x * rsqrt(mean(x^2) + eps) * scale in one call instead of seven (half the time of a
        # small model's norm), the same numbers as written out (tests/test_arch_lab.py).
        scale = 1.0 + self.weight.float() if self.offset else self.weight.float()
        return F.rms_norm(x.float(), scale.shape, scale, self.eps).to(x.dtype)


def make_norm(cfg: Mapping[str, Any], dim: int) -> nn.Module:
    """``model.norm``'s layer over ``dim`` features, with ``model.norm_eps``."""
    eps = float(cfg.get("norm_eps", ARCH_DEFAULTS["norm_eps"]))
    if cfg.get("norm", "layernorm") == "rmsnorm":
        return RMSNorm(dim, eps, bool(cfg.get("norm_offset", False)))
    return LayerNorm(dim, eps)
