"""Attention parts: the book's causal multi-head attention (chapter 3) grown into grouped-query
attention (``n_kv_heads``), sliding windows, QK-norm and RoPE, and multi-head latent attention (MLA).

Names are the book's (``W_query``, ``W_key``, ``W_value``, ``out_proj``); MLA's keys and values come
from one latent: ``W_DKV`` (emb -> latent_dim), ``W_UK`` / ``W_UV`` (latent -> n_heads * head_dim).
QK-norm is an RMSNorm over each head's features (``q_norm``, ``k_norm``), before RoPE.

Each attention's ``forward(x, cache, start, rope)``: ``x`` (b, t, d_in); ``cache`` the block's entry
of a ``KVCache`` (gpt_lab.model.cache) or None; ``start`` the position of ``x[:, 0]``; ``rope`` the
model's ``RotaryEmbedding`` or None (learned positions). ``new_cache`` allocates the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config.architecture import ARCH_DEFAULTS, head_dim_of
from gpt_lab.model.attention_decode import absorbed_latent_decode, grouped_query_decode
from gpt_lab.model.cache import FullKV, LatentKV, RingKV
from gpt_lab.model.calls import caller
from gpt_lab.model.deltanet import GatedDeltaNet
from gpt_lab.model.norms import RMSNorm
from gpt_lab.model.rope import RotaryEmbedding, apply_rope

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


def _project(
    x: torch.Tensor, layers: tuple[nn.Module, ...], run: Callable[[nn.Module], Callable[..., Any]]
) -> Sequence[torch.Tensor]:
    """Each layer applied to ``x`` (called as ``run``, gpt_lab/model/calls.py, says). Layers of one class that
    defines ``forward_group(layers, x)`` compute together (``Int8Linear``: the input's digits once for
    query, key and value)."""
    group = getattr(type(layers[0]), "forward_group", None)
    if group is not None and all(type(layer) is type(layers[0]) for layer in layers):
        return group(layers, x)
    return [run(layer)(x) for layer in layers]


def _drop_book_mask(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + "mask", None)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention (chapter 3), through ``scaled_dot_product_attention``.

    The book keeps a ``mask`` buffer; SDPA's ``is_causal`` makes it unnecessary, so it is not
    stored, and a book checkpoint's ``mask`` entries are dropped on load. Beyond the book (all off
    by default): ``n_kv_heads`` key/value heads shared by groups of query heads (GQA), ``head_dim``
    apart from ``d_out / num_heads``, ``window`` (each query sees its last ``window`` positions,
    itself included), ``qk_norm`` and RoPE (the ``rope`` argument of ``forward``).
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
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        norm_offset: bool = False,
        out_bias: bool = True,
        query_scale: float | None = None,
    ) -> None:
        super().__init__()
        inner = self._sizes(d_out, num_heads, head_dim, n_kv_heads, context_length, window)
        kv_inner = self.n_kv_heads * self.head_dim
        self.W_query = nn.Linear(d_in, inner, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, kv_inner, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, kv_inner, bias=qkv_bias)
        self.out_proj = nn.Linear(inner, d_out, bias=out_bias)
        self._rest(dropout, causal, qk_norm, norm_eps, norm_offset, query_scale)

    def _sizes(
        self, d_out: int, num_heads: int, head_dim: int | None, n_kv_heads: int | None, context: int, window: int | None
    ) -> int:
        """Set the head counts and sizes; return the width of all query heads."""
        if head_dim is None and d_out % num_heads != 0:
            raise ValueError(f"model.n_heads={num_heads} must divide model.emb_dim={d_out}")
        self.d_out = d_out
        self.num_heads = num_heads
        self.n_kv_heads = n_kv_heads or num_heads
        self.head_dim = head_dim or d_out // num_heads
        self.context_length = context
        self.window = window
        return num_heads * self.head_dim

    def _rest(
        self,
        dropout: float,
        causal: bool,
        qk_norm: bool,
        norm_eps: float,
        norm_offset: bool = False,
        query_scale: float | None = None,
    ) -> None:
        """The parts after the projections (none draws random numbers). ``norm_offset``: (1 + w) QK-norms
        (Gemma 3); ``query_scale``: the scores' scale (None: SDPA's head_dim ** -0.5)."""
        self.dropout = nn.Dropout(dropout)
        self.causal = causal  # False: no mask at all (the chapter's "no causal mask" experiment)
        self.query_scale = query_scale
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, norm_eps, norm_offset)
            self.k_norm = RMSNorm(self.head_dim, norm_eps, norm_offset)
        self.qk_norm = qk_norm
        self.register_load_state_dict_pre_hook(_drop_book_mask)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> FullKV:
        if self.window is not None:
            return RingKV(batch_size, self.n_kv_heads, min(self.window, max_len), self.head_dim, dtype, device)
        return FullKV(batch_size, self.n_kv_heads, max_len, self.head_dim, dtype, device)

    def _heads(self, p: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = p.shape
        return p.view(b, t, heads, self.head_dim).transpose(1, 2)  # (b, heads, t, head_dim)

    def forward(
        self, x: torch.Tensor, cache: FullKV | None = None, start: int = 0, rope: RotaryEmbedding | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        run = caller()  # under no-grad inference, the parts' forward straight (gpt_lab/model/calls.py)
        q, k, v = _project(x, (self.W_query, self.W_key, self.W_value), run)
        q, k, v = self._heads(q, self.num_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)
        if self.qk_norm:
            q, k = run(self.q_norm)(q), run(self.k_norm)(k)
        if rope is not None:
            cos, sin = run(rope)(start, t)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        positions = None
        if cache is not None:
            k, v, positions = cache.update(k, v, start)
        ctx = self.attend(q, k, v, start, positions)
        return run(self.out_proj)(ctx.transpose(1, 2).reshape(b, t, -1))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, positions: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of ``q`` (b, heads, t, head_dim) at positions ``start ..`` over ``k`` / ``v``.

        ``positions``: each key's position (a ring buffer's keys are out of order), or None when the keys are
        positions ``0, 1, ..`` in order (no cache, a full cache) or all visible (one cached token).
        """
        t, s = q.shape[2], k.shape[2]
        dropout_p = self.dropout.p if self.training else 0.0
        window = self.window
        plain = positions is None and (window is None or start + t <= window)
        if not self.causal or (t == 1 and positions is None):
            mask, is_causal = None, False
        elif plain and start == 0:
            mask, is_causal = None, True
        else:
            key_pos = positions if positions is not None else torch.arange(s, device=q.device)
            query_pos = torch.arange(start, start + t, device=q.device)[:, None]
            mask = key_pos <= query_pos
            if window is not None:
                mask &= key_pos > query_pos - window
            is_causal = False
        if mask is None and not is_causal and t == 1 and dropout_p == 0 and k.shape[1] != q.shape[1]:
            return grouped_query_decode(q, k, v)  # a generation step of GQA: no repeated keys and values
        if mask is None and s == t and _explicit_attention_pays(q):
            if k.shape[1] != q.shape[1]:
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
            return attention_written_out(q, k, v, is_causal, dropout_p, scale=self.query_scale)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=bool(is_causal),  # bool(): sizes are tensors under torch.jit.trace (graph)
            enable_gqa=self.n_kv_heads != self.num_heads,
            scale=self.query_scale,
        )


