"""Appendix E's LoRA: a trainable low-rank update beside each frozen ``nn.Linear``.

``LoRALinear`` is an ``nn.Linear`` (same ``weight`` / ``bias`` names, so book checkpoints and our
own still map key for key) with two more parameters, ``lora_A`` (in_features, rank), Kaiming-uniform
with a = √5 as appendix E, and ``lora_B`` (rank, out_features), zeros — so a freshly wrapped model
computes exactly what the base model computes:

    y = x W^T + b + scale * (dropout(x) @ A @ B),   scale = alpha / rank   (scaling="rank", the appendix)
                                                    scale = alpha          (scaling="alpha", the bonus script)
                                                    scale = alpha / √rank  (scaling="rslora", rank-stabilised)

``dropout`` (``lora.dropout``, 0 by default as in the appendix) acts on the adapter's input only.
``apply_lora`` freezes the model and wraps the target Linears (by default every one, the output
head included, as appendix E), in module order, so ``torch.manual_seed`` before it reproduces the
book's draws. ``merge_lora`` folds the adapters into plain ``nn.Linear`` weights (export);
``merged_state_dict`` gives the same weights without touching the model; ``lora_disabled``
switches the adapters off for a block of code (the base model: DPO's reference).

Pure PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config import LORA_INITS as INITS
from gpt_lab.config import LORA_SCALINGS as SCALINGS
from gpt_lab.errors import ConfigError

# Short names for groups of the model's Linears (lora.targets); anything else is a glob matched
# against a Linear's qualified name (trf_blocks.11.att.W_query) or its short name: the last part
# (W_query, MLA's W_DKV / W_UK / W_UV, SwiGLU's fc1), or for a list of experts the list's name
# (fc1 names every expert's trf_blocks.0.ff.fc1.<e>). attention / feedforward: every Linear of the
# blocks' att / ff, whatever their kind (the book's W_query .. out_proj and layers.0 / layers.2).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("*",),
    "attention": ("*.att.*",),
    "feedforward": ("*.ff.*",),
    "head": ("out_head",),
}


def lora_scale(rank: int, alpha: float, scaling: str = "rank") -> float:
    """The factor of ``x @ A @ B`` (the one place rank, alpha and scaling are checked): ``alpha / rank``
    (appendix E), ``alpha`` (the bonus script) or ``alpha / sqrt(rank)`` (rsLoRA, Kalajdzievski 2023)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"lora.rank={rank} must be a positive integer")
    if not alpha > 0:  # NaN too
        raise ConfigError(f"lora.alpha={alpha} must be a positive number")
    if scaling not in SCALINGS:
        raise ConfigError(f"lora.scaling={scaling} is not a scaling; choose one of {', '.join(SCALINGS)}")
    if scaling == "rank":
        return alpha / rank
    return alpha / math.sqrt(rank) if scaling == "rslora" else float(alpha)


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
    """``nn.Linear`` plus ``scale * (dropout(x) @ lora_A @ lora_B)``; ``lora_enabled=False`` drops the update."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        bias: bool = True,
        scaling: str = "rank",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        scale = lora_scale(rank, alpha, scaling)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank, self.alpha, self.scaling, self.scale = rank, alpha, scaling, scale
        self.lora_enabled = True
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, out_features, device=device, dtype=dtype))
        draw_lora_a(self.lora_A)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        scaling: str = "rank",
        dropout: float = 0.0,
        init: str = "book",
    ) -> LoRALinear:
        """A ``LoRALinear`` sharing ``linear``'s weight and bias (same tensors, no copy); one draw, for
        ``lora_A`` (``init``: see ``draw_lora_a``)."""
        weight = linear.weight
        with torch.device("meta"):  # nothing is drawn for the weights about to be replaced
            new = cls(linear.in_features, linear.out_features, rank, alpha, linear.bias is not None, scaling, dropout)
        new.weight, new.bias = weight, linear.bias
        new.lora_A = nn.Parameter(torch.empty(linear.in_features, rank, device=weight.device, dtype=weight.dtype))
        new.lora_B = nn.Parameter(torch.zeros(rank, linear.out_features, device=weight.device, dtype=weight.dtype))
        if not weight.is_meta:
            draw_lora_a(new.lora_A, init)
        return new.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.lora_enabled:
            return out
        # out + scale * (dropout(x) @ A @ B): the scale on the small (tokens, rank) product, the sum inside
        # one addmm (a step of gpt2_small's LoRA peaks ~380 MiB lower than with three full-size tensors).
        low_rank = (self.lora_dropout(x) @ self.lora_A) * self.scale
        rows = out.reshape(-1, out.shape[-1])
        return torch.addmm(rows, low_rank.reshape(-1, self.rank), self.lora_B).view_as(out)

    def delta_weight(self) -> torch.Tensor:
        """The update folded into ``weight`` (out_features, in_features): ``scale * (A @ B)^T``."""
        return self.scale * (self.lora_A @ self.lora_B).T

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, scaling={self.scaling}"


def _short_name(name: str) -> str:
    """``W_query`` for ``trf_blocks.0.att.W_query``; ``fc1`` for an expert, ``trf_blocks.0.ff.fc1.3``."""
    parts = name.split(".")
    return parts[-2] if len(parts) > 1 and parts[-1].isdigit() else parts[-1]


def _matches(name: str, targets: Sequence[str]) -> bool:
    last = _short_name(name)
    for target in targets:
        for pattern in TARGET_GROUPS.get(target, (target,)):
            if fnmatchcase(name, pattern) or fnmatchcase(last, pattern):
                return True
    return False


def _inside(name: str, modules: Sequence[str]) -> bool:
    """Whether the module ``name`` is one of ``modules`` (names or globs) or lies inside one."""
    return any(fnmatchcase(name, m) or fnmatchcase(name, f"{m}.*") for m in modules)


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
    dropout: float = 0.0,
    keep: Sequence[str] = (),
    init: str = "book",
) -> int:
    """Freeze every parameter of ``model`` and wrap each target ``nn.Linear`` as a ``LoRALinear``
    (``init``: how ``lora_A`` is drawn, ``draw_lora_a``).

    ``targets``: ``all`` (every Linear, the head included: appendix E), ``attention``,
    ``feedforward``, ``head``, or globs over the Linears' names (``W_query``, ``trf_blocks.11.*``).
    Linears are wrapped in module order (the book's ``replace_linear_with_lora`` order), so the
    ``lora_A`` draws follow the caller's seed. Returns the number of trainable parameters (the
    adapters). Linears inside the modules named by ``keep`` (``lora.train_also``: trained whole, see
    ``gpt_lab.model.finetune``) are left plain. Wrapping a model twice is refused.
    """
    lora_scale(rank, alpha, scaling)  # rank, alpha and scaling checked before anything changes
    if init not in INITS:
        raise ConfigError(f"lora.init={init} is not an initialisation; choose one of {', '.join(INITS)}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already holds LoRA adapters; merge_lora(model) first to add new ones")
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and _matches(name, targets) and not _inside(name, keep)
    ]
    if not chosen:
        linears = [_short_name(name) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"lora.targets={list(targets)} matches none of the model's Linear layers; use all, attention, "
            f"feedforward, head, or names such as {', '.join(sorted(set(linears)))}"
        )
    for name in chosen:
        _set_child(model, name, LoRALinear.from_linear(model.get_submodule(name), rank, alpha, scaling, dropout, init))
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
