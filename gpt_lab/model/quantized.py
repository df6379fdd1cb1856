"""Int8 weight-only linear layers: a model part for generation that reads a quarter of fp32's bytes.

``Int8Linear`` holds an ``nn.Linear``'s weight as int8 with one scale per output feature
(symmetric, ``scale = max |w_row| / 127``, ``w ≈ int8 * scale``) and multiplies with the first of
these kernels that the machine has:

- **gpt_lab's own** (gpt_lab/model/native.py, compiled on first use): the int8 weights converted
  to float32 in registers, float32 products and sums, each row in one fixed order; it reads the
  weights at 21-37 GB/s where PyTorch's kernels below manage 8-19 (docs/performance.md). Rows
  are independent, bit for bit.
- **FBGEMM** (without a C compiler; x86, PyTorch's quantized engine ``fbgemm``):
  ``quantized::linear_dynamic`` multiplies 8-bit activations by int8 weights prepacked once
  (``quantized::linear_prepack``) and sums the products exactly in int32. Used as PyTorch's dynamic
  quantization uses it, it would round each call's input to 8 bits on one grid for the whole call.
  Here each input row is written instead as two small integer digits, ``x = step * (hi + lo / 64)``
  with ``step`` a power of two near ``max |x_row| / 16`` and ``|hi|, |lo| <= 32``
  (``activation_digits``: each element to 1/2048 of its row's largest, finer than bf16's 8 bits
  where it matters, on the large elements), and one more row holding -64 and 63 pins the kernel's
  input grid to the integers (scale 1, zero point 64), so the kernel returns the int8 weights' exact
  integer products with the digits; the layer adds the two digits' results
  (``acc_hi + acc_lo / 64``, times ``step``) and the bias. The only rounding besides the weights'
  is that of the activations to those digits: weight-only precision. Each row's result depends on
  that row alone, so a cached step (one row) and a forward over the whole sequence give the same
  numbers.
  ``reduce_range`` (7-bit activations) keeps every pair of products inside int16, where CPUs
  without VNNI would otherwise saturate.
- **``torch.ops.aten._weight_int8pack_mm``** elsewhere (no FBGEMM, e.g. ARM): x rounded to bf16,
  weights read as int8, float32 accumulation, the result in bf16.

Measured on the CPU the project is developed on (docs/performance.md): the products of a GPT-2
small step in fp32 ``F.linear`` 40.8 ms, ``_weight_int8pack_mm`` 15.4 ms, FBGEMM ~1.9x faster than
that in a whole generation step and the native kernel ~1.4x faster than FBGEMM; torchao 0.18's
``Int8WeightOnlyConfig`` (which converts the int8 weight to the activation dtype before a bf16
product) ran 4.5x slower than ``_weight_int8pack_mm``.

The kernels are private ops with sharp edges, so this module guards them: ``_weight_int8pack_mm``'s
bf16 path reads ``in_features`` in blocks of 16 (other widths gave wrong numbers or crashed in a
test on torch 2.13), and neither has a CUDA or MPS kernel. Where neither applies, the layer computes
the same product from the weight converted to x's dtype (``dequantized_linear``): right, slower.

``quantize_linears_`` replaces a model's plain ``nn.Linear`` layers in place, one at a time (the
fp32 weight of each is freed as its int8 copy is made: no second copy of the model at peak).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.model import native
from gpt_lab.model.packed import HeldWeight, plain_linears

INT8_MAX = 127
KERNEL_BLOCK = 16  # _weight_int8pack_mm's bf16 path needs in_features % 16 == 0
GRID_END = 63  # the kernel's activations with reduce_range: 7-bit integers, -64..63 here
LOW = 64.0  # the low digit counts 1/64 of the high one's unit (|x / step - hi| <= 1/2: |lo| <= 32)


try:  # the overload itself: no lookup per call
    _linear_dynamic = torch.ops.quantized.linear_dynamic.default
except (AttributeError, RuntimeError):  # a build without quantized ops
    _linear_dynamic = None


def has_int8_kernel(device: torch.device | str) -> bool:
    """True where PyTorch registers ``_weight_int8pack_mm`` for the device's type (``cpu`` here)."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("aten::_weight_int8pack_mm", key)


