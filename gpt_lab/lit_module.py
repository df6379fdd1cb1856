"""The LightningModule around chapter 4's GPTModel: the book's loss, AdamW, greedy generation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from gpt_lab.errors import UserError
from gpt_lab.generate import generate
from gpt_lab.loss import batch_loss
from gpt_lab.model import GPTModel, model_config_dict


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: training diverged."""


def _fused_adamw_devices() -> tuple[str, ...]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # the helper is private: fall back to the device every release supports
        return ("cuda",)


def _primitive(value: Any) -> Any:
    """Hyper-parameters must load with ``torch.load(weights_only=True)``: plain Python values only."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _primitive(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_primitive(v) for v in value]
    raise TypeError(f"hyper-parameter {value!r} of type {type(value).__name__} is not a plain Python value")


class GPTLitModule(L.LightningModule):
    """Trains ``self.model``, a ``GPTModel(model_cfg)``, with the book's loss and AdamW.

    ``lr`` and ``weight_decay`` are AdamW's (the run passes ``cfg.optim``: conf/optim holds the
    book's values).

    Hyper-parameters are stored as plain Python values, so
    ``GPTLitModule.load_from_checkpoint(path)`` needs neither Hydra nor ``weights_only=False``.
    Checkpoints also carry ``tokens_seen`` and the global RNG state (dropout), so a run resumed
    from an epoch-end checkpoint continues exactly as the uninterrupted run would.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        lr: float,
        weight_decay: float,
        max_new_tokens: int = 50,
    ) -> None:
        super().__init__()
        cfg = _primitive(model_config_dict(model_cfg))
        self.save_hyperparameters(
            {"model_cfg": cfg, "lr": float(lr), "weight_decay": float(weight_decay), "max_new_tokens": max_new_tokens}
        )
        self.model = GPTModel(cfg)
        # For the TensorBoard graph and the model summary: any length up to the context traces the same graph.
        self.example_input_array = torch.zeros((1, min(8, self.model.context_length)), dtype=torch.long)
        self.tokens_seen = 0
        self._resume_rng_state: torch.Tensor | None = None
        self._resume_cuda_rng_state: list[torch.Tensor] | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (b, t) → logits (b, t, vocab_size)."""
        return self.model(idx)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = batch_loss(self.model(inputs), targets)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the {stage} loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}) with optim.lr={self.hparams.lr}: training diverged; lower optim.lr "
                "or check the data"
            )
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "training", batch_idx)
        # Tokens seen by all processes together (every rank's batch has the same shape).
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "validation", batch_idx)
        # Weighted by windows: the epoch value is the mean over every validation token.
        self.log("val/loss", loss, prog_bar=True, batch_size=batch[0].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # parameters() yields a tied weight once; the book decays every parameter.
        params = list(self.model.parameters())
        fused = all(p.device.type in _fused_adamw_devices() for p in params)
        return torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused or None
        )

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """Continue token ids (b, n) → (b, n + new): greedy by default, as chapter 4."""
        n = self.hparams.max_new_tokens if max_new_tokens is None else max_new_tokens
        return generate(self.model, idx.to(self.device), n, self.model.context_length, temperature, top_k, eos_id)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        idx = batch[0] if isinstance(batch, list | tuple) else batch
        return self.generate(idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self._resume_rng_state = checkpoint.get("rng_state")
        self._resume_cuda_rng_state = checkpoint.get("cuda_rng_state")

    def on_train_start(self) -> None:
        # Restored here, after the sanity check and just before the first batch, where the
        # uninterrupted run stood when it saved the checkpoint.
        if self._resume_rng_state is not None:
            torch.set_rng_state(self._resume_rng_state.cpu())
            if self._resume_cuda_rng_state is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._resume_cuda_rng_state)
            self._resume_rng_state = None
