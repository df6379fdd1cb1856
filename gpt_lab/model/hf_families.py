"""Llama 3, Qwen3 (dense and MoE) and Gemma 3 from Hugging Face directories: their ``config.json``
in ``cfg.model``'s keys, and the names of their tensors in ours.

A family is not a code path here: ``config.json``'s ``model_type`` picks the family's facts
(QK-norm or not, four norms a block, (1 + w) norms, ...), which become the model's named flags
(docs/families.md); the name map is then written from those flags, so the same table serves
every family. The weights are read lazily (gpt_lab.model.hf_files). Facts used, from each
family's configuration and modelling code in transformers:

- Llama: SwiGLU ``mlp.{gate,up,down}_proj``; RoPE scaling ``rope_type: llama3`` (``factor``,
  ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).
- Qwen3: explicit ``head_dim``; RMSNorm of each head's queries and keys (``self_attn.q_norm``,
  ``k_norm``) before RoPE. Qwen3-MoE: a router ``mlp.gate`` and ``mlp.experts.{e}.*_proj``, top-k of
  the softmax, renormalised over the k when ``norm_topk_prob`` (``model.moe_renormalize``; Qwen3-30B-A3B does).
- Gemma 3: QK-norm too; norms before and after attention and feed-forward
  (``input_layernorm``, ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
  ``post_feedforward_layernorm``); RMSNorm scales by (1 + weight); embeddings times √hidden_size;
  queries scaled by ``query_pre_attn_scalar ** -0.5``; ``layer_types`` (5 sliding : 1 full) with
  ``sliding_window``; RoPE base ``rope_local_base_freq`` on sliding layers, ``rope_theta`` on full.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpt_lab.errors import InitFromError

# model_type -> the family's facts that config.json does not spell out as numbers.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"qk_norm": False, "gemma": False, "moe": False},
    "qwen3": {"qk_norm": True, "gemma": False, "moe": False},
    "qwen3_moe": {"qk_norm": True, "gemma": False, "moe": True},
    "gemma3_text": {"qk_norm": True, "gemma": True, "moe": False},
    "gemma3": {"qk_norm": True, "gemma": True, "moe": False},  # the multimodal wrapper: its text_config
}
SUPPORTED = ("gpt2", *FAMILIES)
# The chat format each family's instruction-tuned models were trained with (gpt_lab.generation.prompt_styles).
CHAT_STYLES = {"llama": "llama3", "qwen3": "qwen3", "qwen3_moe": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
# Where the text model's tensors sit (transformers 5 and 4 layouts of the multimodal Gemma 3).
PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def _fail(source: str, what: str) -> InitFromError:
    return InitFromError(f"init_from={source}: {what}")


def model_type_of(hf: Mapping[str, Any], source: str) -> str:
    """``config.json``'s ``model_type``, refused (with the supported list) when gpt_lab has no map for it."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        arch = ", ".join(hf.get("architectures") or []) or "none named"
        raise _fail(
            source,
            f"config.json has model_type={kind!r} (architectures: {arch}), which gpt_lab cannot load; "
            f"supported model types: {', '.join(SUPPORTED)}",
        )
    return str(kind)


def _rope(hf: Mapping[str, Any], layer_type: str = "full_attention") -> tuple[float, dict[str, Any] | None]:
    """(base, scaling) from transformers 5's ``rope_parameters`` or the older ``rope_theta`` / ``rope_scaling``."""
    params = hf.get("rope_parameters") or {}
    if layer_type in params:  # per layer type (Gemma 3)
        params = params[layer_type] or {}
    base = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    return float(base), scaling


def _rope_scaling(scaling: Mapping[str, Any] | None, source: str) -> dict[str, Any] | None:
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise _fail(source, f"config.json's RoPE scaling {kind!r} is not supported; gpt_lab has Llama 3's ('llama3')")
    return {
        "type": "llama3",
        "factor": float(scaling["factor"]),
        "low_freq_factor": float(scaling["low_freq_factor"]),
        "high_freq_factor": float(scaling["high_freq_factor"]),
        "original_context_length": int(scaling["original_max_position_embeddings"]),
    }


def _sliding_pattern(hf: Mapping[str, Any], n_layers: int) -> str | list[int]:
    """Full-attention layers as the lab's ``sliding_pattern``: "5:1" style when regular, else their indices."""
    types = hf.get("layer_types")
    if types is None:
        every = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
        types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layers)]
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    every = full[0] + 1 if full else 0
    if full and full == list(range(every - 1, n_layers, every)):
        return f"{every - 1}:1"
    return full


