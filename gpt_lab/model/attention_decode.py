"""Attention for one new token over a cache: the products that make GQA and MLA cheaper than MHA to decode.

Both compute what ``MultiHeadAttention.attend`` computes, for the case generation repeats every
token (one query position, every cached key visible), in the shapes that read the cache once:

- ``grouped_query_decode``: the query heads that share a key/value head form that head's queries
  (GQA), so the keys and values are neither repeated nor expanded;
- ``absorbed_latent_decode``: MLA without recomputing keys and values from the whole cached latent
  every token: the key up-projection folds into the query (``q_h W_UK_h`` is a query in latent
  space) and the value up-projection applies after attention (the weights sum latents, then
  ``W_UV_h`` maps the sum), so attention reads ``latent_dim`` numbers per cached token and head
  group instead of up-projecting ``2 n_heads head_dim`` of them. All heads read one latent, so
  attention is a single "head" whose queries are the heads; on the CPU one such head runs on one
  thread, so from ``SPLIT_MIN`` cached positions per thread the latent is cut into one part per thread,
  each part attended apart, and the parts' outputs combined by their softmax normalisers
  (log-sum-exp weights: the result is attention over the whole latent, up to float rounding). In
  float32 on the CPU a native kernel does this (``native.latent_attention``), PyTorch's elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_lab.model import native

SPLIT_MIN = 512  # cached positions per thread from which MLA's decoding step splits the latent (CPU)
# PyTorch's CPU attention, which also returns each query's log-sum-exp (None in a build without it).
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def grouped_query_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``q`` (b, h, 1, d) over ``k`` / ``v`` (b, kv_heads, s, d), every key visible -> (b, h, 1, d_v).

    Query head ``i`` uses key/value head ``i // (h // kv_heads)``, as ``repeat_interleave`` would pair them.
    """
    b, h, _, d = q.shape
    kv_heads = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(b, kv_heads, h // kv_heads, d), k, v)
    return out.reshape(b, h, 1, v.shape[-1])


def absorbed_latent_decode(
    q: torch.Tensor, latent: torch.Tensor, w_uk: torch.Tensor, w_uv: torch.Tensor
) -> torch.Tensor:
    """MLA for one query position over every cached latent, keys and values never materialised.

    ``q`` (b, h, 1, d); ``latent`` (b, s, latent_dim); ``w_uk`` / ``w_uv`` the up-projections' weights
    (h * d, latent_dim), without biases. Returns the attention output (b, h, 1, d), scaled by d ** -0.5
    as the keys' attention would be.
    """
    b, h, _, d = q.shape
    n = latent.shape[-1]
    # Queries in latent space: per head, (1, d) @ (d, n). Batched matmuls rather than einsum, whose
    # parsing costs more than these products for small models.
    q_latent = torch.matmul(q, w_uk.view(h, d, n))  # (b, h, 1, n)
    # One "head" whose h queries all read the same latent keys and values: (b, 1, h, latent_dim).
    ctx = latent_attention(q_latent.view(b, 1, h, n), latent, d**-0.5)
    return torch.matmul(ctx.view(b, h, 1, n), w_uv.view(h, d, n).transpose(1, 2))  # (b, h, 1, d)


def latent_attention(q: torch.Tensor, latent: torch.Tensor, scale: float) -> torch.Tensor:
    """``q`` (b, 1, h, n) over ``latent`` (b, s, n) as keys and values, every position visible -> (b, 1, h, n).

    float32 on the CPU: gpt_lab's native kernel where it builds (gpt_lab/model/native.py), which
    reads each latent row once for all the queries; else PyTorch's CPU attention, split the same way."""
    parts = min(torch.get_num_threads(), latent.shape[1] // SPLIT_MIN)
    if latent.device.type == "cpu" and latent.dtype == q.dtype == torch.float32:
        kernel = native.latent_kernel()
        if kernel is not None:
            return native.latent_attention(kernel, q, latent, scale, max(parts, 1))
    flash = _FLASH_CPU
    if parts < 2 or latent.device.type != "cpu" or flash is None:
        kv = latent.unsqueeze(1)
        return F.scaled_dot_product_attention(q, kv, kv, scale=scale)
    b, s, n = latent.shape
    size = s // parts
    main = latent[:, : parts * size].view(b, parts, size, n)  # part i: positions i * size ..
    out, lse = flash(q.expand(b, parts, -1, n), main, main, scale=scale)[:2]  # (b, parts, h, n), (b, parts, h)
    if parts * size < s:  # the last few positions (fewer than ``parts``) as one more part
        rest = latent[:, parts * size :].unsqueeze(1)
        out_r, lse_r = flash(q, rest, rest, scale=scale)[:2]
        out, lse = torch.cat((out, out_r), dim=1), torch.cat((lse, lse_r), dim=1)
    weights = torch.softmax(lse.float(), dim=1).unsqueeze(-1)  # each part's share of the normaliser
    return (out.float() * weights).sum(dim=1, keepdim=True).to(out.dtype)
