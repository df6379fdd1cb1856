"""bf16 mixed precision on the CPU, tuned for training: ``trainer=cpu_bf16``.

``CPUBf16Mixed`` is Lightning's ``bf16-mixed`` (``torch.autocast``: matrix products in bfloat16,
weights, optimizer and loss in float32) plus one change: while a training step runs, dropout masks
are drawn four at a time. PyTorch's CPU dropout (``bernoulli_``) draws one random number per
element, serially: 0.2 s of a 1.5 s bf16 step of GPT-2 small at context 256 (chapter 5's shapes).
``FastDropout`` draws one 64-bit number per four elements and compares each 16-bit quarter with a
threshold, about 4x faster. The drop probability is rounded to a multiple of 1/65536 (0.1 becomes
0.100006) and the kept values are scaled by the exact 1 / (1 - rounded p), so the expectation is
unchanged.

Attention dropout sits inside ``F.scaled_dot_product_attention``, and with ``dropout_p > 0`` the
CPU has no fused kernel for it: PyTorch falls back to its math path, which casts query, key and
value to float32 and draws ``bernoulli_`` masks. ``FastDropout`` writes that attention out
instead (``gpt_lab.model.gpt.attention_written_out``, what the model itself runs for training
sequences of up to 256 tokens in bf16): scores, softmax and products in bf16 (the softmax kernel
computes in float32 and rounds once), the fast mask. Against float32 the attention output differs
by about bf16's rounding of the scores (the chapter-5 run's losses stay within 0.03 of float32's:
docs/training.md, "The same run in bf16").

The float32 default (``trainer=cpu``) is untouched: its dropout draws exactly the book's masks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.overrides import TorchFunctionMode

from gpt_lab.model.gpt import attention_written_out

LANES = 4  # 16-bit draws per 64-bit random number
RESOLUTION = 2**16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` whose elements are False with probability ``p`` (to 1/65536), and
    the exact keep probability: one 64-bit random number gives four independent 16-bit draws."""
    n = math.prod(shape)
    threshold = min(round(p * RESOLUTION), RESOLUTION - 1)  # draws below it (of 0..65535) are dropped
    words = torch.randint(-(2**63), 2**63 - 1, (-(-n // LANES),), dtype=torch.int64, device=device)
    draws = words.view(torch.int16)[:n].view(shape)  # uniform over -32768..32767
    return draws >= threshold - RESOLUTION // 2, 1.0 - threshold / RESOLUTION


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` with drop probability ``p`` (0 < p < 1), from ``keep_mask``."""
    keep, kept = keep_mask(x.shape, p, x.device)
    return x * keep * (1.0 / kept)


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


class FastDropout(TorchFunctionMode):
    """While active, CPU calls of ``F.dropout`` (training) and of ``F.scaled_dot_product_attention``
    with ``dropout_p > 0`` and no ``attn_mask`` draw their masks with ``keep_mask``; every other
    call runs unchanged."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p = args[0], _arg(args, kwargs, 1, "p", 0.5)
            training, inplace = _arg(args, kwargs, 2, "training", True), _arg(args, kwargs, 3, "inplace", False)
            if training and not inplace and 0.0 < p < 1.0 and x.device.type == "cpu":
                return dropout(x, p)
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            p = _arg(args, kwargs, 4, "dropout_p", 0.0)
            plain = _arg(args, kwargs, 3, "attn_mask", None) is None and not _arg(args, kwargs, 7, "enable_gqa", False)
            if p > 0.0 and plain and q.device.type == "cpu":
                causal = _arg(args, kwargs, 5, "is_causal", False)
                scale = _arg(args, kwargs, 6, "scale", None)
                return attention_written_out(q, k, v, causal, p, dropout=dropout, scale=scale)
        return func(*args, **kwargs)


class CPUBf16Mixed(MixedPrecision):
    """Lightning's ``bf16-mixed`` on the CPU, with ``FastDropout`` around every step (see the module)."""

    def __init__(self) -> None:
        super().__init__("bf16-mixed", "cpu")

    @contextlib.contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        with super().forward_context(), FastDropout():
            yield
