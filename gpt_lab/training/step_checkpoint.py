"""Periodic checkpoints that hold their step's evaluation (issue 30, case 7).

Lightning's ``ModelCheckpoint`` writes an ``every_n_train_steps`` checkpoint at the step's batch end,
before the validation the trainer runs after that step, and a resume from it skips that validation
(the loop restarts past it). A run resumed after a crash (SIGKILL, power loss) from such a checkpoint
lost that step's evaluation point: ``eval_history``, the plots and TensorBoard differed from the
uninterrupted run's. ``StepCheckpoint`` writes the checkpoint of a step that is evaluated after that
evaluation instead, the state the uninterrupted run goes on from; every other save is Lightning's.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def evaluation_follows(trainer: L.Trainer) -> bool:
    """Whether the training loop evaluates after the step that has just ended (its own rule, asked of it:
    ``val_check_interval`` in batches, the epoch's last batch, ``check_val_every_n_epoch``). A time-based
    interval gives no answer ahead: False, the stop comes before the evaluation as for any other step."""
    epoch_loop, fetcher = trainer.fit_loop.epoch_loop, getattr(trainer.fit_loop, "_data_fetcher", None)
    check = getattr(epoch_loop, "_should_check_val_fx", None)
    if check is None or fetcher is None or getattr(trainer, "_val_check_time_interval", None) is not None:
        return False
    return bool(check(fetcher))


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) whose ``every_n_train_steps`` save of an evaluated step comes
    after that step's evaluation (``on_validation_end``), so a resume from it has the evaluation in its
    history. Should no evaluation run after all (an empty validation loader), the save is made before the
    next step starts, or at the epoch's or the training's end, still at that step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after_evaluation_of: int | None = None  # the step whose save waits for its evaluation

    def _due(self, trainer: L.Trainer) -> bool:
        every = self._every_n_train_steps
        return every >= 1 and trainer.global_step % every == 0 and not self._should_skip_saving_checkpoint(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.automatic_optimization and self._due(trainer) and evaluation_follows(trainer):
            self._after_evaluation_of = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_waiting(self, trainer: L.Trainer) -> None:
        """The save put off at this step, now (nothing when none waits, or the model has stepped since)."""
        waiting, self._after_evaluation_of = self._after_evaluation_of, None
        if waiting is None or waiting != trainer.global_step or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not trainer.sanity_checking:
            self._save_waiting(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._save_waiting(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_waiting(trainer)
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_waiting(trainer)
        super().on_train_end(trainer, pl_module)
