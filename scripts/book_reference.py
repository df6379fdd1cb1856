"""A second computation of chapter 4's model: the explicit formulas, in the book's layout.

Written out in plain tensor math (mean/variance LayerNorm, the tanh GELU formula, softmax
attention over a stored causal ``mask`` buffer, and the book's KV-cache variant) so tests can
compare gpt_lab's fused-kernel model with it, weight for weight, and ``scripts/bench.py`` can time
it as the code to beat (it lives beside the benchmarks, outside the package: the tests import it as
``scripts.book_reference``, the benchmarks as ``book_reference``). Its state dict has the book's keys,
``att.mask`` buffers included.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# The book's GPT_CONFIG_124M.
GPT_CONFIG_124M = {
    "vocab_size": 50257,
    "context_length": 1024,
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


def layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)  # biased variance, as GPT-2
    return scale * (x - mean) / torch.sqrt(var + eps) + shift


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


class RefLayerNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.scale, self.shift)


class RefGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x)


class RefAttention(nn.Module):
    """Masked softmax attention over the book's ``mask`` buffer; with ``use_cache``, the book's
    KV-cache variant (keys and values grown by concatenation, one call per new token)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d, ctx = cfg["emb_dim"], cfg["context_length"]
        self.n_heads = cfg["n_heads"]
        self.W_query = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.W_key = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.W_value = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.out_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg["drop_rate"])
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1))
        self.cache_k: torch.Tensor | None = None
        self.cache_v: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        hd = d // self.n_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, hd).transpose(1, 2)  # (b, h, t, hd)

        q, k, v = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        if use_cache:
            if self.cache_k is not None:
                k = torch.cat((self.cache_k, k), dim=2)
                v = torch.cat((self.cache_v, v), dim=2)
            self.cache_k, self.cache_v = k, v
        n_k = k.shape[2]
        scores = q @ k.transpose(2, 3)  # (b, h, t, n_k)
        scores = scores.masked_fill(self.mask.bool()[n_k - t : n_k, :n_k], float("-inf"))
        weights = self.dropout(torch.softmax(scores / hd**0.5, dim=-1))
        ctx = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(ctx)


class RefFeedForward(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = cfg["emb_dim"]
        self.layers = nn.Sequential(nn.Linear(d, 4 * d), RefGELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class RefBlock(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.att = RefAttention(cfg)
        self.ff = RefFeedForward(cfg)
        self.norm1 = RefLayerNorm(cfg["emb_dim"])
        self.norm2 = RefLayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), use_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class RefGPT(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[RefBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RefLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.pos = 0  # tokens in the KV cache

    def forward(self, idx: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        t = idx.shape[1]
        start = self.pos if use_cache else 0
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(torch.arange(start, start + t, device=idx.device)))
        for block in self.trf_blocks:
            x = block(x, use_cache)
        self.pos = start + t if use_cache else 0
        return self.out_head(self.final_norm(x))

    def reset_cache(self) -> None:
        self.pos = 0
        for block in self.trf_blocks:
            block.att.cache_k = block.att.cache_v = None


def ref_greedy(model: nn.Module, idx: torch.Tensor, n: int, context_size: int) -> torch.Tensor:
    """Greedy decoding by full recomputation of the cropped window, one token at a time."""
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -context_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def ref_kv_greedy(model: RefGPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with the book's KV-cache variant: the prompt once, then one token per call."""
    model.reset_cache()
    with torch.no_grad():
        logits = model(idx, use_cache=True)
        for _ in range(n):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat((idx, nxt), dim=1)
            logits = model(nxt, use_cache=True)
    model.reset_cache()
    return idx
