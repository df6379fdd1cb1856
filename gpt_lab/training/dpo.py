"""Direct Preference Optimization (the book's chapter-7 bonus) as a LightningModule.

The policy (``self.model``, the instruction-tuned model being trained) learns to give the chosen
response a higher log-probability than the rejected one, relative to a frozen reference that holds
the same starting weights:

    loss = -logsigmoid(beta * ((pi_c - rho_c) - (pi_r - rho_r)))

with ``pi`` / ``rho`` the policy's / reference's log-probability of a response's tokens (prompt
and padding masked), averaged per token as the book's notebook does (``dpo.logprob=mean``: the
targets the data module's collate leaves, the last tokens of the response header and the
response), averaged over the response and its end-of-text (``response_mean``) or summed as TRL
does (``sum``); ``dpo.loss=ipo|hinge`` and ``dpo.label_smoothing`` are the other losses TRL offers
(``gpt_lab.training.dpo_loss``, with the metrics under the book's and TRL's names). The rewards are
the book's: ``pi_c - rho_c`` (chosen) and ``pi_r - rho_r`` (rejected), not scaled by beta (TRL's
are beta times these); their difference is the reward margin.

The reference: with full fine-tuning a second ``GPTModel`` holding the starting weights, frozen,
in eval mode, left out of checkpoints (rebuilt from ``init_from`` on resume; a fingerprint in the
checkpoint checks it is the same). With ``finetune=lora`` no copy: the policy's own base weights,
which LoRA never changes, with the adapters switched off. ``dpo.precompute_reference=true``: no
reference model at all; the starting model's log-probabilities of every training and validation
pair are computed once, before training (on resume too, from ``init_from``), and travel with the
pairs in their batches. ``dpo.reference_free=true``: no reference, ``rho = 0``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import nn

from gpt_lab.config import DPO_LOGPROBS, input_path
from gpt_lab.data.preferences import collate_preferences
from gpt_lab.errors import UserError
from gpt_lab.model.finetune import load_base_state
from gpt_lab.model.gpt import GPTModel
from gpt_lab.training.dpo_loss import METRICS, DPOOutput, dpo_loss, response_logprobs
from gpt_lab.training.lit_module import GPTLitModule, NonFiniteLossError

log = logging.getLogger(__name__)

REFERENCE_KINDS = ("frozen_copy", "lora_base", "precomputed", "none")  # results.json dpo_reference


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
    ``precompute_reference``: no reference model; ``precompute_reference_logprobs`` stores the starting
    model's log-probabilities with the pairs. ``reference_free``: none at all (``rho = 0``).
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
        loss: str = "sigmoid",
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        precompute_reference: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_cfg, lr, weight_decay, **kwargs)
        if not beta > 0:
            raise UserError(f"dpo.beta={beta} must be > 0 (the book's 0.1)")
        if logprob not in DPO_LOGPROBS:
            raise UserError(f"dpo.logprob={logprob} must be one of {', '.join(DPO_LOGPROBS)}")
        # One call holds every hyper-parameter (a second save_hyperparameters would replace the first's).
        self.save_hyperparameters(
            {
                **self.hparams,
                "beta": float(beta),
                "logprob": logprob,
                "shared_reference": bool(shared_reference),
                "loss": loss,
                "label_smoothing": float(label_smoothing),
                "reference_free": bool(reference_free),
                "precompute_reference": bool(precompute_reference) and not reference_free,
            }
        )
        self.reference: nn.Module | None = None
        self._history: list[dict[str, Any]] = []  # one row per validation: the book's plot
        self._window: dict[str, list[float]] = {}
        self._val_sums: dict[str, float] = {}
        self._val_count = 0

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        model_cfg: Mapping[str, Any],
        init_state: Mapping[str, torch.Tensor] | None,
        datamodule: Any = None,
    ) -> Any:
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
            loss=cfg.dpo.loss,
            label_smoothing=cfg.dpo.label_smoothing,
            reference_free=cfg.dpo.reference_free,
            precompute_reference=cfg.dpo.precompute_reference,
            scheduler=dict(cfg.scheduler),
            clip_grad_norm=cfg.optim.clip_grad_norm,
            max_new_tokens=cfg.max_new_tokens,
            finetune=finetune,
            lora=cfg.lora,
        )
        load_base_state(lit.model, init_state)  # with finetune=lora the adapters keep their start (B = 0)
        lit.remember_base(str(input_path(cfg, cfg.init_from)), init_state)
        if lit.hparams.precompute_reference:  # the policy holds the starting weights now: it is the reference
            if datamodule is None:
                raise ValueError("dpo.precompute_reference needs the set-up preference data module")
            lit.precompute_reference_logprobs(datamodule, cfg.data.batch_size)
        else:
            lit.attach_reference(init_state)
        return lit

    @property
    def reference_kind(self) -> str:
        """How the reference's log-probabilities are had: one of ``REFERENCE_KINDS``."""
        if self.hparams.get("reference_free"):
            return "none"
        if self.hparams.get("precompute_reference"):
            return "precomputed"
        return "lora_base" if self.reference is None else "frozen_copy"

    @torch.no_grad()
    def precompute_reference_logprobs(self, datamodule: Any, batch_size: int) -> None:
        """Store the starting model's log-probabilities (chosen, rejected) with every training and
        validation pair of ``datamodule``; call while ``self.model`` holds the starting weights."""
        # The targets dpo.logprob counts, as the training batches' (PreferenceDataModule.collate).
        collate = getattr(datamodule, "collate", None) or collate_preferences
        with _eval_mode(self.model):
            for split in ("train", "val"):
                pairs = datamodule.datasets[split].pairs
                for start in range(0, len(pairs), batch_size):
                    chunk = pairs[start : start + batch_size]
                    inputs, targets = collate(chunk)[:2]
                    logits = self.model(inputs.to(self.device))
                    logps = response_logprobs(logits, targets.to(self.device), self.hparams.logprob)
                    chosen, rejected = logps.cpu().chunk(2)
                    for pair, c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                        pair.reference = (c, r)
        self.reference = None

    def attach_reference(self, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Freeze the reference: a model holding ``state`` (the starting weights; by default a copy of the
        policy as it is now). Call once, before training.

        With ``state`` the reference's parameters *are* those tensors (no copy): the reference costs
        no memory beyond the ``init_from`` state dict the train task read. The policy loaded copies of
        them, so training never writes into the reference.
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
    def _reference_logprobs(
        self, inputs: torch.Tensor, targets: torch.Tensor, precomputed: torch.Tensor | None = None
    ) -> torch.Tensor:
        reduction = self.hparams.logprob
        if self.hparams.get("reference_free"):
            return torch.zeros(inputs.shape[0], device=inputs.device)
        if self.hparams.get("precompute_reference"):
            if precomputed is None:
                raise RuntimeError("dpo.precompute_reference: a batch came without the reference's log-probabilities")
            return precomputed.to(inputs.device)
        if self.reference is not None:
            return response_logprobs(self.reference(inputs), targets, reduction)
        from gpt_lab.model.lora import lora_disabled

        with lora_disabled(self.model), _eval_mode(self.model):
            return response_logprobs(self.model(inputs), targets, reduction)

    def pair_losses(self, batch: tuple[torch.Tensor, ...]) -> DPOOutput:
        """The batch's (2b, t) inputs and targets — b chosen rows, then b rejected — (and, precomputed, the
        reference's (2b,) log-probabilities) → per-pair loss and rewards."""
        inputs, targets, *precomputed = batch
        policy = response_logprobs(self.model(inputs), targets, self.hparams.logprob)
        reference = self._reference_logprobs(inputs, targets, precomputed[0] if precomputed else None)
        pi_c, pi_r = policy.chunk(2)
        rho_c, rho_r = reference.chunk(2)
        h = self.hparams
        return dpo_loss(pi_c, pi_r, rho_c, rho_r, h.beta, h.get("loss", "sigmoid"), h.get("label_smoothing", 0.0))

    @torch.no_grad()
    def eval_metrics(self, batches: Iterable[Any]) -> dict[str, float]:
        """Mean loss, rewards, margin and reward accuracy over every pair of ``batches``, in eval mode."""
        sums = {k: torch.zeros((), dtype=torch.float64) for k in METRICS}
        count = 0
        with _eval_mode(self.model):
            for batch in batches:
                out = self.pair_losses(tuple(t.to(self.device) for t in batch))
                n = out.loss.shape[0]
                for key, value in out.means().items():
                    sums[key] += value.double().cpu() * n
                count += n
        if count == 0:
            raise ValueError("eval_metrics: no pairs to evaluate")
        return {k: float(v / count) for k, v in sums.items()}

    def mean_loss(self, batches: Any) -> float:
        return self.eval_metrics(batches)["loss"]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
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
            if key in ("loss", "reward_margin"):  # the book's plot
                self._window.setdefault(key, []).append(float(value.detach()))
        self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums, self._val_count = {}, 0

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
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
