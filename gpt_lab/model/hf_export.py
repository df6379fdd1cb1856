"""Any gpt_lab model as a Hugging Face directory: ``config.json``, ``model.safetensors`` and the tokenizer's files.

GPT-2 (the book's architecture) is written in transformers' ``GPT2LMHeadModel`` layout
(gpt_lab.model.hf's ``export_hf_state_dict``) with GPT-2's own tokenizer files (``vocab.json`` and
``merges.txt``: the ``encoder.json`` and ``vocab.bpe`` gpt_lab's tokenizer is built from). Llama 3,
Qwen3 and Gemma 3 models are written in their family's layout (the name map of
gpt_lab.model.hf_families, read backwards) with the tokenizer files of the directory they came
from. Every file is written beside its final name and renamed (gpt_lab.storage), so a directory
never holds a half-written file; a directory that already holds a model is refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gpt_lab.errors import UserError
from gpt_lab.hf_tokenizer import TOKENIZER_FILES
from gpt_lab.model.hf import export_hf_state_dict
from gpt_lab.model.hf_families import family_hf_config, name_map
from gpt_lab.storage import write_text_atomic

WRITTEN = ("config.json", "model.safetensors")


class ExportError(UserError):
    """The model cannot be written in a Hugging Face layout, or the directory is not free."""


def is_gpt2(cfg: Mapping[str, Any]) -> bool:
    """True for the book's architecture (learned positions, LayerNorm, GELU feed-forward)."""
    return cfg.get("pos_emb", "learned") == "learned" and cfg.get("norm", "layernorm") == "layernorm"


def gpt2_hf_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg.model`` of a GPT-2 as transformers' ``GPT2Config`` (``config.json``)."""
    drop = float(cfg.get("drop_rate") or 0.0)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": int(cfg["vocab_size"]),
        "n_positions": int(cfg["context_length"]),
        "n_embd": int(cfg["emb_dim"]),
        "n_layer": int(cfg["n_layers"]),
        "n_head": int(cfg["n_heads"]),
        "n_inner": None,  # 4 * n_embd, the book's
        "activation_function": "gelu_new",  # the tanh approximation
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": drop,
        "embd_pdrop": drop,
        "attn_pdrop": drop,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": bool(cfg.get("tie_weights")),
        "torch_dtype": "float32",
    }


def _check_exportable(cfg: Mapping[str, Any]) -> None:
    if cfg.get("num_classes"):
        raise ExportError(
            "task=export writes language models; this one has chapter 6's classification head "
            f"({cfg['num_classes']} classes), which Hugging Face's causal-LM classes cannot hold"
        )
    if not cfg.get("causal_mask", True):
        raise ExportError("task=export: a model trained without the causal mask (causal_mask=off) has no HF equivalent")
    if not is_gpt2(cfg) and cfg.get("attention", "gqa") not in ("mha", "gqa"):
        raise ExportError(
            f"task=export: model.attention={cfg.get('attention')} has no Hugging Face family gpt_lab writes; "
            "export writes GPT-2 and Llama 3 / Qwen3 / Gemma 3 layouts (attention=mha or gqa)"
        )


def hf_state_dict(cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in the HF layout of ``cfg``'s family, contiguous (safetensors stores no views);
    a tied head is left out (transformers ties it again from ``tie_word_embeddings``)."""
    if is_gpt2(cfg):
        out = export_hf_state_dict(state)
        if cfg.get("tie_weights"):
            out.pop("lm_head.weight")
    else:
        out = {hf: state[ours] for hf, ours in name_map(cfg).items()}
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in out.items()}


def _gpt2_tokenizer_files(directory: Path) -> None:
    from gpt_lab.tokenizer import bpe_files, get_tokenizer

    get_tokenizer()  # checks the files against the published hashes
    vocab_bpe, encoder_json = bpe_files()
    shutil.copyfile(encoder_json, directory / "vocab.json")
    shutil.copyfile(vocab_bpe, directory / "merges.txt")
    write_text_atomic(
        directory / "tokenizer_config.json",
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
                "model_max_length": 1024,
            },
            indent=2,
        ),
    )


def write_hf_directory(
    cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], directory: Path, tokenizer_dir: Path | None = None
) -> list[Path]:
    """Write ``state`` (our names; ``cfg``: the model's config dict) as a Hugging Face directory.

    ``tokenizer_dir``: where a family's tokenizer files are (the ``init_from`` directory); GPT-2's
    come with gpt_lab. Returns the files written. Raises ``ExportError`` before writing anything
    when the model has no HF equivalent or ``directory`` already holds a model.
    """
    from safetensors.torch import save_file

    _check_exportable(cfg)
    taken = [name for name in WRITTEN if (directory / name).exists()]
    if taken:
        raise ExportError(
            f"export.dir={directory} already holds {', '.join(taken)}; choose an empty or new directory "
            "(task=export never overwrites a model)"
        )
    gpt2 = is_gpt2(cfg)
    copied = [] if gpt2 or tokenizer_dir is None else [tokenizer_dir / n for n in TOKENIZER_FILES]
    copied = [f for f in copied if f.is_file()]
    if not gpt2 and not any(f.name == "tokenizer.json" for f in copied):
        raise ExportError(
            f"task=export: no tokenizer.json to write beside the weights (looked in {tokenizer_dir}); export a "
            "model loaded from a Hugging Face directory that has one"
        )
    tensors = hf_state_dict(cfg, state)
    config = gpt2_hf_config(cfg) if gpt2 else family_hf_config(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "model.safetensors.partial"
    save_file(tensors, str(partial), metadata={"format": "pt"})
    partial.replace(directory / "model.safetensors")  # complete under its name, or not there
    write_text_atomic(directory / "config.json", json.dumps(config, indent=2))
    if gpt2:
        _gpt2_tokenizer_files(directory)
    for file in copied:
        shutil.copyfile(file, directory / file.name)
    return sorted(p for p in directory.iterdir() if p.is_file())