def family_config(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``config.json`` (a dict) of a supported family in ``cfg.model``'s keys (SPEC / DESIGN's lab keys).

    Raises ``InitFromError`` for a model type or a feature gpt_lab does not have (RoPE scaling other
    than Llama 3's, logit soft-capping, Qwen3's sliding layers, MoE with dense layers between).
    """
    kind = model_type_of(hf, source)
    facts = FAMILIES[kind]
    if "text_config" in hf:
        hf = {**hf["text_config"], "tie_word_embeddings": hf.get("tie_word_embeddings", True)}
    n_layers = int(hf["num_hidden_layers"])
    n_heads = int(hf["num_attention_heads"])
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    if act not in ACTIVATIONS:
        raise _fail(source, f"config.json's activation {act!r} is not supported; gpt_lab has {', '.join(ACTIVATIONS)}")
    if hf.get("mlp_bias"):
        raise _fail(source, "config.json has mlp_bias=true; gpt_lab's gated feed-forward has no biases")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise _fail(source, f"config.json sets {key}={hf[key]}; gpt_lab has no logit soft-capping")
    base, scaling = _rope(hf)
    bias = bool(hf.get("attention_bias", False))
    out: dict[str, Any] = {
        "vocab_size": int(hf["vocab_size"]),
        "context_length": int(hf["max_position_embeddings"]),
        "emb_dim": int(hf["hidden_size"]),
        "n_heads": n_heads,
        "n_layers": n_layers,
        "drop_rate": 0.0,
        "qkv_bias": bias,
        "attn_out_bias": bias,
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "attention": "gqa",
        "n_kv_heads": int(hf.get("num_key_value_heads") or n_heads),
        "head_dim": int(hf.get("head_dim") or int(hf["hidden_size"]) // n_heads),
        "ffn": "swiglu",
        "hidden_dim": int(hf["intermediate_size"]),
        "ffn_activation": ACTIVATIONS[act],
        "norm": "rmsnorm",
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "qk_norm": facts["qk_norm"],
        "pos_emb": "rope",
        "rope_base": base,
        "rope_scaling": _rope_scaling(scaling, source),
        "window": "full",
        "rope_local_base": None,
        "emb_scale": False,
        "query_scale": None,
        "norm_offset": False,
        "post_norms": False,
    }
    if hf.get("use_sliding_window"):
        raise _fail(source, "config.json has use_sliding_window=true; gpt_lab loads Qwen3 with full attention only")
    if facts["moe"]:
        if int(hf.get("decoder_sparse_step", 1)) != 1 or hf.get("mlp_only_layers"):
            raise _fail(source, "config.json mixes dense and MoE layers (decoder_sparse_step / mlp_only_layers)")
        out.update(
            ffn="moe",
            num_experts=int(hf.get("num_experts") or hf["num_local_experts"]),
            experts_per_token=int(hf["num_experts_per_tok"]),
            moe_hidden_dim=int(hf["moe_intermediate_size"]),
            moe_renormalize=bool(hf.get("norm_topk_prob", False)),  # transformers' default: false
        )
    if facts["gemma"]:
        local_base, _ = _rope(hf, "sliding_attention")
        out.update(
            window="sliding",
            sliding_window=int(hf["sliding_window"]),
            sliding_pattern=_sliding_pattern(hf, n_layers),
            rope_local_base=float(hf.get("rope_local_base_freq") or local_base),
            emb_scale=True,
            query_scale=float(hf["query_pre_attn_scalar"]) ** -0.5,
            norm_offset=True,
            post_norms=True,
        )
    return out


# ---------------------------------------------------------------------------------------------
# Tensor names: one table, written out per block from the config's flags.


def block_name_map(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(HF suffix, our suffix) of one block's tensors for ``cfg`` (``cfg.model`` keys)."""
    pairs = [
        ("self_attn.q_proj", "att.W_query"),
        ("self_attn.k_proj", "att.W_key"),
        ("self_attn.v_proj", "att.W_value"),
        ("self_attn.o_proj", "att.out_proj"),
        ("input_layernorm", "norm1"),
    ]
    if cfg.get("qk_norm"):
        pairs += [("self_attn.q_norm", "att.q_norm"), ("self_attn.k_norm", "att.k_norm")]
    if cfg.get("post_norms"):  # Gemma 3: norms around both sub-layers
        pairs += [
            ("post_attention_layernorm", "post_att_norm"),
            ("pre_feedforward_layernorm", "norm2"),
            ("post_feedforward_layernorm", "post_ff_norm"),
        ]
    else:  # Llama, Qwen3: transformers' "post-attention" norm is the one before the feed-forward
        pairs.append(("post_attention_layernorm", "norm2"))
    gated = (("gate_proj", "fc1"), ("up_proj", "fc2"), ("down_proj", "fc3"))
    if cfg.get("ffn") == "moe":
        pairs.append(("mlp.gate", "ff.gate"))
        for e in range(int(cfg["num_experts"])):
            pairs += [(f"mlp.experts.{e}.{hf}", f"ff.{ours}.{e}") for hf, ours in gated]
    else:
        pairs += [(f"mlp.{hf}", f"ff.{ours}") for hf, ours in gated]
    return pairs


