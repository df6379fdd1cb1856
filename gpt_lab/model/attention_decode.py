"""Attention for one new token over a cache: the products that make GQA and MLA cheaper than MHA to decode.

Both compute what ``MultiHeadAttention.attend`` computes, for the case generation repeats every
token (one query position, every cached key visible), in the shapes that read the cache once:

- ``grouped_query_decode``: the query heads that share a key/value head form that head's queries
  (GQA), so the keys and values are neither repeated nor expanded;
- ``absorbed_latent_decode``: MLA without recomputing keys and values from the whole cached latent
  every token: the key up-projection folds into the query (``q_h W_UK_h`` is a query in latent
  space) and the value up-projection applies after attention (the weights sum latents, then
  ``W_UV_h`` maps the sum), so attention reads ``latent_dim`` numbers per cached token and head
  group instead of up-projecting ``2 n_heads head_dim`` of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    kv = latent.unsqueeze(1)
    ctx = F.scaled_dot_product_attention(q_latent.view(b, 1, h, n), kv, kv, scale=d**-0.5)
    return torch.matmul(ctx.view(b, h, 1, n), w_uv.view(h, d, n).transpose(1, 2))  # (b, h, 1, d)
