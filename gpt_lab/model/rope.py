"""Rotary position embedding (RoPE, the book's GPT-to-Llama bonus), with Llama 3's frequency scaling.

Feature pairs ``(i, i + head_dim / 2)`` of each head rotate by ``position * inv_freq[i]``
(``inv_freq[i] = base ** (-2 i / head_dim)``), the "rotate half" layout of Llama's and Hugging Face's
weights. Llama 3's scaling divides the low frequencies (wavelengths above
``original_context_length / low_freq_factor``) by ``factor``, keeps the high ones (wavelengths below
``original_context_length / high_freq_factor``) and blends linearly in between.

The cos/sin tables are non-persistent buffers: they are computed, never saved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def rope_inv_freq(head_dim: int, base: float, scaling: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The rotation frequencies, (head_dim / 2,), float32; Llama 3's scaling applied when given."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_context_length"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    middle = (wavelen <= original / low) & (wavelen >= original / high)
    return torch.where(middle, blended, scaled)


class RotaryEmbedding(nn.Module):
    """cos / sin tables for positions ``0 .. context_length - 1``: (context_length, head_dim) each."""

    def __init__(
        self, head_dim: int, context_length: int, base: float, scaling: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.head_dim, self.context_length, self.base = head_dim, context_length, base
        self.scaling = dict(scaling) if scaling is not None else None
        cos, sin = self._tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = rope_inv_freq(self.head_dim, self.base, self.scaling)
        angles = torch.arange(self.context_length, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)  # (context_length, head_dim)
        return angles.cos(), angles.sin()

    def reset(self, device: torch.device | str = "cpu") -> None:
        """Recompute the tables on ``device`` (after the module was built on the meta device)."""
        cos, sin = self._tables()
        self.cos, self.sin = cos.to(device), sin.to(device)

    def forward(self, start: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions ``start .. start + t - 1``: (t, head_dim) each."""
        return self.cos[start : start + t], self.sin[start : start + t]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` (b, heads, t, head_dim) rotated by the (t, head_dim) tables; computed in float32."""
    half = x.shape[-1] // 2
    x32 = x.float()
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos.float() + rotated * sin.float()).to(x.dtype)