def name_map(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Every HF tensor name (``model.*`` layout, ``lm_head`` when untied) → our parameter name."""
    out = {"model.embed_tokens.weight": "tok_emb.weight", "model.norm.weight": "final_norm.weight"}
    biased = {"att.W_query", "att.W_key", "att.W_value"} if cfg.get("qkv_bias") else set()
    if cfg.get("attn_out_bias"):
        biased.add("att.out_proj")
    for i in range(int(cfg["n_layers"])):
        for hf, ours in block_name_map(cfg):
            out[f"model.layers.{i}.{hf}.weight"] = f"trf_blocks.{i}.{ours}.weight"
            if ours in biased:
                out[f"model.layers.{i}.{hf}.bias"] = f"trf_blocks.{i}.{ours}.bias"
    if not cfg.get("tie_weights"):
        out["lm_head.weight"] = "out_head.weight"
    return out


def canonical_name(name: str) -> str:
    """A text model's tensor name in the ``model.*`` layout (the multimodal Gemma 3's prefixes removed)."""
    if name.startswith("lm_head."):
        return name
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return "model." + name.removeprefix(prefix)
    return name


def _scalar(query_scale: float | None, head_dim: int) -> int | float:
    """Gemma 3's ``query_pre_attn_scalar`` (an integer in transformers' schema) from ``query_scale``."""
    if query_scale is None:
        return head_dim
    value = float(query_scale) ** -2
    return round(value) if abs(value - round(value)) < 1e-6 * value else value


def family_hf_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg.model`` (a family's keys) as a transformers ``config.json`` (the inverse of ``family_config``)."""
    gemma = bool(cfg.get("post_norms"))
    moe = cfg.get("ffn") == "moe"
    kind = "gemma3_text" if gemma else "qwen3_moe" if moe else "qwen3" if cfg.get("qk_norm") else "llama"
    arch = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
    n_heads = int(cfg["n_heads"])
    head_dim = int(cfg.get("head_dim") or int(cfg["emb_dim"]) // n_heads)
    out: dict[str, Any] = {
        "architectures": [arch.get(kind, "Gemma3ForCausalLM")],
        "model_type": kind,
        "vocab_size": int(cfg["vocab_size"]),
        "max_position_embeddings": int(cfg["context_length"]),
        "hidden_size": int(cfg["emb_dim"]),
        "intermediate_size": int(cfg["hidden_dim"]),
        "num_hidden_layers": int(cfg["n_layers"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(cfg.get("n_kv_heads") or n_heads),
        "head_dim": head_dim,
        "rms_norm_eps": float(cfg["norm_eps"]),
        "rope_theta": float(cfg["rope_base"]),
        "attention_bias": bool(cfg.get("qkv_bias")),
        "tie_word_embeddings": bool(cfg.get("tie_weights")),
        "initializer_range": float(cfg.get("init_std") or 0.02),
        "torch_dtype": "float32",
    }
    if cfg.get("rope_scaling"):
        s = cfg["rope_scaling"]
        out["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s["factor"],
            "low_freq_factor": s["low_freq_factor"],
            "high_freq_factor": s["high_freq_factor"],
            "original_max_position_embeddings": s["original_context_length"],
        }
    if gemma:
        pattern = cfg.get("sliding_pattern")
        n = int(cfg["n_layers"])
        if isinstance(pattern, str):
            every = int(pattern.split(":")[0]) + 1
            full = list(range(every - 1, n, every))
        else:
            full = list(pattern or [])
        out.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=_scalar(cfg.get("query_scale"), head_dim),
            sliding_window=int(cfg["sliding_window"]),
            layer_types=["full_attention" if i in full else "sliding_attention" for i in range(n)],
            rope_local_base_freq=float(cfg.get("rope_local_base") or cfg["rope_base"]),
        )
    else:
        out["hidden_act"] = "silu"
    if moe:
        out.update(
            num_experts=int(cfg["num_experts"]),
            num_experts_per_tok=int(cfg["experts_per_token"]),
            moe_intermediate_size=int(cfg["moe_hidden_dim"]),
            norm_topk_prob=bool(cfg.get("moe_renormalize", True)),
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    return out
