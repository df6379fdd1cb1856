"""Linear layers laid out for one-row products: what a generation step runs.

A generation step multiplies one row per sequence by every weight, bound by reading the weights.
How fast a CPU library streams them depends on the kernel and on the weights' layout in memory:

- bf16: ``F.linear`` hands a bf16 product to oneDNN, which reorders the (out, in) weight into its
  blocked layout on every call (about 9 GB/s on this project's CPU, slower than fp32's 13-20);
  reordered once and multiplied by ``mkldnn::_linear_pointwise`` it streamed at 12-25 GB/s. With
  oneDNN switched off for the call, PyTorch's own CPU BLAS runs a single row as a matrix-vector
  product over the plain (out, in) weight, accumulating in float32, at 19-30 GB/s (2 threads),
  with no copy of the weight at all. ``RowLinear`` does that for one-row bf16 products (the
  ``torch.backends.mkldnn`` switch, off for the call and back on after it), and leaves products of
  several rows (a prompt) to oneDNN, which is far faster there (PyTorch's own runs one
  matrix-vector product per row). It is an ``nn.Linear``: the same parameters, state dict, ``.to``,
  and a head tied to the token embedding stays tied.
- fp32: MKL's one-row product streams an (in, out) matrix 1.2-1.6x faster than ``nn.Linear``'s
  (out, in) when the layer widens (out >= in: attention's projections, the feed-forward's first
  layer, the output head), and 0.8x when it narrows (the feed-forward's second layer), measured
  at one thread (docs/performance.md). ``transpose_weights_`` stores the weights of the widening
  Linears that way, in place: the same shape and values, strides (1, out); ``F.linear`` then runs
  the faster product, and nothing is copied per call.

Both sum the same terms as ``F.linear`` in another order (float32 accumulation; the tests bound
the difference). Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

_mkldnn_enabled = torch._C._get_mkldnn_enabled
_set_mkldnn_enabled = torch._C._set_mkldnn_enabled


class RowLinear(nn.Linear):
    """``nn.Linear`` whose one-row bf16 products on the CPU run PyTorch's own matrix-vector kernel.

    Every other product (several rows, float32, another device) is ``F.linear``'s as it would be.
    The oneDNN switch is process-wide: a bf16 product another thread runs during the call takes
    PyTorch's own kernel too (right, slower for many rows).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> RowLinear:
        """A ``RowLinear`` holding ``linear``'s own parameters (the same tensors: nothing is copied)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.bfloat16 and x.numel() == x.shape[-1] and x.device.type == "cpu" and _mkldnn_enabled():
            _set_mkldnn_enabled(False)
            try:
                return F.linear(x, self.weight, self.bias)
            finally:
                _set_mkldnn_enabled(True)
        return F.linear(x, self.weight, self.bias)


def _plain_linears(model: nn.Module, skip: Iterable[nn.Module]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every exact ``nn.Linear`` child of ``model`` (not subclasses such as LoRA's) but ``skip``, with its parent."""
    skipped = {id(m) for m in skip}
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and id(child) not in skipped
    ]


def row_linears_(model: nn.Module, skip: Iterable[nn.Module] = ()) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (but ``skip``) by a ``RowLinear`` holding the same
    parameters, in place; returns how many."""
    targets = _plain_linears(model, skip)
    for parent, name, child in targets:
        setattr(parent, name, RowLinear.from_linear(child))
    return len(targets)


def transpose_weights_(model: nn.Module, skip: Iterable[nn.Module] = ()) -> int:
    """Store the weight of every plain ``nn.Linear`` with out >= in features as the transpose of an
    (in, out) matrix, in place: the same shape, values and parameter, strides (1, out). Narrowing
    layers (out < in: faster as they are) and weights shared with another module (a tied output
    head is the token embedding) are left alone. Returns how many were laid out."""
    linears = _plain_linears(model, skip)
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
