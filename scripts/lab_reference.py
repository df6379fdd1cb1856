"""The bonus scripts' own key/value cache, written out as a reference for scripts/bench_lab.py.

Chapter 4's bonus folders (the book's repository, ch04/03-07, ``gpt_with_kv_*.py``) each give their
attention a cache of their own: every layer keeps a tensor that grows by ``torch.cat`` with each
new token (GQA: only the key/value heads, repeated to every query head at attention time; MLA: the
latent, from which keys and values are recomputed; a sliding window: cropped to its last
``window`` positions after the concatenation), and attention is written out as
``softmax(q k^T / sqrt(head_dim) + mask) v``. This module runs a gpt_lab ``GPTModel``'s own weights
that way, so the benchmark compares the two methods of caching on the same model and checks that
both give the same greedy tokens. It is written from that description, not copied; it supports the
groups' parts (mha, gqa, mla, sliding windows, learned positions or RoPE, any norm or feed-forward),
not Gated DeltaNet (its cache is a fixed state either way) nor the families' extra flags.
"""

from __future__ import annotations

from typing import Any

import torch


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``q`` (b, h, t, d), ``k`` / ``v`` (b, h, s, d); ``mask`` (t, s) True where a query may look."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the "rotate half" layout: pairs (i, i + d/2) turn by their angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def _heads(p: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    b, t, _ = p.shape
    return p.view(b, t, heads, head_dim).transpose(1, 2)  # (b, heads, t, head_dim)


def attention_with_cat_cache(
    att: Any, x: torch.Tensor, cache: dict[str, torch.Tensor], start: int, rope: Any
) -> torch.Tensor:
    """One layer's attention over ``x`` (b, t, emb) at positions ``start ..``, its cache grown by ``torch.cat``."""
    b, t, _ = x.shape
    h, d = att.num_heads, att.head_dim
    q = _heads(att.W_query(x), h, d)
    if hasattr(att, "W_DKV"):  # MLA: cache the latent, recompute every key and value from it
        latent = att.W_DKV(x)
        cache["latent"] = latent if "latent" not in cache else torch.cat((cache["latent"], latent), dim=1)
        k, v = _heads(att.W_UK(cache["latent"]), h, d), _heads(att.W_UV(cache["latent"]), h, d)
        if att.qk_norm:
            q, k = att.q_norm(q), att.k_norm(k)
        if rope is not None:
            q = _rotate(q, rope.cos[start : start + t], rope.sin[start : start + t])
            k = _rotate(k, rope.cos[: k.shape[2]], rope.sin[: k.shape[2]])
    else:
        kv_heads = att.n_kv_heads
        k, v = _heads(att.W_key(x), kv_heads, d), _heads(att.W_value(x), kv_heads, d)
        if att.qk_norm:
            q, k = att.q_norm(q), att.k_norm(k)
        if rope is not None:
            cos, sin = rope.cos[start : start + t], rope.sin[start : start + t]
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if "k" in cache:
            k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
        # A sliding window keeps its last `window` positions (the new token included) after the concatenation.
        cache["k"], cache["v"] = (k, v) if att.window is None else (k[:, :, -att.window :], v[:, :, -att.window :])
        if kv_heads != h:  # GQA: each key/value head serves h // kv_heads query heads
            k, v = k.repeat_interleave(h // kv_heads, dim=1), v.repeat_interleave(h // kv_heads, dim=1)
    s = k.shape[2]
    key_pos = torch.arange(start + t - s, start + t, device=x.device)
    query_pos = torch.arange(start, start + t, device=x.device)[:, None]
    mask = key_pos <= query_pos
    if att.window is not None:
        mask &= key_pos > query_pos - att.window
    ctx = explicit_attention(q, k, v, mask)
    return att.out_proj(ctx.transpose(1, 2).reshape(b, t, h * d))


def forward_with_cat_cache(
    model: Any, ids: torch.Tensor, caches: list[dict[str, torch.Tensor]], start: int
) -> torch.Tensor:
    """The logits of the last position of ``ids`` (b, t), which continue the cached sequence at ``start``."""
    t = ids.shape[1]
    x = model.tok_emb(ids)
    if model.rope is None:
        x = x + model.pos_emb(torch.arange(start, start + t, device=ids.device))
    for block, cache in zip(model.trf_blocks, caches, strict=True):
        x = x + attention_with_cat_cache(block.att, block.norm1(x), cache, start, model.rope)
        x = x + block.ff(block.norm2(x))
    return model.out_head(model.final_norm(x[:, -1:]))[:, -1]


@torch.inference_mode()
def cat_cache_generate(model: Any, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of ``idx`` (b, n) by ``max_new_tokens`` tokens, the bonus scripts' way.

    The prompt plus the new tokens must fit ``model.context_length`` (the scripts do not slide).
    """
    if idx.shape[1] + max_new_tokens > model.context_length:
        raise ValueError("cat_cache_generate: the prompt plus the new tokens exceed model.context_length")
    if any(not hasattr(block.att, "W_query") or hasattr(block.att, "W_beta") for block in model.trf_blocks):
        raise ValueError("cat_cache_generate: Gated DeltaNet layers keep a state, not a growing cache")
    caches: list[dict[str, torch.Tensor]] = [{} for _ in model.trf_blocks]
    out, ids, start = [idx], idx, 0
    for _ in range(max_new_tokens):
        logits = forward_with_cat_cache(model, ids, caches, start)
        start += ids.shape[1]
        ids = logits.argmax(dim=-1, keepdim=True)
        out.append(ids)
    return torch.cat(out, dim=1)
