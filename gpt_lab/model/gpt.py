"""Chapter 4's GPT-2 model, with the book's names, computed with PyTorch's fused kernels; and the
architecture lab's composition of other parts (issue 25) behind config keys that default to the book's.

Modules are created in the book's order with PyTorch's default initialisation, so
``torch.manual_seed(123); GPTModel(cfg)`` gives exactly the book's weights. The math is the
book's (pre-LayerNorm blocks, biased variance, eps 1e-5, tanh GELU, causal multi-head attention)
but runs through ``F.layer_norm``, ``F.gelu`` and ``F.scaled_dot_product_attention`` (bf16
training steps of up to 256 tokens: ``attention_written_out``, faster there on the CPU).

The parts live beside this file, one job each: ``attention`` (MHA, GQA, sliding windows, QK-norm,
MLA), ``deltanet`` (Gated DeltaNet), ``feedforward`` (GELU, SwiGLU, MoE), ``norms`` (LayerNorm,
RMSNorm), ``rope`` (rotary positions) and ``cache`` (every attention kind's key/value cache). A
block composes them from ``cfg`` (``model.attention``, ``model.ffn``, ``model.norm``, ...; the keys
and their defaults: gpt_lab/config/architecture.py); the book's class names are importable from here.

Generation's extras are two optional arguments of ``GPTModel.forward``: a key/value cache
(``kv_cache``, from ``new_kv_cache``) and ``last_only`` (logits of the last position only). The CPU
decoding products live in ``gpt_lab.generation.decoding``, which ``gpt_lab.generation.sampling``
drives; these classes know nothing of them.

Pure PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gpt_lab.config.architecture import ARCH_DEFAULTS, check_architecture, head_dim_of, layer_kinds
from gpt_lab.model.attention import (
    EXPLICIT_ATTENTION_MAX_TOKENS,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    attention_written_out,
    make_attention,
)
from gpt_lab.model.cache import KVCache
from gpt_lab.model.deltanet import GatedDeltaNet
from gpt_lab.model.feedforward import GELU, FeedForward, MoEFeedForward, SwiGLU, make_feedforward
from gpt_lab.model.norms import LayerNorm, RMSNorm, make_norm
from gpt_lab.model.rope import RotaryEmbedding

__all__ = [
    "BOOK_KEYS",
    "EXPLICIT_ATTENTION_MAX_TOKENS",
    "GELU",
    "DummyGPTModel",
    "DummyLayerNorm",
    "DummyTransformerBlock",
    "FeedForward",
    "GPTModel",
    "GatedDeltaNet",
    "KVCache",
    "LayerNorm",
    "MoEFeedForward",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "attention_written_out",
    "model_config_dict",
]

BOOK_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def model_config_dict(cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict, from the book's dict, an OmegaConf node or a dataclass.

    Fills the optional keys: ``drop_rate_emb/attn/shortcut`` default to ``drop_rate``,
    ``tie_weights`` to False, ``num_classes`` to None (the vocabulary head), ``causal_mask`` to True
    and the architecture keys to ``ARCH_DEFAULTS`` (the book's parts); raises ``ValueError`` naming a bad key.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping):
        out = {str(k): cfg[k] for k in cfg}
    else:
        raise TypeError(f"model config must be a dict, an OmegaConf node or a dataclass, got {type(cfg).__name__}")
    missing = [k for k in BOOK_KEYS if k not in out]
    if missing:
        raise KeyError(f"model config is missing {', '.join(missing)}; the book's keys are {', '.join(BOOK_KEYS)}")
    for where in ("emb", "attn", "shortcut"):
        if out.get(f"drop_rate_{where}") is None:
            out[f"drop_rate_{where}"] = out["drop_rate"]
    out["tie_weights"] = bool(out.get("tie_weights") or False)
    # Chapter 6: a classification head Linear(emb_dim, num_classes) (with bias) replaces the vocabulary head.
    out["num_classes"] = None if out.get("num_classes") is None else int(out["num_classes"])
    # The bonus table's "no causal mask" row: every position attends to every other (off = the book's model).
    out["causal_mask"] = True if out.get("causal_mask") is None else bool(out["causal_mask"])
    # The architecture lab's keys (issue 25): absent or null, the book's choice.
    for key, default in ARCH_DEFAULTS.items():
        if out.get(key) is None:
            out[key] = default
        elif isinstance(out[key], Mapping):  # an OmegaConf node: plain values, for model.json
            out[key] = {str(k): v for k, v in out[key].items()}
        elif isinstance(out[key], Sequence) and not isinstance(out[key], str):
            out[key] = list(out[key])
    if out["head_dim"] is None and out["emb_dim"] % out["n_heads"] != 0:
        raise ValueError(f"model.n_heads={out['n_heads']} must divide model.emb_dim={out['emb_dim']}")
    problems = check_architecture(out)
    if problems:
        raise ValueError("; ".join(problems))
    return out


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + att(norm1(x))``, then ``x + ff(norm2(x))``; ``kind``: full, sliding or deltanet.

    ``model.post_norms`` (Gemma 3) adds a norm after each sub-layer, before its shortcut:
    ``x + post_att_norm(att(norm1(x)))``, then ``x + post_ff_norm(ff(norm2(x)))``.
    """

    def __init__(self, cfg: Mapping[str, Any], kind: str = "full") -> None:
        super().__init__()
        cfg = {**ARCH_DEFAULTS, **cfg}
        self.att = make_attention(cfg, kind)
        self.ff = make_feedforward(cfg)
        self.norm1 = make_norm(cfg, cfg["emb_dim"])
        self.norm2 = make_norm(cfg, cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg.get("drop_rate_shortcut", cfg["drop_rate"]))
        self.post_norms = bool(cfg["post_norms"])
        if self.post_norms:  # after the book's modules: norms draw no random numbers anyway
            self.post_att_norm = make_norm(cfg, cfg["emb_dim"])
            self.post_ff_norm = make_norm(cfg, cfg["emb_dim"])

    def forward(
        self, x: torch.Tensor, cache: Any = None, start: int = 0, rope: RotaryEmbedding | None = None
    ) -> torch.Tensor:
        """``cache``: this block's entry of a ``KVCache``; ``start``: the position of ``x[:, 0]``."""
        if self.post_norms:
            x = x + self.drop_shortcut(self.post_att_norm(self.att(self.norm1(x), cache, start, rope)))
            return x + self.drop_shortcut(self.post_ff_norm(self.ff(self.norm2(x))))
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, start, rope))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """Chapter 4's GPT model. ``cfg``: the book's dict (or an OmegaConf node / dataclass).

    Extra keys: ``drop_rate_emb``, ``drop_rate_attn``, ``drop_rate_shortcut`` (each defaults to
    ``drop_rate``), ``tie_weights`` (``out_head.weight`` is ``tok_emb.weight``), ``num_classes``
    (the output head is ``Linear(emb_dim, num_classes)`` with a bias: a chapter-6 classifier, as
    saved; training one builds the vocabulary head and replaces it, as the book does),
    ``causal_mask`` (False: attention sees every position) and the architecture lab's keys
    (gpt_lab/config/architecture.py: ``attention``, ``window``, ``ffn``, ``norm``, ``qk_norm``,
    ``pos_emb`` and their settings). ``pos_emb=rope`` has no ``pos_emb`` module; its rotation
    tables are the non-persistent buffers of ``rope``.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        cfg = model_config_dict(cfg)
        self.cfg = cfg
        self.context_length = cfg["context_length"]
        # Creation order is the book's: it fixes which random numbers each weight receives.
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        if cfg["pos_emb"] == "learned":
            self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate_emb"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg, kind) for kind in layer_kinds(cfg)])
        self.final_norm = make_norm(cfg, cfg["emb_dim"])
        if cfg["num_classes"] is None:
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        else:
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["num_classes"])
        if cfg["tie_weights"]:
            self.out_head.weight = self.tok_emb.weight
        self.rope = None
        self.rope_local = None  # model.rope_local_base: the sliding layers' own RoPE (Gemma 3)
        self.layer_kinds = layer_kinds(cfg)
        if cfg["pos_emb"] == "rope":  # no random draws: the weights above are the same with or without it
            self.rope = RotaryEmbedding(head_dim_of(cfg), cfg["context_length"], cfg["rope_base"], cfg["rope_scaling"])
            if cfg["rope_local_base"] is not None and "sliding" in self.layer_kinds:
                self.rope_local = RotaryEmbedding(head_dim_of(cfg), cfg["context_length"], cfg["rope_local_base"])
        # model.emb_scale (Gemma 3): token embeddings times sqrt(emb_dim), rounded to the activations' dtype.
        self.emb_scale = float(cfg["emb_dim"]) ** 0.5 if cfg["emb_scale"] else None
        if cfg["init_std"]:  # the families' initial weights (model.init_std); null: the book's
            self.init_normal_(cfg["init_std"])

    @torch.no_grad()
    def init_normal_(self, std: float) -> None:
        """Every Linear and Embedding weight from normal(0, ``std``), biases 0; norms keep their values."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()

    def forward(
        self,
        in_idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        last_only: bool = False,
    ) -> torch.Tensor:
        """``in_idx``: (b, t) token ids → logits (b, t, vocab_size).

        With ``kv_cache``, ``in_idx`` continues the cached sequence and the cache is advanced.
        ``last_only=True`` computes the logits of the last position only, (b, 1, vocab_size): all
        that greedy generation needs, and the output head is a third of the work per token.
        """
        if in_idx.dim() != 2:
            raise ValueError(f"GPTModel expects token ids of shape (batch, seq_len), got {tuple(in_idx.shape)}")
        t = in_idx.shape[1]
        start = kv_cache.pos if kv_cache is not None else 0
        if start + t > self.context_length:
            raise ValueError(
                f"sequence of {start + t} tokens is longer than model.context_length={self.context_length}; "
                f"crop the input to its last {self.context_length} tokens"
            )
        x = self.tok_emb(in_idx)  # (b, t, emb_dim)
        if self.emb_scale is not None:
            x = x * torch.tensor(self.emb_scale, dtype=x.dtype)
        if self.rope is None:
            x = x + self.pos_emb(torch.arange(start, start + t, device=in_idx.device))
        x = self.drop_emb(x)
        for i, block in enumerate(self.trf_blocks):
            rope = self.rope_local if self.rope_local is not None and self.layer_kinds[i] == "sliding" else self.rope
            x = block(x, kv_cache.layers[i] if kv_cache is not None else None, start, rope)
        if kv_cache is not None:
            kv_cache.pos = start + t
        if last_only:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens (gpt_lab.model.cache).

        ``dtype`` / ``device`` default to the model's floating parameters' (the first one's: the
        token embedding; never a quantized head's). ``device="meta"`` sizes it without memory.
        """
        max_len = min(max_len or self.context_length, self.context_length)
        weight = next(p for p in self.parameters() if p.is_floating_point())
        dtype = dtype or weight.dtype
        device = torch.device(device) if device is not None else weight.device
        layers = [block.att.new_cache(batch_size, max_len, dtype, device) for block in self.trf_blocks]
        return KVCache(layers, max_len)


class DummyTransformerBlock(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DummyLayerNorm(nn.Module):
    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DummyGPTModel(nn.Module):
    """The chapter's placeholder model: embeddings and output head around identity blocks."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[DummyTransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = DummyLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        _, t = in_idx.shape
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(t, device=in_idx.device))
        x = self.trf_blocks(self.drop_emb(x))
        return self.out_head(self.final_norm(x))