def has_fbgemm() -> bool:
    """True where PyTorch's FBGEMM engine runs ``quantized::linear_dynamic`` (x86 builds) and the packing
    it needs exists (PyTorch marks its quantized tensors deprecated: a release without them falls back)."""
    return (
        _linear_dynamic is not None
        and "fbgemm" in torch.backends.quantized.supported_engines
        and hasattr(torch, "_make_per_channel_quantized_tensor")
    )


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
    """``x @ (weight * scales[:, None]).T + bias`` in x's dtype: the layer's product without a kernel."""
    y = F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)
    return y if bias is None else y + bias.to(x.dtype)


def _fbgemm_pack(weight: torch.Tensor, scales: torch.Tensor) -> torch.ScriptObject:
    """FBGEMM's prepacked form of int8 ``weight`` (n_out, n_in) with per-row float ``scales``."""
    n_out = weight.shape[0]
    with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; the packed weight is not one
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_channel_quantized_tensor(
            weight.contiguous(), scales.double(), torch.zeros(n_out, dtype=torch.int64), 0
        )
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"  # the packed form decides the kernel linear_dynamic runs
    try:
        return torch.ops.quantized.linear_prepack(q, None)
    finally:
        torch.backends.quantized.engine = engine


def activation_digits(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (..., n_in) as FBGEMM's input: (rows (1 + 2 * m, n_in) float32, step (m, 1)).

    Each of x's m rows is ``step * (hi + lo / 64)``: ``step`` a power of two with
    ``16 <= max |x_row| / step < 32`` (the exponent bits of the row's largest magnitude, less 4),
    ``hi = round(x_row / step)`` in [-32, 32] and ``lo = (x_row / step - hi) * 64`` in [-32, 32],
    which the kernel rounds to an integer: each element to 1/2048 of the row's largest magnitude
    or finer (11-12 bits). Every value written stays inside the grid's ends, which would otherwise
    move; powers of two make every scaling exact. Row 0 holds -64 and 63 (the ends of the kernel's
    7-bit grid: it then reads every row as the integers written, scale 1 and zero point 64); rows
    1..m hold the high digits, m+1..2m the low ones."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.dtype != torch.float32:
        rows = rows.float()
    largest = rows.abs().amax(dim=1, keepdim=True)
    # Rows below 2**-122 (an all-zero one) get the smallest normal step, 2**-126.
    bits = largest.view(torch.int32).bitwise_and_(_EXPONENT).clamp_min_(_SMALLEST_STEP + _FOUR_OCTAVES)
    step = bits.sub_(_FOUR_OCTAVES).view(torch.float32)
    t = rows / step  # exact: a power of two
    hi = t.round()
    lo = t.sub_(hi).mul_(LOW)
    ends = _GRID_ENDS.get(rows.shape[1])
    if ends is None:
        ends = _grid_ends(rows.shape[1])
    return torch.cat((ends, hi, lo)), step


def _grid_ends(n_in: int) -> torch.Tensor:
    """The row (1, n_in) of -64, 63 and zeros that fixes the kernel's input grid (cached per width)."""
    with torch.inference_mode(False), torch.no_grad():
        ends = torch.zeros(1, n_in)
        ends[0, :2] = torch.tensor((-GRID_END - 1.0, float(GRID_END)))
    _GRID_ENDS[n_in] = ends
    return ends


_GRID_ENDS: dict[int, torch.Tensor] = {}
with torch.inference_mode(False):  # 0-dim tensors: a Python int would be wrapped into one every call
    # A float32's exponent bits (the power of two at or below it), and 16 = 2**4 in those bits.
    _EXPONENT = torch.tensor(0x7F800000, dtype=torch.int32)
    _FOUR_OCTAVES = torch.tensor(4 << 23, dtype=torch.int32)
_SMALLEST_STEP = 1 << 23  # 2**-126 in a float32's bits


class Int8Linear(HeldWeight):
    """``nn.Linear`` with an int8 weight (n_out, n_in) and float ``scales`` (n_out,), for generation.

    The weight is held where the kernel wants it: on a CPU the native kernel's blocks (``blocked``,
    gpt_lab/model/native.py) where it builds, else FBGEMM's prepacked form (``packed``), else a plain
    int8 tensor (``dense``); ``weight`` gives the plain (n_out, n_in) int8 tensor in every case (a
    copy out of the other forms) and ``weight_nbytes`` its bytes. ``scales`` is a buffer,
    ``bias`` a frozen parameter; the output has x's dtype. Moving the layer to another device
    (``.to``) unpacks, moves, and holds the weight again as that device's kernel wants it.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.blocked: torch.Tensor | None = None
        self.packed: torch.ScriptObject | None = None
        self.dense: torch.Tensor | None = None
        self._hold(weight.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.float32) -> Int8Linear:
        """Quantize ``linear``'s weight per output row; scales and bias in ``dtype``."""
        q, scales = quantize_rows(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(q, scales.to(dtype), bias)

    def _hold(self, weight: torch.Tensor) -> None:
        self.blocked = self.packed = self.dense = None
        if weight.device.type == "cpu" and native.int8_kernel() is not None:
            self.blocked = native.block_int8(weight)
        elif weight.device.type == "cpu" and weight.shape[1] >= 2 and has_fbgemm():  # the grid's ends take 2 inputs
            self.packed = _fbgemm_pack(weight, self.scales.float())
        else:
            self.dense = weight

    @property
    def weight(self) -> torch.Tensor:
        if self.blocked is not None:
            return native.unblock_int8(self.blocked, self.out_features, self.in_features)
        if self.packed is None:
            return self.dense
        return torch.ops.quantized.linear_unpack(self.packed)[0].int_repr()

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the int8 weight (held outside parameters: ``model_stats.step_read_bytes`` adds it)."""
        return self.out_features * self.in_features

    @property
    def held_dtype(self) -> torch.dtype:
        return torch.int8

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Int8Linear:
        probe = torch.empty(0, dtype=torch.int8, device=self.scales.device)
        moved = fn(probe)
        super()._apply(fn, recurse)
        if moved is not probe:  # a move to another device (int8 stays int8 under dtype conversions)
            self._hold(fn(self.weight))
        return self

    def uses_fbgemm(self, x: torch.Tensor) -> bool:
        return self.packed is not None and x.device.type == "cpu"

    def uses_int8pack(self, x: torch.Tensor) -> bool:
        """Whether ``_weight_int8pack_mm`` runs this product (a CPU layer without FBGEMM)."""
        return self.dense is not None and x.device.type == "cpu" and self.in_features % KERNEL_BLOCK == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocked is not None and x.device.type == "cpu":
            return self._native(x)
        if self.packed is not None and x.device.type == "cpu":  # uses_fbgemm, written out: called per layer per token
            return self.from_digits(x, *activation_digits(x))
        if self.uses_int8pack(x):
            rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel takes (rows, n_in)
            y = torch.ops.aten._weight_int8pack_mm(rows, self.dense, self.scales.to(torch.bfloat16))
            y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        return dequantized_linear(x, self.weight.to(x.device), self.scales, self.bias)

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        """The native kernel's product; it takes float32 (``.float()`` is the tensor itself when it is)."""
        bias = None if self.bias is None else self.bias.float()
        y = native.int8_linear(native.int8_kernel(), x.float(), self.blocked, self.scales.float(), bias)
        return y.to(x.dtype)

    def from_digits(self, x: torch.Tensor, digits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The product for ``x`` from its digits (``activation_digits``), in x's dtype and shape."""
        acc = _linear_dynamic(digits, self.packed, True)
        m = step.shape[0]
        # hi + lo / 64 and its product with step: scalings by powers of two, exact, so each element
        # is rounded the same for any number of rows (fused or not).
        y = torch.add(acc[1 : 1 + m], acc[1 + m :], alpha=1 / LOW)
        bias = self.bias
        y = y.mul_(step) if bias is None else torch.addcmul(bias if bias.dtype == y.dtype else bias.float(), y, step)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    @staticmethod
    def forward_group(layers: Sequence[Int8Linear], x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer applied to the same ``x`` (attention's query, key and value): its digits once."""
        if not all(layer.uses_fbgemm(x) for layer in layers):
            return [layer(x) for layer in layers]
        digits, step = activation_digits(x)
        return [layer.from_digits(x, digits, step) for layer in layers]

    def extra_repr(self) -> str:
        kernel = "native" if self.blocked is not None else "FBGEMM" if self.packed is not None else "int8pack"
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, int8 ({kernel})"


def quantize_linears_(model: nn.Module, dtype: torch.dtype = torch.float32, skip: Iterable[nn.Module] = ()) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (not subclasses such as LoRA's, nor ``skip``) by
    an ``Int8Linear``, in place, one layer at a time; returns how many. A tied output head gets its
    own int8 copy; the token embedding keeps the float weight."""
    targets = plain_linears(model, skip)
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.from_linear(child, dtype))
        del child
    return len(targets)
