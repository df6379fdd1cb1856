"""Feed-forward parts: the book's GELU network (chapter 4), SwiGLU (Llama) and a mixture of SwiGLU experts.

Names: ``FeedForward`` keeps the book's ``layers.0`` / ``layers.2``; ``SwiGLU`` is
``fc3(silu(fc1 x) * fc2 x)``, bias-free; ``MoEFeedForward`` has a bias-free router ``gate`` and
``fc1`` / ``fc2`` / ``fc3`` as lists of per-expert Linears (the book's MoE bonus): each token goes
to the ``experts_per_token`` experts with the largest router logits, weighted by the softmax over
those logits only (``model.moe_renormalize=false``: by the softmax over every expert's logit, the
chosen weights then summing to less than 1, transformers' ``norm_topk_prob=false``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config.architecture import ffn_hidden_dim


def gate_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.ffn_activation``: the gate's activation of SwiGLU and the experts (silu; Gemma 3's gelu_tanh)."""
    if name == "gelu_tanh":
        return functools.partial(F.gelu, approximate="tanh")  # picklable, unlike a lambda
    return F.silu


class GELU(nn.Module):
    """GELU with the tanh approximation GPT-2 was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = ffn_hidden_dim(cfg)  # the book's 4 * emb_dim unless model.hidden_dim says otherwise
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], hidden, bias=cfg.get("ffn_bias", True)),
            GELU(),
            nn.Linear(hidden, cfg["emb_dim"], bias=cfg.get("ffn_bias", True)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwiGLU(nn.Module):
    """Llama's gated feed-forward: ``fc3(silu(fc1(x)) * fc2(x))``, no biases."""

    def __init__(self, emb_dim: int, hidden_dim: int, activation: str = "silu") -> None:
        super().__init__()
        self.act = gate_activation(activation)
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=False)  # gate
        self.fc2 = nn.Linear(emb_dim, hidden_dim, bias=False)  # up
        self.fc3 = nn.Linear(hidden_dim, emb_dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc1(x)) * self.fc2(x))


class MoEFeedForward(nn.Module):
    """A mixture of ``num_experts`` SwiGLU experts; each token runs ``experts_per_token`` of them."""

    def __init__(
        self,
        emb_dim: int,
        hidden_dim: int,
        num_experts: int,
        experts_per_token: int,
        activation: str = "silu",
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        self.act = gate_activation(activation)
        self.renormalize = renormalize  # model.moe_renormalize
        self.num_experts = num_experts
        self.experts_per_token = experts_per_token
        self.gate = nn.Linear(emb_dim, num_experts, bias=False)
        self.fc1 = nn.ModuleList(nn.Linear(emb_dim, hidden_dim, bias=False) for _ in range(num_experts))
        self.fc2 = nn.ModuleList(nn.Linear(emb_dim, hidden_dim, bias=False) for _ in range(num_experts))
        self.fc3 = nn.ModuleList(nn.Linear(hidden_dim, emb_dim, bias=False) for _ in range(num_experts))

    def expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert ``e``'s SwiGLU on ``rows`` (n, emb_dim)."""
        return self.fc3[e](self.act(self.fc1[e](rows)) * self.fc2[e](rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (n_tokens, emb_dim)
        logits = self.gate(x)  # (n, num_experts)
        top_logits, top_experts = torch.topk(logits, self.experts_per_token, dim=-1)  # (n, k)
        if self.renormalize:  # a softmax over the k chosen: their weights sum to 1
            top_weights = torch.softmax(top_logits, dim=-1, dtype=torch.float32).to(x.dtype)
        else:  # the router's probabilities over every expert, the k chosen kept as they are
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            top_weights = probs.gather(-1, top_experts).to(x.dtype)
        if x.shape[0] == 1:  # one token (a decoding step): run its k experts, in the order the loop below adds them
            out = None
            for e, weight in sorted(zip(top_experts[0].tolist(), top_weights[0], strict=True)):
                y = self.expert(e, x) * weight
                out = y if out is None else out + y
            return out.view(shape)
        # Tokens sorted by expert (one host sync for the counts), then each expert's rows in one product.
        flat = top_experts.flatten()  # (n * k,): entry j is token j // k's choice
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        tokens, weights = order // self.experts_per_token, top_weights.flatten()[order, None]
        out = torch.zeros_like(x)
        start = 0
        for e, count in enumerate(counts):
            if count:  # a token picks an expert at most once, so each token gets its experts in ascending order
                token = tokens[start : start + count]
                out.index_add_(0, token, self.expert(e, x[token]) * weights[start : start + count])
                start += count
        return out.view(shape)


def make_feedforward(cfg: Mapping[str, Any]) -> nn.Module:
    """``model.ffn``'s feed-forward for one block."""
    kind = cfg.get("ffn", "gelu")
    if kind == "swiglu":
        return SwiGLU(cfg["emb_dim"], ffn_hidden_dim(cfg), cfg.get("ffn_activation", "silu"))
    if kind == "moe":
        hidden = ffn_hidden_dim(cfg, moe=True)
        experts, k = int(cfg["num_experts"]), int(cfg["experts_per_token"])
        activation, renormalize = cfg.get("ffn_activation", "silu"), bool(cfg.get("moe_renormalize", True))
        return MoEFeedForward(cfg["emb_dim"], hidden, experts, k, activation, renormalize)
    return FeedForward(cfg)
