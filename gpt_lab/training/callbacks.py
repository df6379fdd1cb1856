"""Lightning callbacks for training: initial losses, the loss report, text samples, throughput,
and stopping at a step boundary with a checkpoint on SIGTERM / SIGINT."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.seed import isolate_rng

from gpt_lab.errors import RunInterrupted
from gpt_lab.tokenizer import text_to_token_ids
from gpt_lab.training.lit_module import GPTLitModule
from gpt_lab.training.resume_last import newest_checkpoint
from gpt_lab.training.step_checkpoint import evaluation_follows

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
        # By split, everything an objective with ``eval_metrics(batches) -> dict`` reports (DPO: rewards).
        self.metrics: dict[str, dict[str, float]] = {}

    def _measure(self, pl_module: L.LightningModule, loader: Any) -> dict[str, float]:
        """The objective's metrics over ``loader``: its ``eval_metrics`` when it has one, else its mean loss."""
        if callable(getattr(pl_module, "eval_metrics", None)):
            return dict(pl_module.eval_metrics(loader))
        return {"loss": pl_module.mean_loss(loader)}

    # At the first batch rather than at on_train_start: after every start-up check of the module's own
    # on_train_start (the schedule against the run's length), which should fail before this long pass.
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step > 0 or self.train_loss is not None:
            return  # resumed, or measured already: before the first run's first step
        # Evaluation must not move the random streams the training run draws from.
        with isolate_rng():
            self.metrics = {split: self._measure(pl_module, _eval_loader(trainer, split)) for split in ("train", "val")}
        self.train_loss, self.val_loss = self.metrics["train"]["loss"], self.metrics["val"]["loss"]
        extra = {f"val/{k}": v for k, v in self.metrics["val"].items() if k != "loss"}
        for logger in trainer.loggers:
            logger.log_metrics({"train/loss_initial": self.train_loss, "val/loss": self.val_loss, **extra}, step=0)
        if trainer.is_global_zero:
            log.info("Initial losses: training %.4f, validation %.4f", self.train_loss, self.val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "metrics": self.metrics}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_loss = state_dict.get("train_loss")
        self.val_loss = state_dict.get("val_loss")
        self.metrics = dict(state_dict.get("metrics") or {})

    def initial_results(self) -> dict[str, float | None]:
        """results.json fields: ``initial_train_loss``, ``initial_val_loss`` and any other metric by split
        (``initial_val_reward_margin``, ...)."""
        out: dict[str, float | None] = {"initial_train_loss": self.train_loss, "initial_val_loss": self.val_loss}
        for split, metrics in self.metrics.items():
            out.update({f"initial_{split}_{k}": v for k, v in metrics.items() if k != "loss"})
        return out


