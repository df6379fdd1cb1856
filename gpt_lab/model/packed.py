"""Linear layers laid out for one-row products: what a generation step runs.

A generation step multiplies one row per sequence by every weight. How fast a CPU library runs
that depends on the kernel, on the weights' layout in memory, and on where the weights come from:

- bf16, weights streamed from memory (a model larger than the CPU's caches, every GPT-2 size):
  ``RowLinear`` runs products of up to ``NATIVE_ROWS`` rows (generation steps, short prompts)
  through gpt_lab's native bf16 kernel (gpt_lab/model/native.py, ``csrc/f32_linear.c``: the plain
  (out, in) weight read once for all the rows, float32 sums), about 2x oneDNN's ``F.linear`` at one
  row and 1.7x at four. Without the native kernels, one-row products go through PyTorch's own CPU
  matrix-vector kernel (float32 accumulation, 26-30 GB/s with 2 threads, where oneDNN's product
  reads 18-23 with its weight reordered once into the blocked layout, or 9 as ``F.linear``, which
  reorders it on every call), reached by switching oneDNN off for the call and back on after it.
  Longer prompts keep oneDNN, which computes faster from 32 rows on. It is an ``nn.Linear``: the
  same parameters, state dict, ``.to``; a head tied to the token embedding stays tied.
- bf16, weights that stay in the caches between tokens (the families' tiny presets): there the
  product is bound by arithmetic, and oneDNN's prepacked kernel does 2.5-7x more of it than the
  matrix-vector one (which is slowest on short rows: a 64-wide head took 7x as long).
  ``PackedLinear`` holds the weight reordered once (``torch.ops.mkldnn._reorder_linear_weight``, as
  inductor's CPU freezing does) and multiplies by ``torch.ops.mkldnn._linear_pointwise``.
  ``generation.weights`` chooses between the two by the model's bytes
  (gpt_lab/generation/weights.py).
- fp32 where gpt_lab's native kernel cannot be built (it reads ``nn.Linear``'s own layout faster
  still, gpt_lab/generation/decoding.py): MKL's one-row product streams an (in, out) matrix
  1.2-1.6x faster than ``nn.Linear``'s (out, in) when the layer widens (out >= in: attention's
  projections, the feed-forward's first layer, the output head), and 0.8x when it narrows (the
  feed-forward's second layer), measured at one thread (docs/performance.md).
  ``transpose_weights_`` stores the weights of the widening Linears that way, in place: the same
  shape and values, strides (1, out); ``F.linear`` then runs the faster product, and nothing is
  copied per call.

All sum the same terms as ``F.linear`` in another order (float32 accumulation; the tests bound the
difference). Where oneDNN is missing, ``PackedLinear`` keeps a plain weight and ``RowLinear``'s longer
products are ``F.linear``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.model import native

_mkldnn_enabled = torch._C._get_mkldnn_enabled
_set_mkldnn_enabled = torch._C._set_mkldnn_enabled


def has_packed_kernel(dtype: torch.dtype) -> bool:
    """True where oneDNN's prepacked linear runs ``dtype`` on the CPU (bf16 needs AVX-512 BF16 or AMX-class support)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if not torch._C._dispatch_has_kernel_for_dispatch_key("mkldnn::_linear_pointwise", "CPU"):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class HeldWeight(nn.Module):
    """A layer whose weight lives outside its parameters, in a kernel's layout: ``_hold(weight)`` puts
    a plain (out, in) tensor there, ``weight`` gives it back. Saved and loaded as the plain
    ``weight`` entry (converted to the held weight's dtype), after the layer's other entries."""

    weight: torch.Tensor

    def _hold(self, weight: torch.Tensor) -> None:
        raise NotImplementedError

    @property
    def held_dtype(self) -> torch.dtype:
        """The held weight's dtype, without unpacking it."""
        raise NotImplementedError

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        weight = state_dict.get(prefix + "weight")
        if weight is not None:
            state_dict = {k: v for k, v in state_dict.items() if k != prefix + "weight"}
        super()._load_from_state_dict(state_dict, prefix, *args)
        if weight is not None:  # the plain (out, in) weight, packed again
            self._hold(weight.detach().to(self.held_dtype))


class PackedLinear(HeldWeight):
    """``nn.Linear`` holding its weight in oneDNN's blocked layout (a CPU, no-grad layer for generation).

    ``packed`` is the reordered weight (None where it could not be packed: then ``dense`` holds the
    plain one); ``bias`` is a frozen parameter. ``weight`` gives the plain (out, in) tensor (a copy
    out of the packed one). Moving or converting the layer (``.to``, ``.float()``) unpacks, applies
    the change, and packs again where the kernel exists for the result.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.packed: torch.Tensor | None = None
        self.dense: torch.Tensor | None = None
        self._hold(weight.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def _hold(self, weight: torch.Tensor) -> None:
        if weight.device.type == "cpu" and has_packed_kernel(weight.dtype):
            with torch.no_grad():
                self.packed, self.dense = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1), None
        else:
            self.packed, self.dense = None, weight

    @property
    def weight(self) -> torch.Tensor:
        return self.dense if self.packed is None else self.packed.to_dense()

    @property
    def held_dtype(self) -> torch.dtype:
        return (self.dense if self.packed is None else self.packed).dtype

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the held weight (not a registered tensor: ``model_stats.step_read_bytes`` adds it)."""
        held = self.dense if self.packed is None else self.packed
        return held.numel() * held.element_size()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> PackedLinear:
        weight = self.weight
        super()._apply(fn, recurse)
        self._hold(fn(weight))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is None or x.dtype != packed.dtype or x.device.type != "cpu" or torch.is_grad_enabled():
            weight = self.weight.to(x.dtype)
            return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        layout = "oneDNN-packed" if self.packed is not None else "plain"
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, {layout}"


