"""What trains in a fine-tuning run (``finetune=``), and the fine-tuned model file.

``select_trainable(model, finetune, lora_cfg)`` sets ``requires_grad``:

- ``all``: every parameter (chapter 5, the bonus table's "all layers");
- ``last_block``: the output head, the last transformer block and the final norm (chapter 6:
  7,090,946 of gpt2_small's parameters with a 2-class head and qkv bias);
- ``last_two_blocks``: the same with the last two blocks;
- ``head``: the output head only;
- ``lora``: the base frozen, LoRA adapters on ``lora.targets`` (appendix E; ``gpt_lab.model.lora``).

A fine-tuning run saves its model with ``save_finetuned(model, run_dir, meta)``: ``model.pth``, a
state dict in the book's layout (adapters merged into the weights, the classification head as it
is), which ``init_from=<run dir>`` and the book's own code read, and ``model.json`` beside it,
what using the model needs (``kind``, the model config, ``class_names``, ``pooling``,
``prompt_style``, ``finetune``, ``lora``). ``load_finetuned(path)`` reads both back.

Pure PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_lab.config import FINETUNE_NAMES
from gpt_lab.config.saved_model import META_FILE, MODEL_FILE
from gpt_lab.errors import ConfigError, InitFromError
from gpt_lab.model.lora import apply_lora, merged_state_dict

META_VERSION = 1


def _lora_get(lora_cfg: Any, key: str, default: Any) -> Any:
    if lora_cfg is None:
        return default
    value = lora_cfg.get(key, default) if isinstance(lora_cfg, Mapping) else getattr(lora_cfg, key, default)
    return default if value is None else value


def lora_settings(lora_cfg: Any) -> dict[str, Any]:
    """``cfg.lora`` (or None) as a plain dict: rank, alpha, targets, scaling (appendix E's defaults)."""
    return {
        "rank": int(_lora_get(lora_cfg, "rank", 16)),
        "alpha": float(_lora_get(lora_cfg, "alpha", 16)),
        "targets": [str(t) for t in _lora_get(lora_cfg, "targets", ["all"])],
        "scaling": str(_lora_get(lora_cfg, "scaling", "rank")),
    }


def _last_blocks(model: nn.Module, n: int) -> list[nn.Module]:
    blocks = list(model.trf_blocks)
    return blocks[-n:] if n <= len(blocks) else blocks


def select_trainable(model: nn.Module, finetune: str, lora_cfg: Any = None) -> int:
    """Make the ``finetune`` part of a ``GPTModel`` trainable and freeze the rest; return the trainable count.

    ``lora_cfg``: ``cfg.lora`` (a mapping or object with ``rank``, ``alpha``, ``targets``,
    ``scaling``), used by ``finetune=lora`` only. A head tied to the token embedding trains with it.
    """
    if finetune not in FINETUNE_NAMES:
        raise ConfigError(f"finetune={finetune} is not a choice; choose one of {', '.join(FINETUNE_NAMES)}")
    if finetune == "lora":
        s = lora_settings(lora_cfg)
        return apply_lora(model, s["rank"], s["alpha"], s["targets"], s["scaling"])
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


# ---------------------------------------------------------------------------------------------
# The fine-tuned model file


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def save_finetuned(model: nn.Module, run_dir: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write ``run_dir/model.pth`` (adapters merged; book layout) and ``run_dir/model.json``; return model.pth.

    ``meta``: what using the model needs, e.g. ``{"kind": "classifier", "class_names": [...],
    "pooling": "last", "finetune": "lora", "lora": {...}}`` (``prompt_style`` for instruction
    models). ``model`` (the model's config, ``model.cfg``) and ``version`` are added. Both files are
    written atomically (beside, then renamed).
    """
    from gpt_lab.model.book_checkpoint import book_masks
    from gpt_lab.storage import atomic_write

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in merged_state_dict(model).items()}
    state.update(book_masks(state, model.cfg["context_length"]))
    path = run_dir / MODEL_FILE
    with atomic_write(path) as f:
        torch.save(state, f)
    model_cfg = dict(model.cfg)
    head, emb = state.get("out_head.weight"), state.get("tok_emb.weight")
    if model_cfg.get("tie_weights") and head is not None and emb is not None and not torch.equal(head, emb):
        model_cfg["tie_weights"] = False  # an adapter on the shared head, merged, unties it
    write_meta(model, run_dir, meta, model_cfg)
    return path


def write_meta(
    model: nn.Module, run_dir: str | Path, meta: Mapping[str, Any], model_cfg: Mapping[str, Any] | None = None
) -> Path:
    """Write ``run_dir/model.json``: ``meta`` plus the model's config (``model_cfg``, default ``model.cfg``)
    and the format version."""
    from gpt_lab.storage import write_text_atomic

    info = {"version": META_VERSION, "kind": "language_model", **_plain(dict(meta))}
    info["model"] = _plain(dict(model_cfg if model_cfg is not None else model.cfg))
    path = Path(run_dir) / META_FILE
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    return path


def read_meta(weights_file: str | Path) -> dict[str, Any] | None:
    """The ``model.json`` beside ``weights_file`` (a ``model.pth``), or None when there is none."""
    meta_path = Path(weights_file).with_name(META_FILE)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InitFromError(
            f"init_from={weights_file}: {meta_path.name} beside it is not readable JSON ({err})"
        ) from None
    if not isinstance(meta, dict):
        raise InitFromError(f"init_from={weights_file}: {meta_path} does not hold a JSON object")
    return meta


def load_finetuned(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(GPTModel, meta)`` from a fine-tuning run directory, its ``model.pth`` or its ``model.json``.

    The model is rebuilt from ``meta["model"]`` (the saved config, head size included) and the
    weights loaded with ``strict=True``; it comes back in eval mode on the CPU. Without a
    ``model.json`` this is any ``init_from`` file, with ``meta`` holding ``kind`` only.
    """
    from gpt_lab.model.weights import load_pretrained, model_from_weights, resolve_model_config

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MODEL_FILE
    elif path.name == META_FILE:
        path = path.with_name(MODEL_FILE)
    weights = load_pretrained(path)
    if not weights.meta or not isinstance(weights.meta.get("model"), Mapping):
        raise InitFromError(
            f"init_from={weights.path}: no {META_FILE} beside it, so this is not a fine-tuned model's file; "
            "load it with build_model(model_cfg, path) and the model config it was made with"
        )
    meta = dict(weights.meta)
    cfg = resolve_model_config(meta["model"], weights)
    model = model_from_weights(cfg, weights)
    model.eval()
    return model, meta
