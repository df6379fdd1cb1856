"""Hugging Face's GPT-2 layout ↔ the book's.

Hugging Face's GPT-2 (``GPT2LMHeadModel`` / ``GPT2Model``) differs from the book's model only in
layout: its ``Conv1D`` layers store weights as (in, out), the transpose of ``nn.Linear``'s
(out, in); query, key and value are one fused ``c_attn`` of width 3 * emb_dim; ``lm_head`` is
tied to ``wte``; ``attn.bias`` / ``attn.masked_bias`` are causal-mask buffers, not weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gpt_lab.errors import InitFromError

# The one key map between the book's layout and Hugging Face's GPT-2, per transformer block (book
# name → HF name): Conv1D layers that map one to one onto nn.Linear (transposed), the LayerNorms,
# and the three projections fused, in this order, into c_attn.
HF_LINEARS = (("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"), ("ff.layers.2", "mlp.c_proj"))
HF_NORMS = (("norm1", "ln_1"), ("norm2", "ln_2"))
HF_QKV = ("att.W_query", "att.W_key", "att.W_value")


def read_hf_config(directory: Path) -> dict[str, Any]:
    """Checked facts from a Hugging Face ``config.json`` next to the weights (empty if there is none)."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        return {}
    hf = json.loads(config_file.read_text())
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InitFromError(
            f"init_from: {config_file} uses activation_function={act!r}; GPTModel's GELU is the tanh "
            "approximation GPT-2 was trained with ('gelu_new')"
        )
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise InitFromError(f"init_from: {config_file} has layer_norm_epsilon={eps}; GPTModel's LayerNorm uses 1e-5")
    # Sizes show in the tensors' shapes; the head count does not, so it is checked from here.
    return {"n_heads": hf["n_head"]} if "n_head" in hf else {}


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """A Hugging Face GPT-2 state dict (``transformer.`` prefix optional) in the book's layout.

    ``Conv1D`` weights (in, out) become ``nn.Linear`` weights (out, in); the fused ``c_attn``
    (emb_dim, 3 * emb_dim) splits into ``W_query``, ``W_key``, ``W_value``. ``lm_head.weight``,
    when present, becomes ``out_head.weight``; otherwise the head is ``wte`` (GPT-2 ties them).
    """
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    # Causal-mask buffers that older transformers versions saved with the weights.
    hf = {k: v for k, v in hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        try:
            return hf.pop(key)
        except KeyError:
            raise InitFromError(f"init_from={source}: Hugging Face GPT-2 weights without {key}") from None

    out["tok_emb.weight"] = take("wte.weight")
    out["pos_emb.weight"] = take("wpe.weight")
    n_layers = len({k.split(".")[1] for k in hf if k.startswith("h.")})
    for i in range(n_layers):
        h, b = f"h.{i}.", f"trf_blocks.{i}."
        qkv_w = take(h + "attn.c_attn.weight")  # (emb, 3 * emb), Conv1D layout
        qkv_b = take(h + "attn.c_attn.bias")  # (3 * emb,)
        if qkv_w.shape[1] % 3 != 0:
            raise InitFromError(f"init_from={source}: {h}attn.c_attn.weight has shape {tuple(qkv_w.shape)}")
        for name, w, bias in zip(HF_QKV, qkv_w.chunk(3, dim=1), qkv_b.chunk(3, dim=0), strict=True):
            out[f"{b}{name}.weight"] = w.t().contiguous()
            out[f"{b}{name}.bias"] = bias.contiguous()
        for ours, theirs in HF_LINEARS:
            out[f"{b}{ours}.weight"] = take(f"{h}{theirs}.weight").t().contiguous()
            out[f"{b}{ours}.bias"] = take(f"{h}{theirs}.bias")
        for ours, theirs in HF_NORMS:
            out[f"{b}{ours}.scale"] = take(f"{h}{theirs}.weight")
            out[f"{b}{ours}.shift"] = take(f"{h}{theirs}.bias")
    out["final_norm.scale"] = take("ln_f.weight")
    out["final_norm.shift"] = take("ln_f.bias")
    out["out_head.weight"] = hf.pop("lm_head.weight", out["tok_emb.weight"])
    if hf:
        raise InitFromError(f"init_from={source}: unexpected Hugging Face GPT-2 entries {', '.join(sorted(hf)[:8])}")
    return out


def export_hf_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A book-layout state dict in Hugging Face ``GPT2LMHeadModel``'s layout (the inverse of
    ``convert_hf_state_dict``): ``transformer.*`` keys and ``lm_head.weight``.

    Without query/key/value biases (the book's default) ``c_attn``'s bias is zeros, which computes
    the same. Load it into a model made with ``tie_word_embeddings=False`` unless ``out_head``
    is the token embedding. Transposed weights are views of ``state``'s tensors (no copy of a
    large model's weights; ``load_state_dict`` copies them): make them contiguous before saving.
    """
    out = {"transformer.wte.weight": state["tok_emb.weight"], "transformer.wpe.weight": state["pos_emb.weight"]}
    for i in range(n_blocks(state)):
        b, h = f"trf_blocks.{i}.", f"transformer.h.{i}."
        weights = [state[f"{b}{name}.weight"] for name in HF_QKV]  # each (emb, emb), nn.Linear layout
        biases = [state.get(f"{b}{name}.bias", torch.zeros(len(w))) for name, w in zip(HF_QKV, weights, strict=True)]
        out[h + "attn.c_attn.weight"] = torch.cat(weights).t()  # (emb, 3 * emb), Conv1D layout
        out[h + "attn.c_attn.bias"] = torch.cat(biases)
        for ours, theirs in HF_LINEARS:
            out[f"{h}{theirs}.weight"] = state[f"{b}{ours}.weight"].t()
            out[f"{h}{theirs}.bias"] = state[f"{b}{ours}.bias"]
        for ours, theirs in HF_NORMS:
            out[f"{h}{theirs}.weight"] = state[f"{b}{ours}.scale"]
            out[f"{h}{theirs}.bias"] = state[f"{b}{ours}.shift"]
    out["transformer.ln_f.weight"] = state["final_norm.scale"]
    out["transformer.ln_f.bias"] = state["final_norm.shift"]
    out["lm_head.weight"] = state["out_head.weight"]
    return out


def n_blocks(state: Mapping[str, torch.Tensor]) -> int:
    return 1 + max((block_index(k) for k in state), default=-1)


def block_index(key: str) -> int:
    """``i`` of ``trf_blocks.i.*``; -1 for keys outside the blocks."""
    return int(key.split(".")[1]) if key.startswith("trf_blocks.") else -1
