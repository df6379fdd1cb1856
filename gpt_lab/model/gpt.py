"""Chapter 4's GPT-2 model, with the book's names, computed with PyTorch's fused kernels.

Modules are created in the book's order with PyTorch's default initialisation, so
``torch.manual_seed(123); GPTModel(cfg)`` gives exactly the book's weights. The math is the
book's (pre-LayerNorm blocks, biased variance, eps 1e-5, tanh GELU, causal multi-head attention)
but runs through ``F.layer_norm``, ``F.gelu`` and ``F.scaled_dot_product_attention`` (bf16
training steps of up to 256 tokens: ``attention_written_out``, faster there on the CPU).

Generation's extras are two optional arguments of ``GPTModel.forward``: a key/value cache
(``kv_cache``) and ``last_only`` (logits of the last position only). The CPU decoding products live
in ``gpt_lab.generation.decoding``, which ``gpt_lab.generation.sampling`` drives; these classes know nothing of them.

Pure PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BOOK_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def model_config_dict(cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict, from the book's dict, an OmegaConf node or a dataclass.

    Fills the optional keys: ``drop_rate_emb/attn/shortcut`` default to ``drop_rate``,
    ``tie_weights`` to False, ``num_classes`` to None (the vocabulary head) and ``causal_mask`` to True.
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
    if out["emb_dim"] % out["n_heads"] != 0:
        raise ValueError(f"model.n_heads={out['n_heads']} must divide model.emb_dim={out['emb_dim']}")
    return out


class LayerNorm(nn.Module):
    """Layer norm over the last dimension with the book's ``scale``/``shift`` names (biased variance)."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    """GELU with the tanh approximation GPT-2 was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class KVCache:
    """Pre-allocated keys and values of every layer, filled left to right.

    ``k`` and ``v`` are ``(n_layers, b, n_heads, max_len, head_dim)``; ``pos`` is how many
    positions hold valid entries.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (n_layers, batch_size, n_heads, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention (chapter 3), through ``scaled_dot_product_attention``.

    The book keeps a ``mask`` buffer; SDPA's ``is_causal`` makes it unnecessary, so it is not
    stored, and a book checkpoint's ``mask`` entries are dropped on load.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(f"model.n_heads={num_heads} must divide model.emb_dim={d_out}")
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.causal = causal  # False: no mask at all (the chapter's "no causal mask" experiment)
        self.register_load_state_dict_pre_hook(_drop_book_mask)

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """``x``: (b, t, d_in). ``kv``: this layer's cache buffers, ``start``: position of ``x[:, 0]``."""
        b, t, _ = x.shape
        # (b, n_heads, t, head_dim)
        q, k, v = (
            p.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.W_query(x), self.W_key(x), self.W_value(x))
        )
        if kv is not None:
            k_buf, v_buf = kv
            k_buf[:, :, start : start + t] = k
            v_buf[:, :, start : start + t] = v
            k, v = k_buf[:, :, : start + t], v_buf[:, :, : start + t]
        mask = None
        if start > 0 and t > 1 and self.causal:
            # New queries sit at positions start..start+t-1 and may see every key up to their own.
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout_p = self.dropout.p if self.training else 0.0
        if kv is None and _explicit_attention_pays(q):
            ctx = attention_written_out(q, k, v, self.causal, dropout_p)
        else:
            ctx = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout_p,
                # bool(): sizes are tensors under torch.jit.trace (graph)
                is_causal=bool(self.causal and start == 0 and t > 1),
            )
        ctx = ctx.transpose(1, 2).reshape(b, t, self.d_out)  # (b, t, d_out)
        return self.out_proj(ctx)


# Training in bf16 on the CPU (trainer=cpu_bf16), PyTorch's fused attention is slow to back-propagate
# through short sequences: forward + backward at batch 8, 12 heads of 64 took 2.9x as long as
# attention_written_out at 128 tokens, 1.2x at 256 and 0.75x at 384 (`python scripts/bench_finetune.py
# --attention`; docs/performance.md). Up to this length training steps take the written-out path;
# fp32, inference and longer sequences keep the fused kernel.
EXPLICIT_ATTENTION_MAX_TOKENS = 256