# bf16 products of at most this many rows run gpt_lab's native kernel (csrc/f32_linear.c): it reads each
# weight once for all the rows, in nn.Linear's layout. gpt2_small's 49 products, 2 threads, against oneDNN's
# F.linear: 1 row 7.5 ms against 14.8 (PyTorch's matrix-vector kernel ~9), 4 rows 9.8 / 16.5, 16 rows 23.0 /
# 24.7, 32 rows 38.4 / 35.7: past 16 oneDNN computes faster.
NATIVE_ROWS = 16


class RowLinear(nn.Linear):
    """``nn.Linear`` whose bf16 products of a few rows on the CPU, without autograd, read the weight once.

    Up to ``NATIVE_ROWS`` rows: gpt_lab's native bf16 kernel (the result rounded to bfloat16 once, as
    ``F.linear``'s); without it, one row through PyTorch's own matrix-vector kernel (oneDNN switched off
    for the call: the switch is process-wide, so a bf16 product another thread runs meanwhile takes
    PyTorch's own kernel too, right but slower for many rows). Every other product (more rows, float32,
    another device, autograd) is ``F.linear``'s as it would be.
    """

    def _native_rows(self, x: torch.Tensor) -> bool:
        """Whether gpt_lab's bf16 kernel takes this product: no autograd, bfloat16 x and weight on the CPU,
        the weight contiguous, at most ``NATIVE_ROWS`` rows of ``in_features``."""
        w = self.weight
        return (
            not torch.is_grad_enabled()
            and x.dtype is torch.bfloat16
            and w.dtype is torch.bfloat16
            and x.device.type == "cpu"
            and w.device.type == "cpu"
            and x.dim() > 0
            and x.shape[-1] == w.shape[1]
            and x.numel() <= NATIVE_ROWS * w.shape[1]
            and w.is_contiguous()
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> RowLinear:
        """A ``RowLinear`` holding ``linear``'s own parameters (the same tensors: nothing is copied)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._native_rows(x):
            kernel = native.bf16_kernel()
            if kernel is not None:
                return native.bf16_linear(kernel, x, self.weight, self.bias)
        if x.dtype is torch.bfloat16 and x.numel() == x.shape[-1] and x.device.type == "cpu" and _mkldnn_enabled():
            _set_mkldnn_enabled(False)
            try:
                return F.linear(x, self.weight, self.bias)
            finally:
                _set_mkldnn_enabled(True)
        return F.linear(x, self.weight, self.bias)


def plain_linears(model: nn.Module, skip: Iterable[nn.Module] = ()) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every exact ``nn.Linear`` child of ``model`` (not subclasses such as LoRA's) but ``skip``, with its parent."""
    skipped = {id(m) for m in skip}
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and id(child) not in skipped
    ]


def pack_linears_(model: nn.Module, skip: Iterable[nn.Module] = ()) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (but ``skip``) by a ``PackedLinear``, in place, one
    layer at a time (each plain weight is freed as its packed copy is made); returns how many were
    packed (0 where the kernel is missing for the weights' dtype: the model is left as it was)."""
    targets = plain_linears(model, skip)
    if not targets or not has_packed_kernel(targets[0][2].weight.dtype):
        return 0
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear.from_linear(child))
        del child
    return len(targets)


def row_linears_(model: nn.Module, skip: Iterable[nn.Module] = ()) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (but ``skip``) by a ``RowLinear`` holding the same
    parameters, in place; returns how many."""
    targets = plain_linears(model, skip)
    for parent, name, child in targets:
        setattr(parent, name, RowLinear.from_linear(child))
    return len(targets)


def transpose_weights_(model: nn.Module, skip: Iterable[nn.Module] = ()) -> int:
    """Store the weight of every plain ``nn.Linear`` with out >= in features as the transpose of an
    (in, out) matrix, in place: the same shape, values and parameter, strides (1, out). Narrowing
    layers (out < in: faster as they are) and weights shared with another module (a tied output
    head is the token embedding) are left alone. Returns how many were laid out."""
    linears = plain_linears(model, skip)
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    count = 0
    with torch.no_grad():
        for _, _, linear in linears:
            w = linear.weight
            if owners.get(id(w), 0) > 1 or w.dim() != 2 or w.shape[1] > w.shape[0] or is_transposed(w):
                continue
            w.data = w.data.t().contiguous().t()
            count += 1
    return count


def is_transposed(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (out, in) is stored as an (in, out) matrix (``transpose_weights_``'s layout)."""
    return weight.dim() == 2 and weight.shape[0] > 1 and weight.stride() == (1, weight.shape[0])
