"""Int8 weight-only linear layers: a model part for generation that reads a quarter of fp32's bytes.

``Int8Linear`` holds an ``nn.Linear``'s weight as int8 with one scale per output feature
(symmetric, ``scale = max |w_row| / 127``, ``w ≈ int8 * scale``) and multiplies with PyTorch's own
int8 weight-only kernel, ``torch.ops.aten._weight_int8pack_mm`` (x in bf16, weights read as int8,
accumulated in float32, the result rounded to bf16). Measured on the CPU the project is developed
on, the kernel runs the products of a GPT-2 small step about 2.7x faster than fp32 ``F.linear``,
while torchao 0.18's ``Int8WeightOnlyConfig`` (which converts the int8 weight to the activation
dtype before a bf16 product) ran 4.5x slower than the kernel (docs/performance.md).

The kernel is a private ATen op with sharp edges, so this module guards it: on the CPU its bf16
path reads ``in_features`` in blocks of 16 (other widths gave wrong numbers or crashed in a test
on torch 2.13), and it has no CUDA or MPS kernel. Where it does not apply, the layer computes the
same product from the weight converted to x's dtype (``dequantized_linear``): right, but slower.

``quantize_linears_`` replaces a model's plain ``nn.Linear`` layers in place, one at a time (the
fp32 weight of each is freed as its int8 copy is made: no second copy of the model at peak). Pure
PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT8_MAX = 127
KERNEL_BLOCK = 16  # the CPU kernel's bf16 path needs in_features % 16 == 0


def has_int8_kernel(device: torch.device | str) -> bool:
    """True where PyTorch registers ``_weight_int8pack_mm`` for the device's type (``cpu`` here)."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", key)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (n_out, n_in) → (int8 values (n_out, n_in), float32 scales (n_out,)), per output row.

    ``scale = max |row| / 127`` (1 for an all-zero row), values ``round(w / scale)`` in [-127, 127].
    """
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / INT8_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scales


def dequantized_linear(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T + bias`` in x's dtype: the layer's product without the kernel."""
    y = F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)
    return y if bias is None else y + bias


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 ``weight`` (n_out, n_in) and float ``scales`` (n_out,).

    ``weight`` is a frozen ``nn.Parameter`` of dtype int8 (parameter counts stay the model's),
    ``scales`` a buffer, ``bias`` as the Linear's. The activation dtype is the scales' (bf16 for
    ``generation.weights=int8``): ``x`` is cast to it.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        """Quantize ``linear``'s weight per output row; scales and bias in ``dtype``."""
        q, scales = quantize_rows(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(q, scales.to(dtype), bias)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.bfloat16
            and self.scales.dtype == torch.bfloat16
            and self.in_features % KERNEL_BLOCK == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.scales.dtype)
        if not self.uses_kernel(x):
            return dequantized_linear(x, self.weight, self.scales, self.bias)
        rows = x.reshape(-1, self.in_features).contiguous()  # the kernel takes (rows, n_in)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def quantize_linears_(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (not subclasses such as LoRA's) by an
    ``Int8Linear``, in place, one layer at a time; returns how many. A tied output head gets its own
    int8 copy; the token embedding keeps the float weight."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.from_linear(child, dtype))
        del child
    return len(targets)
