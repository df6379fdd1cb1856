"""What trains in a fine-tuning run (``finetune=``).

``select_trainable(model, finetune, lora_cfg)`` sets ``requires_grad``:

- ``all``: every parameter (chapter 5, the bonus table's "all layers");
- ``last_block``: the output head, the last transformer block and the final norm (chapter 6:
  7,090,946 of gpt2_small's parameters with a 2-class head and qkv bias);
- ``last_two_blocks``: the same with the last two blocks;
- ``head``: the output head only;
- ``lora``: the base frozen, LoRA adapters on ``lora.targets`` (appendix E; ``gpt_lab.model.lora``),
  and the modules of ``lora.train_also`` (e.g. ``[out_head, final_norm]``) trained whole, without adapters.

The fine-tuned model file a run writes at the end is ``gpt_lab.model.finetuned``'s.

Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from gpt_lab.config import FINETUNE_NAMES
from gpt_lab.errors import ConfigError
from gpt_lab.model.lora import apply_lora


def _lora_get(lora_cfg: Any, key: str, default: Any) -> Any:
    if lora_cfg is None:
        return default
    value = lora_cfg.get(key, default) if isinstance(lora_cfg, Mapping) else getattr(lora_cfg, key, default)
    return default if value is None else value


def lora_settings(lora_cfg: Any) -> dict[str, Any]:
    """``cfg.lora`` (or None) as a plain dict: rank, alpha, targets, scaling, dropout, train_also, init
    (appendix E's defaults)."""
    return {
        "rank": int(_lora_get(lora_cfg, "rank", 16)),
        "alpha": float(_lora_get(lora_cfg, "alpha", 16)),
        "targets": [str(t) for t in _lora_get(lora_cfg, "targets", ["all"])],
        "scaling": str(_lora_get(lora_cfg, "scaling", "rank")),
        "dropout": float(_lora_get(lora_cfg, "dropout", 0.0)),
        "train_also": [str(t) for t in _lora_get(lora_cfg, "train_also", [])],
        "init": str(_lora_get(lora_cfg, "init", "book")),
    }


def _last_blocks(model: nn.Module, n: int) -> list[nn.Module]:
    blocks = list(model.trf_blocks)
    return blocks[-n:] if n <= len(blocks) else blocks


def _modules_named(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """``lora.train_also``'s modules (names or globs of qualified names); a name matching none is a ConfigError."""
    out = []
    for name in names:
        found = [m for qualified, m in model.named_modules() if qualified and fnmatchcase(qualified, name)]
        if not found:
            tops = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(
                f"lora.train_also=[{name}] names no module of the model; give module names or globs such as "
                f"{tops}, trf_blocks.11"
            )
        out += found
    return out


def select_trainable(model: nn.Module, finetune: str, lora_cfg: Any = None) -> int:
    """Make the ``finetune`` part of a ``GPTModel`` trainable and freeze the rest; return the trainable count.

    ``lora_cfg``: ``cfg.lora`` (a mapping or object with ``rank``, ``alpha``, ``targets``,
    ``scaling``), used by ``finetune=lora`` only. A head tied to the token embedding trains with it.
    """
    if finetune not in FINETUNE_NAMES:
        raise ConfigError(f"finetune={finetune} is not a choice; choose one of {', '.join(FINETUNE_NAMES)}")
    if finetune == "lora":
        s = lora_settings(lora_cfg)
        whole = _modules_named(model, s["train_also"])  # checked before the model changes
        apply_lora(
            model, s["rank"], s["alpha"], s["targets"], s["scaling"], s["dropout"], keep=s["train_also"], init=s["init"]
        )
        for module in whole:  # trained whole, without adapters (apply_lora left them plain)
            module.requires_grad_(True)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_all = finetune == "all"
    for p in model.parameters():
        p.requires_grad_(train_all)
    if not train_all:
        parts: list[nn.Module] = [model.out_head]
        if finetune != "head":
            parts += [model.final_norm, *_last_blocks(model, 1 if finetune == "last_block" else 2)]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_base_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load base weights (no adapters) into ``model``, which may already hold LoRA adapters.

    Strict but for the adapters: every other key must match, and the ``lora_*`` parameters keep
    their fresh values (A drawn, B zeros).
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".lora_A", ".lora_B"))]
    if missing or unexpected:
        raise RuntimeError(
            f"the weights do not fit the model: missing {missing[:8]}, unexpected {list(unexpected)[:8]}"
        )
