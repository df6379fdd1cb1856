"""Lightning callbacks for chapter 5's training: initial losses, the loss report, text samples."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.seed import isolate_rng

from gpt_lab.lit_module import GPTLitModule
from gpt_lab.loss import mean_loss
from gpt_lab.tokenizer import get_tokenizer, text_to_token_ids

log = logging.getLogger(__name__)


def _eval_loader(trainer: L.Trainer, split: str) -> Any:
    """All windows of ``split`` in order: the data module's evaluation loader, else the trainer's own."""
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "eval_dataloader"):
        return datamodule.eval_dataloader(split)
    return trainer.train_dataloader if split == "train" else trainer.val_dataloaders


class InitialLossEvaluation(L.Callback):
    """Before the first step, the untrained model's mean loss over the whole training and validation
    sets (eval mode), as the book prints it. Logged at step 0 as ``train/loss_initial`` and
    ``val/loss`` (where the validation curve starts); kept in the checkpoint for resumed runs.
    """

    def __init__(self) -> None:
        self.train_loss: float | None = None
        self.val_loss: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 or self.train_loss is not None:
            return  # resumed: these were measured before the first run's first step
        # Evaluation must not move the random streams the training run draws from.
        with isolate_rng():
            self.train_loss = mean_loss(pl_module.model, _eval_loader(trainer, "train"), pl_module.device)
            self.val_loss = mean_loss(pl_module.model, _eval_loader(trainer, "val"), pl_module.device)
        for logger in trainer.loggers:
            logger.log_metrics({"train/loss_initial": self.train_loss, "val/loss": self.val_loss}, step=0)
        if trainer.is_global_zero:
            log.info("Initial losses: training %.4f, validation %.4f", self.train_loss, self.val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_loss = state_dict.get("train_loss")
        self.val_loss = state_dict.get("val_loss")


class LossHistory(L.Callback):
    """The book's progress lines and a per-epoch loss curve.

    After each validation it logs ``Ep 1 (Step 000005): Train loss 9.781, Val loss 9.933`` (the
    training loss is the mean of the steps since the previous validation); at each epoch's end it
    appends ``{epoch, step, tokens_seen, train_loss, val_loss}`` to ``epochs`` (mean training
    loss of the epoch, latest validation loss).
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float | int | None]] = []
        self._window: list[float] = []
        self._epoch: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        self._window.append(value)
        self._epoch.append(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        val = trainer.callback_metrics.get("val/loss")
        train = sum(self._window) / len(self._window) if self._window else float("nan")
        self._window = []
        log.info(
            "Ep %d (Step %06d): Train loss %.3f, Val loss %.3f",
            trainer.current_epoch + 1,
            trainer.global_step,
            train,
            float(val) if val is not None else float("nan"),
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val = trainer.callback_metrics.get("val/loss")
        self.epochs.append(
            {
                "epoch": trainer.current_epoch + 1,
                "step": trainer.global_step,
                "tokens_seen": getattr(pl_module, "tokens_seen", None),
                "train_loss": sum(self._epoch) / len(self._epoch) if self._epoch else None,
                "val_loss": float(val) if val is not None else None,
            }
        )
        self._epoch = []

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))


class SampleText(L.Callback):
    """After each validation, continue ``prompt`` with the model and log the text to TensorBoard.

    Greedy by default (``temperature=0``), so sampling draws no random numbers and leaves the
    training run's random streams alone.
    """

    def __init__(
        self,
        prompt: str = "Every effort moves you",
        max_new_tokens: int = 50,
        temperature: float = 0.0,
        top_k: int | None = None,
    ) -> None:
        if not prompt:
            raise ValueError("callbacks.sample_text.prompt is empty; give some text, e.g. 'Every effort moves you'")
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.last_text: str | None = None

    def sample(self, pl_module: GPTLitModule) -> str:
        idx = torch.tensor([text_to_token_ids(self.prompt)])
        with isolate_rng():
            out = pl_module.generate(idx, self.max_new_tokens, self.temperature, self.top_k)
        return get_tokenizer().decode(out[0].tolist())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        text = self.sample(pl_module)
        self.last_text = text
        log.info("Sample at step %d: %s", trainer.global_step, text.replace("\n", " "))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", text, trainer.global_step)
