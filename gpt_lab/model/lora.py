"""Appendix E's LoRA: a trainable low-rank update beside each frozen ``nn.Linear``.

``LoRALinear`` is an ``nn.Linear`` (same ``weight`` / ``bias`` names, so book checkpoints and our
own still map key for key) with two more parameters, ``lora_A`` (in_features, rank), Kaiming-uniform
with a = √5 as appendix E, and ``lora_B`` (rank, out_features), zeros — so a freshly wrapped model
computes exactly what the base model computes:

    y = x W^T + b + scale * (x @ A @ B),   scale = alpha / rank  (scaling="rank", the book's appendix)
                                           scale = alpha         (scaling="alpha", the chapter's bonus script)

``apply_lora`` freezes the model and wraps the target Linears (by default every one, the output
head included, as appendix E), in module order, so ``torch.manual_seed`` before it reproduces the
book's draws. ``merge_lora`` folds the adapters into plain ``nn.Linear`` weights (export);
``merged_state_dict`` gives the same weights without touching the model; ``lora_disabled``
switches the adapters off for a block of code (the base model: DPO's reference).

Speed (docs/classification.md, "Speed"): the product has its own backward (``_LoRAProduct``), and
under autocast the frozen weights' low-precision copies are kept between steps and attention's
query, key and value run as one product (``LoRALinear.forward_group``, which the model's attention
calls when all three projections are ``LoRALinear``).

Pure PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config import LORA_INITS as INITS
from gpt_lab.config import LORA_SCALINGS as SCALINGS
from gpt_lab.errors import ConfigError

# Short names for groups of the model's Linears (lora.targets); anything else is a glob matched
# against a Linear's qualified name (trf_blocks.11.att.W_query) or its last part (W_query).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("*",),
    "attention": ("*.att.W_query", "*.att.W_key", "*.att.W_value", "*.att.out_proj"),
    "feedforward": ("*.ff.layers.*",),
    "head": ("out_head",),
}


def lora_scale(rank: int, alpha: float, scaling: str = "rank") -> float:
    """The factor of ``x @ A @ B``: ``alpha / rank`` (appendix E) or ``alpha`` (the bonus script)."""
    if scaling not in SCALINGS:
        raise ConfigError(f"lora.scaling={scaling} is not a scaling; choose one of {', '.join(SCALINGS)}")
    return alpha / rank if scaling == "rank" else float(alpha)


def draw_lora_a(lora_a: torch.Tensor, init: str = "book") -> None:
    """Draw ``lora_a`` (in_features, rank) in place: Kaiming-uniform with a = √5 over the tensor as
    appendix E stores it (``book``: fan_in = rank, bound 1/√rank), or over its transpose (rank,
    in_features) as peft, litgpt and torchtune store and draw it (``peft``: bound 1/√in_features, the
    same values their seed gives, so their learning rates carry over)."""
    if init not in INITS:
        raise ConfigError(f"lora.init={init} is not an initialisation; choose one of {', '.join(INITS)}")
    with torch.no_grad():
        if init == "book":
            nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
        else:
            drawn = torch.empty(lora_a.shape[1], lora_a.shape[0], device=lora_a.device, dtype=lora_a.dtype)
            nn.init.kaiming_uniform_(drawn, a=math.sqrt(5))
            lora_a.copy_(drawn.T)


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus ``scale * (x @ lora_A @ lora_B)``; ``lora_enabled=False`` drops the update."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        bias: bool = True,
        scaling: str = "rank",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if rank <= 0:
            raise ConfigError(f"lora.rank={rank} must be a positive integer")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank = rank
        self.alpha = alpha
        self.scaling = scaling
        self.scale = lora_scale(rank, alpha, scaling)
        self.lora_enabled = True
        self.lora_A = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, out_features, device=device, dtype=dtype))
        draw_lora_a(self.lora_A)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, rank: int, alpha: float, scaling: str = "rank", init: str = "book"
    ) -> LoRALinear:
        """A ``LoRALinear`` sharing ``linear``'s weight and bias (same tensors, no copy); ``init``: see
        ``draw_lora_a``."""
        weight = linear.weight
        with torch.device("meta"):  # the base weights are about to be replaced: draw nothing for them
            new = cls.__new__(cls)
            nn.Linear.__init__(new, linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = weight
        new.bias = linear.bias
        new.rank, new.alpha, new.scaling = rank, alpha, scaling
        if rank <= 0:
            raise ConfigError(f"lora.rank={rank} must be a positive integer")
        new.scale = lora_scale(rank, alpha, scaling)
        new.lora_enabled = True
        kw = {"device": weight.device, "dtype": weight.dtype}
        new.lora_A = nn.Parameter(torch.empty(linear.in_features, rank, **kw))
        new.lora_B = nn.Parameter(torch.zeros(rank, linear.out_features, **kw))
        if not weight.is_meta:
            draw_lora_a(new.lora_A, init)
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_group((self,), x)[0]

    @staticmethod
    def forward_group(layers: Sequence[LoRALinear], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The outputs of ``layers`` that all read ``x`` (attention's query, key and value).

        Under autocast (``trainer=cpu_bf16``, GPU mixed precision) the group is one product: ``x``
        is cast once, the frozen weights are joined and cast once and kept until one of them
        changes (the same values autocast would produce, without a copy each step), and the
        adapters join as ``[A_1 .. A_k]`` and ``blockdiag(B_1 .. B_k)``. At full precision each
        layer is its own product (joining would keep a second copy of the weights for little gain).
        """
        if torch.compiler.is_compiling():  # compile=true: the plain expression, for the compiler to fuse
            return tuple(layer.plain_forward(x) for layer in layers)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        if len(layers) > 1 and (
            dtype is None
            or len({layer.lora_enabled for layer in layers}) > 1
            or len({layer.bias is None for layer in layers}) > 1
        ):
            return tuple(layer(x) for layer in layers)
        weight, bias = _joined(layers, "weight", dtype), _joined(layers, "bias", dtype)
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1]) if dtype is None else x.to(dtype).reshape(-1, x.shape[-1])
        with torch.autocast(device, enabled=False):
            if not layers[0].lora_enabled:
                out = F.linear(rows, weight, bias)
            else:
                scaled = [layer.lora_B * layer.scale for layer in layers]
                a = torch.cat([layer.lora_A for layer in layers], dim=1) if len(layers) > 1 else layers[0].lora_A
                b = torch.block_diag(*scaled) if len(layers) > 1 else scaled[0]
                if dtype is not None:
                    a, b = a.to(dtype), b.to(dtype)
                out = _LoRAProduct.apply(rows, weight, bias, a, b)
        sizes = [layer.out_features for layer in layers]
        return tuple(part.view(*lead, part.shape[-1]) for part in out.split(sizes, dim=-1))

    def plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Appendix E's expression as written, with autograd's own backward (what ``compile=true`` traces)."""
        out = F.linear(x, self.weight, self.bias)
        return out + self.scale * ((x @ self.lora_A) @ self.lora_B) if self.lora_enabled else out

    def delta_weight(self) -> torch.Tensor:
        """The update folded into ``weight`` (out_features, in_features): ``scale * (A @ B)^T``."""
        return self.scale * (self.lora_A @ self.lora_B).T

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, scaling={self.scaling}"


def _joined(layers: Sequence[LoRALinear], name: str, dtype: torch.dtype | None) -> torch.Tensor | None:
    """The layers' ``weight`` or ``bias`` joined along the output dimension, in ``dtype``.

    Frozen tensors are joined and cast once and kept on the first layer until one of them changes
    (data pointer or version counter); trainable ones are joined each call, so gradients flow.
    """
    parts = [getattr(layer, name) for layer in layers]
    if parts[0] is None:
        return None
    if len(parts) == 1 and (dtype is None or parts[0].dtype == dtype):
        return parts[0]
    dtype = dtype or parts[0].dtype
    if any(t.requires_grad for t in parts):
        return torch.cat(parts).to(dtype)
    key = (dtype, tuple((t.device, t.data_ptr(), t._version) for t in parts))
    cache = layers[0].__dict__.setdefault("_joined", {})
    slot = (name, tuple(id(layer) for layer in layers))
    if slot not in cache or cache[slot][0] != key:
        cache[slot] = (key, torch.cat([t.detach() for t in parts]).to(dtype))
    return cache[slot][1]


class _LoRAProduct(torch.autograd.Function):
    """``x W^T + bias + (x A) B`` over rows ``x`` (n, in), with a backward written for it.

    ``B`` arrives scaled. The bias rides on the low-rank product as one more rank (a column of
    ones in ``x A``, a row ``bias`` in ``B``), so the output takes one pass after ``x W^T``
    instead of two. Autograd over the plain expression would add the two input gradients in a
    pass of its own and transpose the whole input for ``A``'s gradient; here the input gradient
    is one ``addmm_`` onto ``g W`` and ``A``'s gradient is ``((g B^T)^T x)^T``, whose transposed
    operand has ``rank`` rows. Gradients are computed only for what requires them.
    """

    @staticmethod
    def forward(ctx: Any, x, weight, bias, a, b):  # type: ignore[no-untyped-def]
        low = x @ a  # (n, rank)
        out = x @ weight.t()
        if bias is None:
            out.addmm_(low, b)
        else:
            out.addmm_(torch.cat([low, low.new_ones(low.shape[0], 1)], dim=1), torch.cat([b, bias[None]]))
        ctx.save_for_backward(x, weight, a, b, low)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[no-untyped-def]
        x, weight, a, b, low = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad
        g_low = g @ b.t() if (need_x or need_a) else None  # (n, rank)
        grad_x = (g @ weight).addmm_(g_low, a.t()) if need_x else None
        grad_w = g.t() @ x if need_w else None
        grad_bias = g.sum(0) if need_bias else None
        grad_a = (g_low.t() @ x).t() if need_a else None
        grad_b = low.t() @ g if need_b else None
        return grad_x, grad_w, grad_bias, grad_a, grad_b


def _matches(name: str, targets: Sequence[str]) -> bool:
    last = name.rpartition(".")[2]
    for target in targets:
        for pattern in TARGET_GROUPS.get(target, (target,)):
            if fnmatchcase(name, pattern) or fnmatchcase(last, pattern):
                return True
    return False


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: Sequence[str] = ("all",),
    scaling: str = "rank",
    init: str = "book",
) -> int:
    """Freeze every parameter of ``model`` and wrap each target ``nn.Linear`` as a ``LoRALinear``
    (``init``: how ``lora_A`` is drawn, ``draw_lora_a``).

    ``targets``: ``all`` (every Linear, the head included: appendix E), ``attention``,
    ``feedforward``, ``head``, or globs over the Linears' names (``W_query``, ``trf_blocks.11.*``).
    Linears are wrapped in module order (the book's ``replace_linear_with_lora`` order), so the
    ``lora_A`` draws follow the caller's seed. Returns the number of trainable parameters (the
    adapters). Wrapping a model twice is refused.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"lora.rank={rank} must be a positive integer")
    if not alpha > 0:  # NaN too
        raise ConfigError(f"lora.alpha={alpha} must be a positive number")
    lora_scale(rank, alpha, scaling)  # checks the name
    if init not in INITS:
        raise ConfigError(f"lora.init={init} is not an initialisation; choose one of {', '.join(INITS)}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already holds LoRA adapters; merge_lora(model) first to add new ones")
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(name, targets)]
    if not chosen:
        linears = [name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"lora.targets={list(targets)} matches none of the model's Linear layers; use all, attention, "
            f"feedforward, head, or names such as {', '.join(sorted(set(linears)))}"
        )
    for name in chosen:
        _set_child(model, name, LoRALinear.from_linear(model.get_submodule(name), rank, alpha, scaling, init))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Every ``LoRALinear`` of ``model`` with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    return next(lora_layers(model), None) is not None


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain ``nn.Linear`` in its place.

    The merged model computes the same function (to float32 round-off) without the extra
    products. A merged weight is a new tensor, so a head tied to the token embedding is untied
    (``model.cfg["tie_weights"]`` is updated). Returns ``model``.
    """
    for name, layer in list(lora_layers(model)):
        plain = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device="meta",
        )
        requires_grad = layer.weight.requires_grad
        plain.weight = nn.Parameter(layer.weight + layer.delta_weight().to(layer.weight.dtype), requires_grad)
        plain.bias = layer.bias
        plain.train(layer.training)
        _set_child(model, name, plain)
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, dict) and cfg.get("tie_weights") and hasattr(model, "out_head"):
        cfg["tie_weights"] = model.out_head.weight is model.tok_emb.weight
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every adapter folded into its ``weight`` and the ``lora_*`` keys
    dropped: what ``merge_lora(model).state_dict()`` would give, without changing ``model``."""
    state = model.state_dict()
    for name, layer in lora_layers(model):
        prefix = f"{name}." if name else ""
        state[prefix + "weight"] = layer.weight.detach() + layer.delta_weight().to(layer.weight.dtype)
        state.pop(prefix + "lora_A")
        state.pop(prefix + "lora_B")
    return state


def merge_lora_state(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict holding ``<name>.lora_A`` / ``<name>.lora_B`` with each adapter folded into
    ``<name>.weight`` (``scale``: ``lora_scale(rank, alpha, scaling)`` of the run that trained it)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".lora_A")]:
        base = key.removesuffix("lora_A")
        a, b = out.pop(key), out.pop(base + "lora_B")
        out[base + "weight"] = state[base + "weight"] + scale * (a @ b).T.to(state[base + "weight"].dtype)
    return out


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every adapter of ``model`` is off: the model computes its base function."""
    layers = [layer for _, layer in lora_layers(model)]
    before = [layer.lora_enabled for layer in layers]
    for layer in layers:
        layer.lora_enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, before, strict=True):
            layer.lora_enabled = enabled
