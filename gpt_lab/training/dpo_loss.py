"""The preference losses of ``objective=dpo`` and their metrics, from four log-probabilities per pair.

With ``pi`` / ``rho`` the policy's / reference's log-probability of a response (prompt and padding
masked; ``response_logprobs``), ``z = (pi_c - rho_c) - (pi_r - rho_r)`` and ``beta = dpo.beta``:

    sigmoid (the book, the DPO paper):  -(1 - eps) * logsigmoid(beta * z) - eps * logsigmoid(-beta * z)
                                        (eps = dpo.label_smoothing, 0 by default: conservative DPO)
    ipo (Azar et al., eq. 17):          (z - 1 / (2 * beta)) ** 2
    hinge (SLiC):                       relu(1 - beta * z)

``dpo.reference_free=true`` takes ``rho = 0``. The names are TRL's ``loss_type`` values, and so
are its metrics: ``rewards/chosen`` = ``beta * (pi_c - rho_c)``, ``rewards/rejected``,
``rewards/margins`` (their difference), ``rewards/accuracies`` (the share with margin > 0),
``logps/chosen`` / ``logps/rejected`` (the policy's). The book's metrics sit beside them:
``chosen_reward = pi_c - rho_c`` (not scaled by beta), ``rejected_reward``, ``reward_margin``,
``reward_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt_lab.config import DPO_LOSSES
from gpt_lab.tokenizer import IGNORE_INDEX

BOOK_METRICS = ("loss", "reward_margin", "chosen_reward", "rejected_reward", "reward_accuracy")
TRL_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
METRICS = BOOK_METRICS + TRL_METRICS


def response_logprobs(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Log-probability of each row's response: logits (n, t, vocab), targets (n, t) with -100 masked → (n,).

    ``reduction="mean"`` or ``"response_mean"``: averaged over the row's targets that count; ``"sum"``:
    summed (TRL). Which targets count is the collate's choice (gpt_lab.data.preferences).
    """
    n, t, vocab = logits.shape
    token_logp = -F.cross_entropy(
        logits.reshape(n * t, vocab).float(), targets.reshape(n * t), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(n, t)  # masked positions are 0
    total = token_logp.sum(dim=-1)
    if reduction == "sum":
        return total
    return total / (targets != IGNORE_INDEX).sum(dim=-1).clamp_min(1)


@dataclass
class DPOOutput:
    """Per pair (b,): the loss, the book's rewards (chosen, rejected), beta, and the policy's log-probabilities."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    beta: float = 1.0
    policy_chosen: torch.Tensor | None = None
    policy_rejected: torch.Tensor | None = None

    @property
    def margin(self) -> torch.Tensor:
        return self.chosen_reward - self.rejected_reward

    def means(self) -> dict[str, torch.Tensor]:
        """Batch means of every metric, the book's and TRL's (``METRICS``)."""
        margin = self.margin
        accuracy = (margin > 0).float().mean()
        out = {
            "loss": self.loss.mean(),
            "reward_margin": margin.mean(),
            "chosen_reward": self.chosen_reward.mean(),
            "rejected_reward": self.rejected_reward.mean(),
            "reward_accuracy": accuracy,
            "rewards/chosen": self.beta * self.chosen_reward.mean(),
            "rewards/rejected": self.beta * self.rejected_reward.mean(),
            "rewards/margins": self.beta * margin.mean(),
            "rewards/accuracies": accuracy,
        }
        if self.policy_chosen is not None and self.policy_rejected is not None:
            out["logps/chosen"] = self.policy_chosen.detach().mean()
            out["logps/rejected"] = self.policy_rejected.detach().mean()
        return out


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """The preference loss of each pair from the four log-probabilities (b,) each (see the module)."""
    if loss not in DPO_LOSSES:
        raise ValueError(f"dpo.loss={loss} is not a DPO loss; choose one of {', '.join(DPO_LOSSES)}")
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    z = chosen - rejected
    if loss == "sigmoid" and not label_smoothing:
        losses = -F.logsigmoid(beta * z)
    elif loss == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    elif loss == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * z)
    return DPOOutput(losses, chosen.detach(), rejected.detach(), beta, policy_chosen, policy_rejected)
