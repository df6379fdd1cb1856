"""Chapter 7's objective: next-token loss on instruction entries (padding ignored), answers to read.

``InstructionLitModule`` is ``GPTLitModule`` (the book's loss and AdamW, ``finetune=``) with what
the chapter adds: losses averaged as the book's ``calc_loss_loader`` (the mean of batch means), the
first validation instruction answered after each epoch, and at the end the test split answered
into ``test-responses.json``, the book's loss plot, and the weights saved with their prompt style.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gpt_lab.generation.prompt_styles import get_prompt_style
from gpt_lab.generation.responses import BOOK_RESPONSE_TOKENS, RESPONSES_FILE, answer, generate_responses
from gpt_lab.storage import write_text_atomic
from gpt_lab.training.callbacks import LossHistory
from gpt_lab.training.fsdp import gathered_model_state
from gpt_lab.training.lit_module import GPTLitModule
from gpt_lab.training.loss import mean_loss
from gpt_lab.training.loss_plot import plot_losses

log = logging.getLogger(__name__)

LOSS_PLOT_FILE = "loss-plot.png"
EPOCH_RESPONSE_TOKENS = 50  # the book's generate_and_print_sample after each epoch


class InstructionLitModule(GPTLitModule):
    """``data=instructions``: GPTLitModule plus chapter 7's answers, plot and prompt style."""

    prompt_style: str = "alpaca"
    response_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_responses: list[dict[str, Any]] = []  # the first validation instruction, answered per epoch

    @classmethod
    def from_config(cls, cfg: Any, model_cfg: Any, init_state: Any, datamodule: Any = None) -> InstructionLitModule:
        lit = super().from_config(cfg, model_cfg, init_state, datamodule)
        lit.prompt_style = get_prompt_style(cfg.data.prompt_style).name
        lit.response_tokens = cfg.max_response_tokens or BOOK_RESPONSE_TOKENS
        lit.temperature, lit.top_k = cfg.temperature, cfg.top_k
        return lit

    def mean_loss(self, batches: Any) -> float:
        """The book's ``calc_loss_loader``: the mean of the batches' mean losses (padding ignored)."""
        return mean_loss(self.model, batches, self.device, per_batch=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "validation", batch_idx)
        # Each batch counts once, as calc_loss_loader (and results.json's val_loss) count it: the logged
        # val/loss over the same batches is the same number (docs/instructions.md, "Losses").
        self.log("val/loss", loss, prog_bar=True, batch_size=1, sync_dist=True)
        return loss

    def _first_val_entry(self) -> dict[str, Any] | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        entries = getattr(datamodule, "splits", {}).get("val") or []
        return entries[0] if entries else None

    def on_train_epoch_end(self) -> None:
        """The book prints the model's answer to the first validation instruction after each epoch."""
        entry = self._first_val_entry()
        if entry is None or not self.trainer.is_global_zero:
            return
        got = answer(self.model, self.tokenizer, entry, self.prompt_style, EPOCH_RESPONSE_TOKENS)
        if self.epoch_responses and self.epoch_responses[-1]["epoch"] == self.current_epoch + 1:
            self.epoch_responses.pop()  # a run resumed from this epoch's end checkpoint ends the epoch again
        self.epoch_responses.append(
            {"epoch": self.current_epoch + 1, "step": self.global_step, "response": got["response"]}
        )
        log.info("Epoch %d, the first validation instruction answered: %s", self.current_epoch + 1, got["response"])
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("val_response", got["output_text"], self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["epoch_responses"] = list(self.epoch_responses)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.epoch_responses = list(checkpoint.get("epoch_responses", []))

    def save_model(self, run_dir: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """``model.pth`` (adapters merged, the book's layout) and ``model.json``: its config and prompt style.
        ``state``: the whole state dict when the model is sharded (FSDP)."""
        meta = {"prompt_style": self.prompt_style, "finetune": self.hparams.finetune, "lora": self.hparams.lora}
        return self.write_model_files(run_dir, meta, state)

    def finish(self, trainer: L.Trainer, datamodule: Any, cfg: Any) -> dict[str, Any]:
        """Final losses, the model and its prompt style, the loss plot, then the test split answered."""
        train_loss = self.mean_loss(datamodule.eval_dataloader("train"))
        val_loss = self.mean_loss(datamodule.eval_dataloader("val"))
        results: dict[str, Any] = {
            **datamodule.split_sizes(),
            "prompt_style": self.prompt_style,
            "mask_prompt": datamodule.mask_prompt,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "tokens_seen": self.tokens_seen,
            "epoch_responses": list(self.epoch_responses),
        }
        state = gathered_model_state(trainer)  # every process: FSDP gathers its shards
        if not trainer.is_global_zero:
            return results
        log.info("Final losses: training %.4f, validation %.4f", train_loss, val_loss)
        run_dir = Path(cfg.paths.output_dir)
        results["book_checkpoint"] = str(self.save_model(run_dir, state))
        history = next((c for c in trainer.callbacks if isinstance(c, LossHistory)), None)
        steps_per_epoch = max(int(trainer.num_training_batches) // trainer.accumulate_grad_batches, 1)
        plot = plot_losses(history.evaluations if history else [], steps_per_epoch, run_dir / LOSS_PLOT_FILE)
        results["loss_plot"] = str(plot) if plot else None

        tokenizer = self.tokenizer
        torch.manual_seed(cfg.seed)  # sampled answers (temperature > 0) depend on the seed only
        entry = self._first_val_entry()
        if entry is not None:
            got = answer(
                self.model, tokenizer, entry, self.prompt_style, self.response_tokens, self.temperature, self.top_k
            )
            results.update(got)
        test = datamodule.splits.get("test") or []
        if test:
            responses = generate_responses(
                self.model, tokenizer, test, self.prompt_style, self.response_tokens, self.temperature, self.top_k
            )
            path = write_text_atomic(
                run_dir / RESPONSES_FILE, json.dumps(responses, indent=4, ensure_ascii=False) + "\n"
            )
            results["responses"] = str(path)
            log.info("Test responses: %s (%d entries)", path, len(responses))
        else:
            log.info("No test split (data.test_path not given): no test responses written")
        return results
