"""What a composed model costs, counted without allocating it (the meta device): the book's estimators.

Chapter 4's bonus scripts estimate each variant's memory with a formula of their own arguments;
here every figure comes from the model gpt_lab would build: parameters from its modules, the
key/value cache from the tensors ``model.new_kv_cache`` allocates (on the meta device, so only the
shapes exist), FLOPs from one forward pass under ``torch.utils.flop_counter.FlopCounterMode``
beside the book's convention (``thop``: the Linear layers' multiply-accumulates, times 2).

Pure PyTorch, like the rest of ``gpt_lab.model``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gpt_lab.model.cache import DeltaState
from gpt_lab.model.gpt import GPTModel

# dtype names the estimate accepts (estimate.dtype), as torch dtypes. One home: the config check reads it.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# The weight memory is reported for each of these (int8: generation.weights=int8's one byte a weight).
WEIGHT_DTYPES = {"float32": 4, "bfloat16": 2, "int8": 1}


def meta_model(cfg: Any) -> GPTModel:
    """``GPTModel(cfg)`` on the meta device: every shape, no memory (GPT-2 XL or Qwen3 30B alike)."""
    with torch.device("meta"):
        return GPTModel(cfg).eval()


def expert_layers(model: nn.Module) -> list[nn.Module]:
    """The mixture-of-experts feed-forward modules: those keeping per-expert Linears in ``fc1``/``fc2``/``fc3``."""
    return [m for m in model.modules() if isinstance(getattr(m, "fc1", None), nn.ModuleList)]


def expert_size(layer: nn.Module) -> int:
    """Parameters of one expert of a mixture-of-experts layer (its fc1, fc2 and fc3)."""
    return sum(p.numel() for m in (layer.fc1[0], layer.fc2[0], layer.fc3[0]) for p in m.parameters())


def parameter_counts(model: nn.Module, experts_per_token: int | None = None) -> dict[str, int]:
    """``total`` (a tied output head counted apart, as the book's notebooks print it), ``unique`` (the
    head counted once with the token embedding: the book's ``total_params_tied``) and ``active`` (what
    one token uses: every expert layer only its ``experts_per_token`` experts plus the router).

    ``model`` may be any module; ``unique`` subtracts ``out_head`` only where the model has a vocabulary
    head of the embedding's shape. ``experts_per_token``: default ``model.cfg['experts_per_token']``.
    """
    total = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    head = getattr(model, "out_head", None)
    emb = getattr(model, "tok_emb", None)
    unique = total
    if head is not None and emb is not None and head.weight.shape == emb.weight.shape:
        unique -= head.weight.numel()
    inactive = 0
    for layer in expert_layers(model):
        k = experts_per_token if experts_per_token is not None else _experts_per_token(model, layer)
        inactive += (len(layer.fc1) - k) * expert_size(layer)
    return {"total": total, "unique": unique, "active": total - inactive}


def _experts_per_token(model: nn.Module, layer: nn.Module) -> int:
    for source in (layer, getattr(model, "cfg", {})):
        k = source.get("experts_per_token") if isinstance(source, dict) else getattr(source, "experts_per_token", None)
        if k is not None:
            return int(k)
    raise ValueError("a mixture-of-experts layer without experts_per_token; give parameter_counts(experts_per_token=)")


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Memory of the weights as stored (a tied head once) in each of ``WEIGHT_DTYPES``."""
    stored = sum(p.numel() for p in model.parameters())
    return {name: stored * size for name, size in WEIGHT_DTYPES.items()}


def kv_cache_bytes(model: GPTModel, batch_size: int, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of every tensor the model's own cache allocates for ``batch_size`` sequences of ``max_len`` tokens."""
    return int(model.new_kv_cache(batch_size, max_len, dtype=dtype, device="meta").nbytes)


def recurrent_state_bytes(model: GPTModel, batch_size: int, dtype: torch.dtype) -> int:
    """Bytes of the Gated DeltaNet layers' states among that cache: fixed, whatever the context length."""
    cache = model.new_kv_cache(batch_size, 1, dtype=dtype, device="meta")
    return sum(t.nbytes for layer in cache.layers if isinstance(layer, DeltaState) for t in layer.tensors())


def architecture_figures(model: GPTModel, batch_size: int = 1, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """results.json's ``parameters`` and ``kv_cache`` (at ``model.context_length``) for a built model, e.g. a
    training run's: what a sweep summary compares variants by. ``dtype``: the cache's (default: the model's)."""
    dtype = dtype or next(p.dtype for p in model.parameters() if p.is_floating_point())
    context = model.context_length
    kv = kv_cache_bytes(model, batch_size, context, dtype)
    return {
        "parameters": parameter_counts(model),
        "kv_cache": {"bytes": kv, "bytes_per_token": kv // (batch_size * context), "dtype": str(dtype).split(".")[-1]},
    }


def forward_flops(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, int]:
    """FLOPs of one forward pass over ``(batch_size, seq_len)`` tokens (logits at every position).

    ``counted``: ``FlopCounterMode``'s total (matrix products, attention's included, with no discount
    for the causal mask). ``linear_only``: the book's convention (ch04/02 with ``thop``): 2 x the
    multiply-accumulates of the ``nn.Linear`` layers (biases and attention's own products left out),
    read from the inputs each Linear actually receives, so a mixture-of-experts layer counts the
    tokens routed to each expert.
    """
    macs = 0

    def count(module: nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal macs
        rows = args[0].numel() // module.in_features
        macs += rows * module.in_features * module.out_features

    hooks = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, nn.Linear)]
    device = next(model.parameters()).device
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device=device)
    experts = expert_layers(model)
    for layer in experts:  # routing reads values, which the meta device does not have
        vars(layer)["forward"] = _routed_shapes(layer)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
        for layer in experts:
            vars(layer).pop("forward", None)
    return {"counted": int(counter.get_total_flops()), "linear_only": 2 * macs}


def _routed_shapes(layer: nn.Module) -> Any:
    """A mixture-of-experts forward that does the products of a routing without reading the router.

    Every expert has the same shapes, so the work is that of ``n_tokens * experts_per_token`` rows
    through one expert whichever experts the router picks: the rows are dealt out evenly here
    (on the meta device, only shapes exist). The output is zeros of ``x``'s shape.
    """

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        layer.gate(rows)
        assigned = rows.shape[0] * int(layer.experts_per_token)
        n = len(layer.fc1)
        for e in range(n):
            part = rows.new_empty(assigned // n + (e < assigned % n), rows.shape[-1])
            layer.fc3[e](layer.fc1[e](part) * layer.fc2[e](part))
        return torch.zeros_like(x)

    return forward