class LossHistory(L.Callback):
    """The book's progress lines and a per-epoch loss curve.

    After each validation it logs ``Ep 1 (Step 000005): Train loss 9.781, Val loss 9.933`` (the
    training loss is the mean of the steps since the previous validation); at each epoch's end it
    appends ``{epoch, step, tokens_seen, train_loss, val_loss}`` to ``epochs`` (mean training
    loss of the epoch, latest validation loss). Each validation appends the same fields (its step's
    epoch, the training mean since the previous one) to ``evaluations``: the book's loss plot.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float | int | None]] = []
        self.evaluations: list[dict[str, float | int | None]] = []
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
        self.evaluations.append(
            {
                "epoch": trainer.current_epoch + 1,
                "step": trainer.global_step,
                "tokens_seen": getattr(pl_module, "tokens_seen", None),
                "train_loss": train,
                "val_loss": float(val) if val is not None else None,
            }
        )
        line = "Ep %d (Step %06d): Train loss %.3f, Val loss %.3f" % (  # noqa: UP031 (the book's format)
            trainer.current_epoch + 1,
            trainer.global_step,
            train,
            float(val) if val is not None else float("nan"),
        )
        # DPO: the book's line goes on with the reward margins (the objective's row for this evaluation).
        row = (getattr(pl_module, "history", None) or [{}])[-1]
        if row.get("step") == trainer.global_step and row.get("val_reward_margin") is not None:
            margins = (row.get("train_reward_margin"), row["val_reward_margin"])
            line += ", Train reward margins %.3f, Val reward margins %.3f" % tuple(  # noqa: UP031
                float("nan") if m is None else m for m in margins
            )
        log.info(line)

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
        return {
            "epochs": list(self.epochs),
            "evaluations": list(self.evaluations),
            "window": list(self._window),
            "epoch": list(self._epoch),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict.get("epochs", []))
        self.evaluations = list(state_dict.get("evaluations", []))
        # The losses since the last report and in this epoch so far: a mid-epoch resume reports the same means.
        self._window = list(state_dict.get("window", []))
        self._epoch = list(state_dict.get("epoch", []))


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
        if max_new_tokens < 0:
            raise ValueError(f"callbacks.sample_text.max_new_tokens={max_new_tokens} must be >= 0")
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.last_text: str | None = None
        self.tokens_per_second: float | None = None  # the last sample's generation speed

    def sample(self, pl_module: GPTLitModule) -> str:
        tokenizer = pl_module.tokenizer  # the model's (a family's tokenizer.json), GPT-2's by default
        idx = torch.tensor([text_to_token_ids(self.prompt, tokenizer)])
        started = time.perf_counter()
        with isolate_rng():
            out = pl_module.generate(idx, self.max_new_tokens, self.temperature, self.top_k)
        seconds, new_tokens = time.perf_counter() - started, out.shape[1] - idx.shape[1]
        self.tokens_per_second = new_tokens / seconds if new_tokens and seconds > 0 else None
        return tokenizer.decode(out[0].tolist())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not getattr(pl_module, "generates_text", True):  # e.g. a classifier: its head outputs classes
            return
        text = self.sample(pl_module)
        self.last_text = text
        log.info("Sample at step %d: %s", trainer.global_step, text.replace("\n", " "))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", text, trainer.global_step)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): ``6 N + 12 L H Q T`` (PaLM's appendix B), with
    N the weights that multiply (everything but the token and position embeddings), L layers,
    H * Q = emb_dim, and T the window length attended over."""
    embeddings = sum(p.numel() for name, p in model.named_parameters() if name.split(".")[0] in ("tok_emb", "pos_emb"))
    n_matmul = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * n_matmul + 12 * len(model.trf_blocks) * model.tok_emb.embedding_dim * seq_len


class Throughput(L.Callback):
    """Logs ``train/tokens_per_sec`` every step (all processes together; also on the progress bar)
    and ``train/mfu`` (model FLOPs utilisation) where Lightning knows the device's peak FLOPs (CUDA
    GPUs; not CPUs). A step is timed from batch start to batch end (forward, backward, optimizer),
    so data loading and validation are left out.

    Kept beside Lightning's ``ThroughputMonitor`` (issue 17) for what that one does not give: a
    value from the first step (it reports rolling rates only once ``window_size`` batches, default
    100, have passed: measured on chapter 5's run, ``experiment=ch05``, 90 optimizer steps, it
    logged 0 points where this logged 90), the ``train/tokens_per_sec`` name the dashboards use
    (it logs ``train/items_per_sec`` given a ``length_fn``), and MFU from the model's FLOPs per
    token without a ``flops_per_batch`` on the module."""

    _PRECISION_DTYPES: ClassVar[dict[str, torch.dtype]] = {"bf16": torch.bfloat16, "16": torch.float16}

    def __init__(self) -> None:
        self._started: float | None = None
        self._peak_flops: int | None = None
        self.tokens = 0  # training tokens this process timed, and the seconds they took (results.json's rate)
        self.seconds = 0.0

    @property
    def tokens_per_second(self) -> float | None:
        """Training tokens per second over every timed step of this fit (all processes together)."""
        return self.tokens / self.seconds if self.seconds > 0 else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        precision = str(trainer.precision)
        dtype = next((d for key, d in self._PRECISION_DTYPES.items() if precision.startswith(key)), torch.float32)
        device = pl_module.device
        self._peak_flops = get_available_flops(device, dtype) if device.type == "cuda" else None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._started is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # kernels run asynchronously: wait for this step's
        seconds = time.perf_counter() - self._started
        inputs = batch[0]
        tokens_per_sec = inputs.numel() / seconds  # this process
        self.tokens += inputs.numel() * trainer.world_size
        self.seconds += seconds
        pl_module.log("train/tokens_per_sec", tokens_per_sec * trainer.world_size, prog_bar=True)
        if self._peak_flops:
            model = getattr(pl_module, "model", pl_module)
            pl_module.log("train/mfu", flops_per_token(model, inputs.shape[1]) * tokens_per_sec / self._peak_flops)


