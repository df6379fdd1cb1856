"""Direct Preference Optimization (the book's chapter-7 bonus) as a LightningModule.

The policy (``self.model``, the instruction-tuned model being trained) learns to give the chosen
response a higher log-probability than the rejected one, relative to a frozen reference that holds
the same starting weights:

    loss = -logsigmoid(beta * ((pi_c - rho_c) - (pi_r - rho_r)))

with ``pi`` / ``rho`` the policy's / reference's log-probability of a response's tokens (prompt
and padding masked), averaged per token as the book's notebook does (``dpo.logprob=mean``: the
targets the data module's collate leaves, the last tokens of the response header and the
response), averaged over the response and its end-of-text (``response_mean``) or summed as TRL
does (``sum``). The rewards are the book's: ``pi_c - rho_c`` (chosen)
and ``pi_r - rho_r`` (rejected), not scaled by beta (TRL's are beta times these); their
difference is the reward margin.

The reference: with full fine-tuning a second ``GPTModel`` holding the starting weights, frozen,
in eval mode, left out of checkpoints (rebuilt from ``init_from`` on resume; a fingerprint in the
checkpoint checks it is the same). With ``finetune=lora`` no copy: the policy's own base weights,
which LoRA never changes, with the adapters switched off.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from gpt_lab.config import DPO_LOGPROBS
from gpt_lab.data.preferences import IGNORE_INDEX
from gpt_lab.errors import UserError
from gpt_lab.model.finetune import load_base_state
from gpt_lab.model.gpt import GPTModel
from gpt_lab.training.lit_module import GPTLitModule, NonFiniteLossError

log = logging.getLogger(__name__)

METRICS = ("loss", "reward_margin", "chosen_reward", "rejected_reward", "reward_accuracy")


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
    """Per pair (b,): the loss and the rewards (chosen, rejected); ``margin = chosen - rejected``."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor

    @property
    def margin(self) -> torch.Tensor:
        return self.chosen_reward - self.rejected_reward

    def means(self) -> dict[str, torch.Tensor]:
        margin = self.margin
        return {
            "loss": self.loss.mean(),
            "reward_margin": margin.mean(),
            "chosen_reward": self.chosen_reward.mean(),
            "rejected_reward": self.rejected_reward.mean(),
            "reward_accuracy": (margin > 0).float().mean(),
        }


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> DPOOutput:
    """The DPO loss of each pair from the four log-probabilities (b,) each."""
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected))
    return DPOOutput(loss, chosen.detach(), rejected.detach())


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter's bytes: tells a checkpoint's reference from another one."""
    digest = hashlib.blake2b(digest_size=16)
    for name, param in module.state_dict().items():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class DPOLitModule(GPTLitModule):
    """The policy ``self.model`` trained with the DPO loss against a frozen reference.

    ``shared_reference=False``: ``self.reference`` is a frozen copy of the starting weights (one
    more model in memory: its weights only, no gradients or optimizer state). ``True`` (LoRA): no
    copy; the reference is ``self.model`` with its adapters off (``gpt_lab.model.lora.lora_disabled``).
    Everything else (AdamW, schedule, clipping, exact resume, generation) is ``GPTLitModule``'s.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        lr: float,
        weight_decay: float,
        beta: float = 0.1,
        logprob: str = "mean",
        shared_reference: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_cfg, lr, weight_decay, **kwargs)
        if not beta > 0:
            raise UserError(f"dpo.beta={beta} must be > 0 (the book's 0.1)")
        if logprob not in DPO_LOGPROBS:
            raise UserError(f"dpo.logprob={logprob} must be one of {', '.join(DPO_LOGPROBS)}")
        # One call holds every hyper-parameter (a second save_hyperparameters would replace the first's).
        self.save_hyperparameters(
            {**self.hparams, "beta": float(beta), "logprob": logprob, "shared_reference": bool(shared_reference)}
        )
        self.reference: nn.Module | None = None
        self._history: list[dict[str, Any]] = []  # one row per validation: the book's plot
        self._window: dict[str, list[float]] = {}
        self._val_sums: dict[str, float] = {}
        self._val_count = 0

    @classmethod
    def from_config(cls, cfg: Any, model_cfg: Mapping[str, Any], init_state: Mapping[str, torch.Tensor] | None) -> Any:
        """The policy loaded from ``init_from`` and its reference (a frozen copy, or the LoRA base)."""
        if not init_state:
            raise UserError(
                "data=preferences (DPO) trains an instruction-tuned model against a frozen copy of itself: give "
                "init_from=<instruction-tuned run directory or weights>, e.g. from experiment=ch07"
            )
        finetune = cfg.finetune.name
        lit = cls(
            model_cfg,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            beta=cfg.dpo.beta,
            logprob=cfg.dpo.logprob,
            shared_reference=finetune == "lora",
            scheduler=dict(cfg.scheduler),
            clip_grad_norm=cfg.optim.clip_grad_norm,
            max_new_tokens=cfg.max_new_tokens,
            finetune=finetune,
            lora=cfg.lora,
        )
        load_base_state(lit.model, init_state)  # with finetune=lora the adapters keep their start (B = 0)
        lit.attach_reference(init_state)
        return lit

    def attach_reference(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Freeze the reference: a model holding ``state`` (the starting weights; by default a copy of the
        policy as it is now). Call once, before training.

        With ``state`` the reference's parameters *are* those tensors (no copy): the train task keeps
        the ``init_from`` state dict alive for the whole run anyway, so the reference costs no memory
        beyond it. The policy loaded copies of them, so training never writes into the reference.
        """
        if self.hparams.shared_reference:
            self.reference = None
            return
        if state is None:
            reference = copy.deepcopy(self.model)
        else:
            with torch.device("meta"):
                reference = GPTModel(self.model.cfg)
            reference.load_state_dict(state, strict=True, assign=True)
            if reference.cfg["tie_weights"]:
                reference.out_head.weight = reference.tok_emb.weight
            if any(t.is_meta for t in (*reference.parameters(), *reference.buffers())):
                reference = copy.deepcopy(self.model)
        reference.eval().requires_grad_(False)
        self.reference = reference
        self._fingerprint = None

    # -- the reference stays frozen, in eval mode, and out of checkpoints --------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Lightning warns of modules in eval mode at the start of training: the reference is, on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def train(self, mode: bool = True) -> DPOLitModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        state = dict(state_dict)
        if self.reference is not None:  # the reference is rebuilt from init_from, not read back
            state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _reference_fingerprint(self) -> str | None:
        """The frozen reference's hash, computed once (its weights never change)."""
        if self.reference is None:
            return None
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = weights_fingerprint(self.reference)
        return self._fingerprint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dpo"] = {
            "history": list(self._history),
            "window": {k: list(v) for k, v in self._window.items()},
            "reference": self._reference_fingerprint(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("dpo") or {}
        expected = saved.get("reference")
        if expected is not None and self.reference is not None and expected != self._reference_fingerprint():
            raise UserError(
                "ckpt_path: that DPO run was trained against another reference model than init_from gives now; "
                "resume with the init_from the run started from"
            )
        self._history = list(saved.get("history", []))
        self._window = {k: list(v) for k, v in (saved.get("window") or {}).items()}

    # -- the objective ---------------------------------------------------------------------------

    @torch.no_grad()
    def _reference_logprobs(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reduction = self.hparams.logprob
        if self.reference is not None:
            return response_logprobs(self.reference(inputs), targets, reduction)
        from gpt_lab.model.lora import lora_disabled

        with lora_disabled(self.model), _eval_mode(self.model):
            return response_logprobs(self.model(inputs), targets, reduction)

    def pair_losses(self, batch: tuple[torch.Tensor, torch.Tensor]) -> DPOOutput:
        """The batch's (2b, t) inputs and targets — b chosen rows, then b rejected — → per-pair loss and rewards."""
        inputs, targets = batch
        policy = response_logprobs(self.model(inputs), targets, self.hparams.logprob)
        reference = self._reference_logprobs(inputs, targets)
        pi_c, pi_r = policy.chunk(2)
        rho_c, rho_r = reference.chunk(2)
        return dpo_loss(pi_c, pi_r, rho_c, rho_r, self.hparams.beta)

    @torch.no_grad()
    def eval_metrics(self, batches: Iterable[Any]) -> dict[str, float]:
        """Mean loss, rewards, margin and reward accuracy over every pair of ``batches``, in eval mode."""
        sums = {k: torch.zeros((), dtype=torch.float64) for k in METRICS}
        count = 0
        with _eval_mode(self.model):
            for inputs, targets in batches:
                out = self.pair_losses((inputs.to(self.device), targets.to(self.device)))
                n = out.loss.shape[0]
                for key, value in out.means().items():
                    sums[key] += value.double().cpu() * n
                count += n
        if count == 0:
            raise ValueError("eval_metrics: no pairs to evaluate")
        return {k: float(v / count) for k, v in sums.items()}

    def mean_loss(self, batches: Any) -> float:
        return self.eval_metrics(batches)["loss"]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        means = self.pair_losses(batch).means()
        loss = means["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the DPO loss is {loss.item()} at step {self.global_step} (batch {batch_idx}) with "
                f"optim.lr={self.hparams.lr}: training diverged; lower optim.lr or check the data"
            )
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        for key, value in means.items():
            self.log(f"train/{key}", value, prog_bar=key in ("loss", "reward_margin"))
            self._window.setdefault(key, []).append(float(value.detach()))
        self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums, self._val_count = {}, 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        means = self.pair_losses(batch).means()
        n = batch[0].shape[0] // 2
        for key, value in means.items():
            self.log(f"val/{key}", value, prog_bar=key == "loss", batch_size=n, sync_dist=True)
            self._val_sums[key] = self._val_sums.get(key, 0.0) + float(value) * n
        self._val_count += n
        return means["loss"]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_count:
            return
        row: dict[str, Any] = {"step": self.global_step, "tokens_seen": self.tokens_seen}
        for key in ("loss", "reward_margin"):
            window = self._window.get(key) or []
            row[f"train_{key}"] = sum(window) / len(window) if window else None
            row[f"val_{key}"] = self._val_sums[key] / self._val_count
        self._window = {}
        self._history.append(row)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per validation: step, tokens seen, training means since the last one, validation means."""
        return list(self._history)

    # -- after training --------------------------------------------------------------------------

    def finish(self, trainer: L.Trainer, datamodule: Any, cfg: Any) -> dict[str, Any]:
        """Final metrics over the whole training and validation sets, the plot, the policy's weights and
        the test split's responses from the policy beside the reference's."""
        from gpt_lab.training.dpo_report import finish_dpo

        return finish_dpo(self, trainer, datamodule, cfg)
