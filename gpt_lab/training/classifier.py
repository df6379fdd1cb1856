"""Chapter 6's objective: fine-tune the GPT model to classify texts (``data=classification``).

The model is built as the run's ``GPTModel`` and given its starting weights, then — the book's
order — ``torch.manual_seed(seed)`` and the output head replaced by ``Linear(emb_dim,
num_classes)``, then what trains is chosen (``finetune=``: the book's ``last_block``, or LoRA,
whose adapters draw after the head, as appendix E). Loss: cross-entropy of the logits read at
``classifier.pooling``. Logged: ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``,
and each epoch the book's accuracies over a few batches. At the end (``finish``): accuracy and loss
over the full train / validation / test sets, per-class precision / recall / F1 and the confusion
matrix (torchmetrics), the book's two figures and a confusion-matrix picture (PNG), and the model
as ``model.pth`` + ``model.json`` (class names, pooling, padded length).

Everything GPTLitModule does around the step (AdamW over the trainable parameters, the schedule,
clipping, exact resume) is inherited.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.seed import isolate_rng

from gpt_lab.config import input_path
from gpt_lab.model.classifier import PAD_TOKEN_ID, pooled_logits, replace_head
from gpt_lab.model.finetune import load_base_state
from gpt_lab.model.gpt import GPTModel, model_config_dict
from gpt_lab.training.fsdp import gathered_model_state
from gpt_lab.training.lit_module import GPTLitModule, NonFiniteLossError

log = logging.getLogger(__name__)


class ClassifierLitModule(GPTLitModule):
    """Trains ``self.model``, a ``GPTModel`` with a ``num_classes``-way head, on labelled texts.

    ``init_state``: starting weights (a state dict of the run's model config, vocabulary head or
    a classification head), loaded before the head is replaced; not a hyper-parameter, so
    ``load_from_checkpoint`` builds the same structure and fills it from the checkpoint.
    """

    generates_text = False  # SampleText has nothing to continue: the head outputs classes
    pad_token_id: int = PAD_TOKEN_ID  # what pads its texts (the data's ``pad_id``); pooling=last_nonpad reads it

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        class_names: Sequence[str],
        lr: float,
        weight_decay: float,
        pooling: str = "last",
        finetune: str = "last_block",
        lora: Mapping[str, Any] | None = None,
        seed: int = 123,
        scheduler: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        initial_eval_batches: int | None = 10,
        epoch_eval_batches: int | None = 5,
        max_length: int | None = None,
        init_state: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        cfg = model_config_dict(model_cfg)
        model = GPTModel(cfg)
        if init_state:
            load_base_state(model, init_state)
        new_head = model.cfg["num_classes"] != len(class_names)
        if new_head:
            torch.manual_seed(seed)  # the book seeds right before the new head
            replace_head(model, len(class_names))
        super().__init__(
            cfg,
            lr,
            weight_decay,
            max_new_tokens=0,
            scheduler=scheduler,
            clip_grad_norm=clip_grad_norm,
            finetune=finetune,
            lora=lora,
            model=model,
        )
        # One call holds every hyper-parameter (a second save_hyperparameters would replace the first's).
        self.save_hyperparameters(
            {
                **self.hparams,
                "class_names": list(class_names),
                "pooling": pooling,
                "seed": int(seed),
                "initial_eval_batches": initial_eval_batches,
                "epoch_eval_batches": epoch_eval_batches,
                "max_length": max_length,
            }
        )
        head_adapted = any("lora" in name for name, _ in self.model.out_head.named_parameters())
        if new_head and finetune == "lora" and not head_adapted:
            # lora.targets left the new head out: it trains whole (peft's modules_to_save), not frozen at
            # its random values. A targeted head trains through its adapter (appendix E's count).
            self.model.out_head.requires_grad_(True)
            self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.examples_seen = 0
        self.warmup_steps = 0
        self._resume_rng_state: torch.Tensor | None = None
        self._resume_cuda_rng_state: list[torch.Tensor] | None = None
        # The book's curves: losses at each evaluation, accuracies at each epoch's end.
        self.eval_history: list[dict[str, float | int]] = []
        self.epoch_history: list[dict[str, float | int]] = []
        self.initial_metrics: dict[str, float] = {}
        self._window: list[float] = []

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        model_cfg: Mapping[str, Any],
        init_state: Mapping[str, torch.Tensor] | None,
        datamodule: Any = None,
    ) -> ClassifierLitModule:
        """The run's classifier; ``datamodule`` (set up) gives the class names and the padded length."""
        if datamodule is None or not getattr(datamodule, "class_names", None):
            raise ValueError("ClassifierLitModule.from_config needs the set-up classification data module")
        lit = cls(
            model_cfg,
            class_names=datamodule.class_names,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            pooling=cfg.classifier.pooling,
            finetune=cfg.finetune.name,
            lora=cfg.lora,
            seed=cfg.seed,
            scheduler=dict(cfg.scheduler),
            clip_grad_norm=cfg.optim.clip_grad_norm,
            initial_eval_batches=cfg.classifier.initial_eval_batches,
            epoch_eval_batches=cfg.classifier.epoch_eval_batches,
            max_length=datamodule.max_length if datamodule.pad else None,
            init_state=init_state,
        )
        lit.pad_token_id = int(getattr(datamodule, "pad_id", PAD_TOKEN_ID))  # a family's id with its tokenizer
        lit.remember_base(cfg.init_from and str(input_path(cfg, cfg.init_from)), init_state)
        return lit

    # -- the objective ---------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (b, t) → class logits (b, num_classes)."""
        return pooled_logits(self.model, idx, self.hparams.pooling, self.pad_token_id)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the {stage} loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}) with optim.lr={self.hparams.lr}: training diverged; lower optim.lr "
                "or check the data"
            )
        self._accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "training", batch_idx)
        self.tokens_seen += batch[0].numel() * self.trainer.world_size
        self.examples_seen += batch[0].shape[0] * self.trainer.world_size
        self._window.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/accuracy", self._accuracy)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/examples_seen", float(self.examples_seen))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "validation", batch_idx)
        n = batch[0].shape[0]
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/accuracy", self._accuracy, prog_bar=True, batch_size=n, sync_dist=True)
        return loss

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val/loss")
        self.eval_history.append(
            {
                "step": self.global_step,
                "epoch": self._epochs_done(),
                "examples_seen": self.examples_seen,
                "train_loss": sum(self._window) / len(self._window) if self._window else float("nan"),
                "val_loss": float(val) if val is not None else float("nan"),
            }
        )
        self._window = []

    def _history_from_step_0(self, trainer: L.Trainer) -> list[dict[str, float | int]]:
        """The evaluations, led by the losses before the first step (the initial-loss callback's), as the
        book's log and the DPO plot start: a curve even when training evaluated once."""
        from gpt_lab.training.callbacks import InitialLossEvaluation

        initial = next((c for c in trainer.callbacks if isinstance(c, InitialLossEvaluation)), None)
        if initial is None or initial.train_loss is None or any(r["step"] == 0 for r in self.eval_history):
            return list(self.eval_history)
        start = {"step": 0, "epoch": 0.0, "examples_seen": 0, "train_loss": initial.train_loss}
        return [{**start, "val_loss": initial.val_loss}, *self.eval_history]

    def _epochs_done(self) -> float:
        batches = self.trainer.num_training_batches
        if not batches or batches == float("inf"):
            return float(self.current_epoch)
        return self.global_step * self.trainer.accumulate_grad_batches / batches

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any], max_batches: int | None = None) -> dict[str, Any]:
        """Eval-mode loss, accuracy and predictions over ``batches`` (the first ``max_batches``)."""
        was_training = self.model.training
        self.model.eval()
        preds, targets, loss_sum = [], [], 0.0
        for inputs, labels in itertools.islice(batches, max_batches):
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            logits = self(inputs).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            preds.append(logits.argmax(dim=-1).cpu())
            targets.append(labels.cpu())
        self.model.train(was_training)
        if not preds:
            return {"loss": float("nan"), "accuracy": float("nan"), "preds": torch.empty(0), "targets": torch.empty(0)}
        p, t = torch.cat(preds), torch.cat(targets)
        return {"loss": loss_sum / len(t), "accuracy": float((p == t).float().mean()), "preds": p, "targets": t}

    def mean_loss(self, batches: Any) -> float:
        """The loss the initial-loss callback reports (over ``classifier.initial_eval_batches``, the book's few)."""
        return self.evaluate(batches, self.hparams.initial_eval_batches)["loss"]

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.global_step > 0 or self.initial_metrics:
            return  # resumed: the checkpoint holds them
        datamodule = self.trainer.datamodule
        n = self.hparams.initial_eval_batches
        with isolate_rng():
            # The book: torch.manual_seed(123), then the first n batches of its shuffled train_loader
            # and of the validation and test loaders in order (every text in order when n is None).
            torch.manual_seed(self.hparams.seed)
            for split in ("train", "val", "test"):
                shuffled = split == "train" and n is not None
                batches = datamodule.book_shuffled_dataloader() if shuffled else datamodule.eval_dataloader(split)
                self.initial_metrics[f"initial_{split}_accuracy"] = self.evaluate(batches, n)["accuracy"]
        for logger in self.trainer.loggers:
            logger.log_metrics(
                {f"{s}/accuracy_initial": self.initial_metrics[f"initial_{s}_accuracy"] for s in ("train", "val")},
                step=0,
            )
        if self.trainer.is_global_zero:
            log.info(
                "Accuracy before fine-tuning (%s batches): training %.2f%%, validation %.2f%%, test %.2f%%",
                n or "all",
                *(100 * self.initial_metrics[f"initial_{s}_accuracy"] for s in ("train", "val", "test")),
            )

    def on_train_epoch_end(self) -> None:
        datamodule = self.trainer.datamodule
        n = self.hparams.epoch_eval_batches
        with isolate_rng():
            train = self.evaluate(datamodule.eval_dataloader("train"), n)["accuracy"]
            val = self.evaluate(datamodule.eval_dataloader("val"), n)["accuracy"]
        self.log("train/accuracy_epoch", train)
        self.log("val/accuracy_epoch", val)
        if self.epoch_history and self.epoch_history[-1]["epoch"] == self.current_epoch + 1:
            self.epoch_history.pop()  # a run resumed from this epoch's end checkpoint ends the epoch again
        self.epoch_history.append(
            {
                "epoch": self.current_epoch + 1,
                "step": self.global_step,
                "examples_seen": self.examples_seen,
                "train_accuracy": train,
                "val_accuracy": val,
            }
        )
        if self.trainer.is_global_zero:
            log.info("Training accuracy: %.2f%% | Validation accuracy: %.2f%%", 100 * train, 100 * val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["classifier_state"] = {
            "examples_seen": self.examples_seen,
            "eval_history": self.eval_history,
            "epoch_history": self.epoch_history,
            "initial_metrics": self.initial_metrics,
            "window": self._window,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("classifier_state") or {}
        self.examples_seen = int(state.get("examples_seen", 0))
        self.eval_history = list(state.get("eval_history", []))
        self.epoch_history = list(state.get("epoch_history", []))
        self.initial_metrics = dict(state.get("initial_metrics", {}))
        self._window = list(state.get("window", []))

    # -- the end of the run ----------------------------------------------------------------------
    def finish(self, trainer: L.Trainer, datamodule: Any, cfg: Any) -> dict[str, Any]:
        """Full-set accuracies and losses, per-class metrics, figures, and the model file."""
        from gpt_lab.training.classification_report import class_metrics, save_figures

        names = list(self.hparams.class_names)
        final = {split: self.evaluate(_progress(datamodule.eval_dataloader(split), split)) for split in SPLITS}
        results: dict[str, Any] = {"class_names": names, **datamodule.split_sizes()}
        for split, r in final.items():
            results[f"{split}_accuracy"] = r["accuracy"]
            results[f"{split}_loss"] = r["loss"]
        results.update(self.initial_metrics)
        metrics = {
            split: class_metrics(final[split]["preds"], final[split]["targets"], names) for split in ("val", "test")
        }
        for split, m in metrics.items():
            results[f"{split}_metrics"] = m
        results["max_length"] = datamodule.max_length if datamodule.pad else None
        results["truncated_texts"] = dict(datamodule.truncated)
        results["examples_seen"] = self.examples_seen
        results["tokens_seen"] = self.tokens_seen
        results["eval_history"] = self._history_from_step_0(trainer)
        results["epoch_history"] = self.epoch_history
        state = gathered_model_state(trainer)  # every process: FSDP gathers its shards
        if trainer.is_global_zero:
            log.info(
                "Accuracy over the full sets: training %.2f%%, validation %.2f%%, test %.2f%%",
                *(100 * results[f"{s}_accuracy"] for s in ("train", "val", "test")),
            )
            out = Path(cfg.paths.output_dir)
            meta = {
                "kind": "classifier",
                "class_names": names,
                "pooling": self.hparams.pooling,
                "max_length": results["max_length"],
                "pad_token_id": self.pad_token_id,
                "finetune": self.hparams.finetune,
                "lora": self.hparams.lora if self.hparams.finetune == "lora" else None,
                "prompt_style": None,
            }
            results["model_file"] = str(self.write_model_files(out, meta, state))
            figures = save_figures(out, results["eval_history"], self.epoch_history, metrics["test"], names)
            results["figures"] = {k: str(v) for k, v in figures.items()}
            self._log_final(trainer, results, figures)
        return results

    def _log_final(self, trainer: L.Trainer, results: dict[str, Any], figures: Mapping[str, Path]) -> None:
        scalars = {f"final/{s}_accuracy": results[f"{s}_accuracy"] for s in ("train", "val", "test")}
        for split in ("val", "test"):
            m = results[f"{split}_metrics"]
            for metric in ("precision", "recall", "f1"):
                for name, value in m[metric].items():
                    scalars[f"{split}/{metric}/{name}"] = value
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                from gpt_lab.training.classification_report import confusion_figure

                fig = confusion_figure(results["test_metrics"]["confusion_matrix"], results["class_names"])
                logger.experiment.add_figure("test/confusion_matrix", fig, trainer.global_step)


SPLITS = ("train", "val", "test")


def _progress(loader: Any, split: str) -> Any:
    """``loader`` with a progress bar on stderr: a full-set evaluation of a large split takes minutes."""
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"Evaluating the full {split} split", unit="batch", leave=False)