class StopOnSignal(L.Callback):
    """SIGTERM (a cluster's preemption, ``kill``) or SIGINT (Ctrl-C) during training: finish the
    current optimizer step, write a checkpoint there through the ModelCheckpoint callback, and
    raise ``RunInterrupted`` (signal, step, checkpoint). Stopping only where an optimizer step has
    just ended keeps the checkpoint exact (no half-accumulated gradients, no half-done step). A step
    that the trainer evaluates after (``trainer.val_check_interval``) stops after that evaluation,
    so the checkpoint holds it: a resume skips the evaluation of the step it starts from, and the
    run's history, results.json and plots would otherwise lack that point (issue 30, case 7). An
    epoch's last step stops there too, before the epoch's end, which the resumed run then records.

    A repeated SIGTERM changes nothing (schedulers and ``kill`` send it more than once; the stop is
    on its way); a second SIGINT (Ctrl-C again) stops at once, without a checkpoint. The handlers
    are this callback's from the training loop's start to its end; the previous ones are put back
    after it. ``RunInterrupted`` is a ``SystemExit`` with code 128 + the signal: uncaught (a
    script's own Trainer), the process ends with status 143 / 130 and no traceback.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._step_at_batch_start = 0
        self._stop_after_evaluation_at: int | None = None  # the step whose evaluation comes before the stop
        self._trainer: L.Trainer | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            log.warning(
                "Received %s: stopping after this optimizer step, with a checkpoint (Ctrl-C / SIGINT stops at once)",
                name,
            )
        elif signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
            raise RunInterrupted(signum, self._trainer.global_step if self._trainer is not None else None)
        else:
            log.warning("Received %s again: still stopping after this optimizer step", name)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self._trainer, self._stop_after_evaluation_at = None, trainer, None
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals to whoever owns them
            self._previous = {}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous, self._trainer = {}, None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start:  # in the middle of an accumulation: not here
            return
        received = self.received is not None
        if trainer.world_size > 1:  # every process stops at the same step (SLURM signals each task)
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        if evaluation_follows(trainer):
            self._stop_after_evaluation_at = trainer.global_step
            log.warning("Stopping after the evaluation of step %d", trainer.global_step)
            return
        self._stop(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._stop_after_evaluation_at == trainer.global_step:
            self._stop(trainer, pl_module)

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the checkpoint of this step (the ModelCheckpoint callback's) and raise ``RunInterrupted``."""
        signum = self.received or signal.SIGTERM
        stop = RunInterrupted(signum, trainer.global_step)
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint):
            # The checkpoint callback's own save on an exception, here, where a step checkpoint would be
            # taken (off otherwise: an exception in mid-step leaves no exact state). It skips a step saved already.
            save_on_exception, callback.save_on_exception = callback.save_on_exception, True
            try:
                callback.on_exception(trainer, pl_module, stop)
            finally:
                callback.save_on_exception = save_on_exception
            if trainer.is_global_zero:
                newest = newest_checkpoint(callback.dirpath)
                stop.checkpoint = str(newest) if newest is not None else None
        log.warning("Stopping at step %d on %s; checkpoint %s", stop.step, stop.signal_name, stop.checkpoint)
        raise stop
