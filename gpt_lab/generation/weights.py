"""``generation.weights``: the precision of the weights a generating or classifying task reads.

Generation on the CPU is bound by reading every weight once per token, so fewer bytes per weight
means more tokens per second:

- ``fp32``: the model's values as built (the book's tokens), read by gpt_lab's native float32 kernel
  in generation steps (gpt_lab/generation/decoding.py); where it cannot be built, each widening
  ``nn.Linear``'s weight is stored as an (in, out) matrix in memory instead (same shape and values:
  the layout MKL's one-row product streams fastest, gpt_lab/model/packed.py);
- ``bf16``: every floating parameter and buffer in bfloat16 (half the bytes); the activations and
  the key/value cache follow; each plain ``nn.Linear`` a ``RowLinear`` over the same parameters
  (its products of a few rows through gpt_lab's native bf16 kernel, or PyTorch's own matrix-vector
  kernel without it, which stream weights from memory fastest; a tied head stays tied), or, for a
  model whose Linear weights fit in
  ``STREAMED_BYTES`` (they stay in the CPU's caches), a ``PackedLinear`` (the weight reordered once
  for oneDNN, which computes fastest; a tied head gets its own copy) — gpt_lab/model/packed.py;
- ``int8``: every plain ``nn.Linear`` (the output head included) as an ``Int8Linear`` (int8
  weights, one scale per output feature, multiplied by gpt_lab's native kernel, or PyTorch's
  FBGEMM where it cannot be built, gpt_lab/model/quantized.py: a quarter of the bytes); the rest
  (embeddings, norms, biases, MLA's up-projections, which a step reads as matrices), the
  activations and the key/value cache stay float32 (one row of the embedding a token: few bytes;
  both kernels take float32 rows).

``use_weights`` converts in place, layer by layer: a model whose weights came from a file never
exists twice (the fp32 tensor of each layer is freed as its converted copy is made).
``check_weights_device`` refuses int8 on a device without the kernel before any weight is read.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt_lab.config import GENERATION_WEIGHTS
from gpt_lab.errors import ConfigError
from gpt_lab.model import native
from gpt_lab.model.attention import MultiHeadLatentAttention
from gpt_lab.model.packed import pack_linears_, plain_linears, row_linears_, transpose_weights_
from gpt_lab.model.quantized import has_int8_kernel, quantize_linears_

ACTIVATION_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
# bf16 weights beyond this many bytes come from memory every token (no CPU cache holds them): their
# one-row products stream fastest through gpt_lab's bf16 kernel or PyTorch's matrix-vector one (RowLinear);
# below it they stay cached and oneDNN's prepacked kernel, which computes faster, wins (PackedLinear).
STREAMED_BYTES = 64 << 20


def check_weights_device(weights: str, device: torch.device | str) -> None:
    """Raise ``ConfigError`` (one paragraph, exit 2) for int8 where the int8 kernel has no ``device`` version."""
    device = torch.device(device)
    if weights == "int8" and not has_int8_kernel(device):
        raise ConfigError(
            "generation.weights=int8 needs an int8 kernel (gpt_lab's native one, FBGEMM or "
            f"aten::_weight_int8pack_mm: CPU kernels), which torch {torch.__version__} does not provide on the "
            f"{device.type} device this run would use. Choose generation.weights=bf16 (half of fp32's bytes) "
            "or fp32 on this device, or run on the CPU (trainer=cpu), where the int8 kernels exist."
        )


def use_weights(model: nn.Module, weights: str) -> nn.Module:
    """``model`` holding its weights as ``weights`` says (in place; returned for chaining)."""
    if weights not in GENERATION_WEIGHTS:
        raise ValueError(f"weights={weights!r} must be one of {', '.join(GENERATION_WEIGHTS)}")
    if weights == "int8":
        # From the fp32 weights, before they are rounded; MLA's up-projections stay float (read as matrices).
        quantize_linears_(model, ACTIVATION_DTYPE["int8"], skip=_read_as_matrices(model))
    if weights != "fp32":
        model.to(ACTIVATION_DTYPE[weights])  # float tensors only: int8 weights stay int8
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and weights == "fp32" and native.f32_kernel() is None:
        transpose_weights_(model)
    elif on_cpu and weights == "bf16":
        skip = _read_as_matrices(model)
        if linear_bytes(model) >= STREAMED_BYTES:
            row_linears_(model, skip=skip)
        else:
            pack_linears_(model, skip=skip)
    return model


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the weights of ``model``'s plain ``nn.Linear`` layers (a tied head counted once)."""
    weights = {id(linear.weight): linear.weight for _, _, linear in plain_linears(model)}
    return sum(w.numel() * w.element_size() for w in weights.values())


def _read_as_matrices(model: nn.Module) -> list[nn.Module]:
    """Linear layers whose weights other code reads as matrices rather than calling them: MLA's
    up-projections, which a generation step folds into the query and the output (attention_decode.py)."""
    return [w for m in model.modules() if isinstance(m, MultiHeadLatentAttention) for w in (m.W_UK, m.W_UV)]
