"""The fine-tuned model a run leaves: ``save_finetuned`` writes ``model.pth`` (adapters merged; the
book's layout) and ``model.json`` beside it (``gpt_lab.model.model_file``); ``load_finetuned``
rebuilds the model from both.

Pure PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_lab.errors import InitFromError
from gpt_lab.model.book_checkpoint import book_masks
from gpt_lab.model.lora import lora_layers, merge_lora_state, merged_state_dict
from gpt_lab.model.model_file import META_FILE, META_VERSION, MODEL_FILE, plain_settings
from gpt_lab.model.weights import load_pretrained, model_from_weights, resolve_model_config
from gpt_lab.storage import atomic_write, write_text_atomic


def save_finetuned(
    model: nn.Module, run_dir: str | Path, meta: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
) -> Path:
    """Write ``run_dir/model.pth`` (adapters merged; book layout) and ``run_dir/model.json``; return model.pth.

    ``meta``: what using the model needs, e.g. ``{"kind": "classifier", "class_names": [...],
    "pooling": "last", "finetune": "lora", "lora": {...}}`` (``prompt_style`` for instruction
    models). ``model`` (the model's config, ``model.cfg``) and ``version`` are added. Both files are
    written atomically (beside, then renamed). ``state``: the model's whole state dict (adapters
    not merged) when ``model``'s own parameters are shards (FSDP: gpt_lab.training.fsdp.gathered_model_state).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = merged_state_dict(model)
    else:
        scales = {layer.scale for _, layer in lora_layers(model)}
        state = merge_lora_state(state, scales.pop()) if len(scales) == 1 else dict(state)
    state = {k: v.detach().cpu() for k, v in state.items()}
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
    and the format version (chapter 5's runs too: ``init_from=<run dir>`` then builds their model)."""
    info = {"version": META_VERSION, "kind": "language_model", **plain_settings(dict(meta))}
    info["model"] = plain_settings(dict(model_cfg if model_cfg is not None else model.cfg))
    path = Path(run_dir) / META_FILE
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    return path


def load_finetuned(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(GPTModel, meta)`` from a fine-tuning run directory, its ``model.pth`` or its ``model.json``.

    The model is rebuilt from ``meta["model"]`` (the saved config, head size included) and the
    weights loaded with ``strict=True``; it comes back in eval mode on the CPU. Without a
    ``model.json`` this is any ``init_from`` file, with ``meta`` holding ``kind`` only.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / MODEL_FILE
    elif path.name == META_FILE:
        path = path.with_name(MODEL_FILE)
    weights = load_pretrained(path)
    if not weights.meta or not isinstance(weights.meta.get("model"), Mapping):
        raise InitFromError(
            f"init_from={weights.path}: no {META_FILE} beside it, so this is not a fine-tuned model's file; "
            "give init_from the run directory that wrote it (it holds model.json), or the model settings it was "
            "made with (model=..., model.<key>=...)"
        )
    meta = dict(weights.meta)
    cfg = resolve_model_config(meta["model"], weights)
    model = model_from_weights(cfg, weights)
    model.eval()
    return model, meta
