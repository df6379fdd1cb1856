"""Gated DeltaNet (the book's linear-attention bonus; Qwen3-Next's linear layers), without the short convolution.

Per head, a state ``S`` (head_dim_k, head_dim_v) replaces the growing key/value cache. For each token,
with ``q``, ``k`` L2-normalised (``q`` also scaled by head_dim ** -0.5), ``beta = sigmoid(W_beta x)``
and the decay ``a = exp(g)``, ``g = -exp(A_log) * softplus(W_alpha x + dt_bias)``::

    S <- a * S                              # forget
    S <- S + k (beta * (v - S^T k))^T       # the delta rule: write v where k points, replacing what was there
    o  = S^T q

and the block's output is ``out_proj(RMSNorm(o) * silu(W_gate x))``. ``recurrent_gated_delta`` runs
this token by token (generation: one step per token); ``chunked_gated_delta`` computes the same in
chunks (training, prompts): within a chunk the delta rule is a unit lower-triangular system solved
at once, between chunks the state carries over.

Parameter names: ``W_query``, ``W_key``, ``W_value``, ``W_gate`` (output gate), ``W_beta`` (write
strength), ``W_alpha`` (decay), ``dt_bias``, ``A_log``, ``norm`` (RMSNorm over head_dim), ``out_proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.model.cache import DeltaState
from gpt_lab.model.norms import RMSNorm

CHUNK_SIZE = 64


def recurrent_gated_delta(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token by token. ``q``, ``k``: (b, h, t, dk); ``v``: (b, h, t, dv); ``beta``, ``g``: (b, h, t);
    ``state``: (b, h, dk, dv). Returns the outputs (b, h, t, dv) and the final state."""
    outs = []
    for i in range(q.shape[2]):
        state = state * g[:, :, i, None, None].exp()
        remembered = torch.einsum("bhk,bhkv->bhv", k[:, :, i], state)
        delta = beta[:, :, i, None] * (v[:, :, i] - remembered)
        state = state + k[:, :, i, :, None] * delta[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, i], state))
    return torch.stack(outs, dim=2), state


def chunked_gated_delta(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``recurrent_gated_delta``'s result, a chunk of tokens at a time.

    Within a chunk, with ``G`` the cumulative log decay and ``S0`` the state at its start, the
    written values ``u_j = beta_j (v_j - e^{G_j} S0^T k_j - sum_{m<j} e^{G_j - G_m} (k_j . k_m) u_m)``
    form a unit lower-triangular system; then ``o_i = e^{G_i} S0^T q_i + sum_{j<=i} e^{G_i - G_j}
    (q_i . k_j) u_j`` and ``S = e^{G_L} S0 + sum_j e^{G_L - G_j} k_j u_j^T``.
    """
    t = q.shape[2]
    outs = []
    for c0 in range(0, t, chunk_size):
        qc, kc, vc = q[:, :, c0 : c0 + chunk_size], k[:, :, c0 : c0 + chunk_size], v[:, :, c0 : c0 + chunk_size]
        bc, G = beta[:, :, c0 : c0 + chunk_size], g[:, :, c0 : c0 + chunk_size].cumsum(-1)  # (b, h, L)
        n = qc.shape[2]
        lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        decay = (G[..., :, None] - G[..., None, :]).masked_fill(~lower, float("-inf")).exp()  # e^{G_i - G_j}, j <= i
        strict = (bc[..., :, None] * decay * (kc @ kc.transpose(-1, -2))).tril(-1)
        eye = torch.eye(n, dtype=q.dtype, device=q.device)
        rhs = bc[..., None] * (vc - G.exp()[..., None] * (kc @ state))
        u = torch.linalg.solve_triangular(eye + strict, rhs, upper=False, unitriangular=True)  # (b, h, L, dv)
        outs.append(G.exp()[..., None] * (qc @ state) + ((qc @ kc.transpose(-1, -2)) * decay) @ u)
        to_end = (G[..., -1:] - G).exp()  # e^{G_L - G_j}
        state = G[..., -1, None, None].exp() * state + (kc * to_end[..., None]).transpose(-1, -2) @ u
    return torch.cat(outs, dim=2), state


class GatedDeltaNet(nn.Module):
    """A Gated DeltaNet token mixer in place of attention; its cache is a fixed-size state."""

    def __init__(
        self, d_in: int, d_out: int, num_heads: int, head_dim: int, qkv_bias: bool = False, norm_eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.d_out = num_heads, head_dim, d_out
        inner = num_heads * head_dim
        self.W_query = nn.Linear(d_in, inner, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, inner, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, inner, bias=qkv_bias)
        self.W_gate = nn.Linear(d_in, inner, bias=False)
        self.W_beta = nn.Linear(d_in, num_heads, bias=False)
        self.W_alpha = nn.Linear(d_in, num_heads, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(num_heads))
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())  # decay rates e^A_log in [1, 16]
        self.norm = RMSNorm(head_dim, norm_eps)
        self.out_proj = nn.Linear(inner, d_out)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> DeltaState:
        return DeltaState(batch_size, self.num_heads, self.head_dim, self.head_dim, dtype, device)

    def forward(
        self, x: torch.Tensor, cache: DeltaState | None = None, start: int = 0, rope: object = None
    ) -> torch.Tensor:
        """``x`` (b, t, d_in) -> (b, t, d_out); ``rope`` is ignored (the recurrence orders the tokens)."""
        b, t, _ = x.shape
        heads = lambda p: p.view(b, t, self.num_heads, -1).transpose(1, 2).float()  # noqa: E731
        q = F.normalize(heads(self.W_query(x)), dim=-1) * self.head_dim**-0.5
        k = F.normalize(heads(self.W_key(x)), dim=-1)
        v = heads(self.W_value(x))
        beta = torch.sigmoid(self.W_beta(x).float()).transpose(1, 2)  # (b, h, t)
        g = (-self.A_log.float().exp() * F.softplus(self.W_alpha(x).float() + self.dt_bias.float())).transpose(1, 2)
        state = cache.state if cache is not None else x.new_zeros(b, self.num_heads, self.head_dim, self.head_dim)
        state = state.float()
        if t == 1:
            out, state = recurrent_gated_delta(q, k, v, beta, g, state)
        else:
            out, state = chunked_gated_delta(q, k, v, beta, g, state)
        if cache is not None:
            cache.state.copy_(state)
        out = self.norm(out.transpose(1, 2).to(x.dtype))  # (b, t, h, dv)
        gate = self.W_gate(x).view(b, t, self.num_heads, self.head_dim)
        return self.out_proj((out * F.silu(gate)).reshape(b, t, -1))