class MultiHeadLatentAttention(MultiHeadAttention):
    """Multi-head latent attention (the book's MLA bonus, without decoupled RoPE): keys and values are
    up-projected from one ``latent_dim``-wide latent per position, the only thing the cache keeps."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        latent_dim: int,
        qkv_bias: bool = False,
        causal: bool = True,
        *,
        head_dim: int | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ) -> None:
        nn.Module.__init__(self)
        inner = self._sizes(d_out, num_heads, head_dim, None, context_length, None)
        self.latent_dim = latent_dim
        self.W_query = nn.Linear(d_in, inner, bias=qkv_bias)
        self.W_DKV = nn.Linear(d_in, latent_dim, bias=qkv_bias)
        self.W_UK = nn.Linear(latent_dim, inner, bias=False)
        self.W_UV = nn.Linear(latent_dim, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_out)
        self._rest(dropout, causal, qk_norm, norm_eps)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LatentKV:
        return LatentKV(batch_size, max_len, self.latent_dim, dtype, device)

    def _absorbable(self, rope: RotaryEmbedding | None) -> bool:
        """Whether the up-projections may fold into the query and the output (attention_decode.py): not under
        RoPE or QK-norm (they act on the keys themselves), nor with adapters or dropout in the way."""
        if rope is not None or self.qk_norm or self.training:
            return False
        w_uk, w_uv = self.W_UK, self.W_UV
        plain = type(w_uk) is nn.Linear and type(w_uv) is nn.Linear
        return plain and w_uk.weight.is_floating_point() and w_uv.weight.is_floating_point()

    def forward(
        self, x: torch.Tensor, cache: LatentKV | None = None, start: int = 0, rope: RotaryEmbedding | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        run = caller()
        q, latent = _project(x, (self.W_query, self.W_DKV), run)  # latent: (b, t, latent_dim)
        if cache is not None:
            latent = cache.update(latent, start)  # (b, start + t, latent_dim)
        s = latent.shape[1]
        q = self._heads(q, self.num_heads)
        if cache is not None and t == 1 and self._absorbable(rope):  # a generation step: keys and values unbuilt
            ctx = absorbed_latent_decode(q, latent, self.W_UK.weight, self.W_UV.weight)
            return run(self.out_proj)(ctx.transpose(1, 2).reshape(b, t, -1))
        k, v = self._heads(run(self.W_UK)(latent), self.num_heads), self._heads(run(self.W_UV)(latent), self.num_heads)
        if self.qk_norm:
            q, k = run(self.q_norm)(q), run(self.k_norm)(k)
        if rope is not None:
            q = apply_rope(q, *run(rope)(start, t))
            k = apply_rope(k, *run(rope)(0, s))
        ctx = self.attend(q, k, v, start, None)
        return run(self.out_proj)(ctx.transpose(1, 2).reshape(b, t, -1))


def make_attention(cfg: Mapping[str, Any], kind: str) -> nn.Module:
    """One block's attention: ``kind`` is the block's entry of ``layer_kinds`` (full, sliding, deltanet)."""
    get = lambda k: cfg.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    common: dict[str, Any] = {
        "d_in": cfg["emb_dim"],
        "d_out": cfg["emb_dim"],
        "context_length": cfg["context_length"],
        "num_heads": cfg["n_heads"],
        "dropout": cfg.get("drop_rate_attn", cfg["drop_rate"]),
        "qkv_bias": cfg["qkv_bias"],
        "causal": cfg.get("causal_mask", True),
    }
    extra = {"head_dim": head_dim_of(cfg), "qk_norm": bool(get("qk_norm")), "norm_eps": float(get("norm_eps"))}
    # The family flags that shape mha / gqa (Llama, Qwen3, Gemma 3): (1 + w) QK-norms, out_proj's bias, the scale.
    flags = {
        "norm_offset": bool(get("norm_offset")),
        "out_bias": bool(get("attn_out_bias")),
        "query_scale": None if get("query_scale") is None else float(get("query_scale")),
    }
    if kind == "deltanet":
        return GatedDeltaNet(
            cfg["emb_dim"], cfg["emb_dim"], cfg["n_heads"], head_dim_of(cfg), cfg["qkv_bias"], float(get("norm_eps"))
        )
    if get("attention") == "mla":
        return MultiHeadLatentAttention(latent_dim=int(cfg["latent_dim"]), **common, **extra)
    n_kv = get("n_kv_heads") if get("attention") == "gqa" else None
    window = int(get("sliding_window")) if kind == "sliding" else None
    return MultiHeadAttention(**common, n_kv_heads=n_kv, window=window, **extra, **flags)