def _explicit_attention_pays(q: torch.Tensor) -> bool:
    return (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and q.requires_grad
        and q.shape[-2] <= EXPLICIT_ATTENTION_MAX_TOKENS
    )


def attention_written_out(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    dropout_p: float = 0.0,
    dropout: Callable[[torch.Tensor, float], torch.Tensor] = F.dropout,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` with ``dropout`` on the weights: chapter 3's attention.

    ``q``: (b, n_heads, t, head_dim), ``k`` / ``v``: (b, n_heads, s, head_dim); ``scale`` defaults to
    1 / sqrt(head_dim); ``causal``: query ``i`` sees keys ``0..i`` (SDPA's ``is_causal``). The mask
    (0, or -inf above the diagonal) is added by the scores' own product (``baddbmm``), so neither it
    nor the scale costs a pass. The softmax runs in the scores' dtype (bf16 under autocast: PyTorch's
    kernel computes in float32 and rounds once).
    """
    b, h, t, d = q.shape
    s = k.shape[-2]
    mask = torch.full((t, s), float("-inf") if causal else 0.0, dtype=q.dtype, device=q.device).triu(1)
    scores = torch.baddbmm(
        mask,
        q.reshape(b * h, t, d),
        k.reshape(b * h, s, d).transpose(1, 2),
        alpha=d**-0.5 if scale is None else scale,
    )
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p)
    return (weights @ v.reshape(b * h, s, v.shape[-1])).view(b, h, t, v.shape[-1])


def _drop_book_mask(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + "mask", None)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"],
            d_out=cfg["emb_dim"],
            context_length=cfg["context_length"],
            num_heads=cfg["n_heads"],
            dropout=cfg.get("drop_rate_attn", cfg["drop_rate"]),
            qkv_bias=cfg["qkv_bias"],
            causal=cfg.get("causal_mask", True),
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg.get("drop_rate_shortcut", cfg["drop_rate"]))

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv, start))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """Chapter 4's GPT model. ``cfg``: the book's dict (or an OmegaConf node / dataclass).

    Extra keys: ``drop_rate_emb``, ``drop_rate_attn``, ``drop_rate_shortcut`` (each defaults to
    ``drop_rate``), ``tie_weights`` (``out_head.weight`` is ``tok_emb.weight``), ``num_classes``
    (the output head is ``Linear(emb_dim, num_classes)`` with a bias: a chapter-6 classifier, as
    saved; training one builds the vocabulary head and replaces it, as the book does) and
    ``causal_mask`` (False: attention sees every position).
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        cfg = model_config_dict(cfg)
        self.cfg = cfg
        self.context_length = cfg["context_length"]
        # Creation order is the book's: it fixes which random numbers each weight receives.
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate_emb"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        if cfg["num_classes"] is None:
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        else:
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["num_classes"])
        if cfg["tie_weights"]:
            self.out_head.weight = self.tok_emb.weight

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
        pos = torch.arange(start, start + t, device=in_idx.device)
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(pos))  # (b, t, emb_dim)
        for i, block in enumerate(self.trf_blocks):
            kv = (kv_cache.k[i], kv_cache.v[i]) if kv_cache is not None else None
            x = block(x, kv, start)
        if kv_cache is not None:
            kv_cache.pos = start + t
        if last_only:
            x = x[:, -1:]
        return self.out_head(self.final_norm(x))

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty key/value cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        max_len = min(max_len or self.context_length, self.context_length)
        att = self.trf_blocks[0].att
        return KVCache(
            len(self.trf_blocks),
            batch_size,
            att.num_heads,
            max_len,
            att.head_dim,
            self.out_head.weight.dtype,
            self.out_head.weight.device,
        )


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
