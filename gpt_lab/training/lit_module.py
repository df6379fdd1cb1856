"""The LightningModule around chapter 4's GPTModel: the book's loss, AdamW (with appendix D's
schedule and gradient clipping when configured), greedy generation.

Every objective ``task=train`` runs (``objective.lit_module`` names its class) follows the same small
protocol: ``from_config(cfg, model_cfg, init_state, datamodule)`` builds it, ``mean_loss(loader)`` is the loss
the callbacks report before and after training, ``finish(trainer, datamodule, cfg)`` writes the
objective's own files and returns its results.json fields.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.sampling import generate
from gpt_lab.model.adapters import BASE_WEIGHTS_KEY, base_reference, write_adapter
from gpt_lab.model.adapters import base_keys as find_base_keys
from gpt_lab.model.finetune import load_base_state, lora_settings, select_trainable
from gpt_lab.model.gpt import GPTModel, model_config_dict
from gpt_lab.model.model_file import MODEL_FILE
from gpt_lab.training.loss import batch_loss, mean_loss
from gpt_lab.training.schedule import build_scheduler, resolve_schedule

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite: training diverged."""


def check_same_base(saved: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Refuse to resume a LoRA checkpoint (it holds no base) on base weights other than its own."""
    if saved.get("path") != now.get("path"):
        raise UserError(
            f"ckpt_path: this LoRA checkpoint holds the adapters only; its base weights were "
            f"init_from={saved.get('path') or 'null (drawn from the seed)'} and this run gives "
            f"init_from={now.get('path') or 'null'}. Resume with the init_from the run started from (if those weights "
            "moved, put them back where they were), or start a new run from this run's model.pth"
        )
    if saved.get("fingerprint") != now.get("fingerprint"):
        raise UserError(
            f"ckpt_path: this LoRA checkpoint holds the adapters only, and the base weights at "
            f"init_from={now.get('path') or 'null (drawn from the seed)'} are not the ones it was trained on (their "
            "checksum differs: the file changed, or the seed or model settings did). Resume on the original base "
            "weights, or start a new run from this run's model.pth"
        )


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
    from an epoch-end checkpoint continues exactly as the uninterrupted run would. A LoRA run's
    checkpoints on ``init_from`` weights leave that base out (``gpt_lab.model.adapters``): they hold
    the adapters, whatever else trains or was made new (a head), the optimizer state, and a
    reference to the base weights (``init_from`` path and checksum) that a resume checks.
    """

    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        lr: float,
        weight_decay: float,
        max_new_tokens: int = 50,
        scheduler: Mapping[str, Any] | None = None,
        clip_grad_norm: float | None = None,
        finetune: str = "all",
        lora: Mapping[str, Any] | None = None,
        model: GPTModel | None = None,
    ) -> None:
        """``model``: the ``GPTModel`` to train, built from ``model_cfg`` by a subclass that changes it
        first (a classification head); None builds ``GPTModel(model_cfg)`` here."""
        super().__init__()
        cfg = _primitive(model_config_dict(model_cfg))
        lora_cfg = lora_settings(lora)
        self.save_hyperparameters(
            {
                "model_cfg": cfg,
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "max_new_tokens": max_new_tokens,
                "scheduler": _primitive(dict(scheduler or {"name": "constant"})),
                "clip_grad_norm": None if clip_grad_norm is None else float(clip_grad_norm),
                "finetune": finetune,
                "lora": lora_cfg,
            }
        )
        self.model = GPTModel(cfg) if model is None else model
        # What trains (finetune=): LoRA adapters are added here, so a checkpoint's keys match on resume.
        self.trainable_params = select_trainable(self.model, finetune, lora_cfg)
        # For the TensorBoard graph and the model summary: any length up to the context traces the same graph.
        self.example_input_array = torch.zeros((1, min(8, self.model.context_length)), dtype=torch.long)
        self.tokens_seen = 0
        self.warmup_steps = 0  # the schedule's, set when training starts: clipping starts here
        self._resume_rng_state: torch.Tensor | None = None
        self._resume_cuda_rng_state: list[torch.Tensor] | None = None
        # A LoRA run's base: where it came from, its parameters' names, and (made when first asked for) the reference.
        self._base_path: str | None = None
        self._base_keys: list[str] | None = None
        self._base: dict[str, Any] | None = None

    # -- a LoRA run's base: left out of checkpoints, referred to instead ------------------------------

    def remember_base(self, init_from: str | None, init_state: Mapping[str, torch.Tensor] | None) -> None:
        """Where the base weights came from (``init_from``, its state dict; None: drawn from the seed)."""
        self._base_path, self._base_keys, self._base = init_from, find_base_keys(self.model, init_state), None

    @property
    def adapters_only(self) -> bool:
        """A LoRA run on base weights read from ``init_from``: its checkpoints refer to them instead of
        holding them (a base drawn from the seed has no file to refer to: it stays in the checkpoints)."""
        return self.hparams.get("finetune") == "lora" and self._base_path is not None

    @property
    def base_keys(self) -> list[str]:
        """The model's parameters its base provides (``gpt_lab.model.adapters.base_keys``)."""
        if self._base_keys is None:
            self._base_keys = find_base_keys(self.model, None)
        return self._base_keys

    @property
    def base_reference(self) -> dict[str, Any]:
        """``{"path", "fingerprint", "keys"}`` of the frozen base (``gpt_lab.model.adapters``), computed once."""
        if self._base is None:
            self._base = base_reference(self.model, self.base_keys, self._base_path)
        return self._base

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        if self.adapters_only and not getattr(self, "whole_state_dict", False):
            prefix = kwargs.get("prefix", "")
            for key in self.base_keys:
                state.pop(f"{prefix}model.{key}", None)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if self.adapters_only:  # the base keys a checkpoint left out: the model holds them already
            own = self.model.state_dict()  # (loaded from init_from, or drawn from the seed)
            state_dict = {**{f"model.{k}": own[k] for k in self.base_keys}, **state_dict}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        model_cfg: Mapping[str, Any],
        init_state: Mapping[str, torch.Tensor] | None,
        datamodule: Any = None,
    ) -> Any:
        """The module of a run: ``model_cfg`` built (seeded by the caller), starting from ``init_state``.

        Every objective's module is built through this one signature (``objective.lit_module``'s
        ``from_config``); ``datamodule``, set up, is there for the objectives that read the data
        (a classifier's class names)."""
        lit = cls(
            model_cfg,
            lr=cfg.optim.lr,
            weight_decay=cfg.optim.weight_decay,
            scheduler=dict(cfg.scheduler),
            clip_grad_norm=cfg.optim.clip_grad_norm,
            finetune=cfg.finetune.name,
            lora=cfg.lora,
        )
        if init_state:
            load_base_state(lit.model, init_state)
        lit.remember_base(cfg.init_from and str(input_path(cfg, cfg.init_from)), init_state)
        return lit

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the run's data was read with (the model's: a family's tokenizer.json,
        gpt_lab.data.text.run_tokenizer); GPT-2's when the module is used without a data module."""
        from gpt_lab.tokenizer import get_tokenizer

        trainer = self._trainer  # None outside a fit (Lightning's ``trainer`` property raises then)
        return getattr(getattr(trainer, "datamodule", None), "tokenizer", None) or get_tokenizer()

    def mean_loss(self, batches: Any) -> float:
        """The objective's mean loss over ``batches`` in eval mode (the book's ``calc_loss_loader``)."""
        return mean_loss(self.model, batches, self.device)

    def finish(self, trainer: L.Trainer, datamodule: Any, cfg: Any) -> dict[str, Any]:
        """After ``fit``: final losses over the whole sets, a sample continuation, the book's ``model.pth``."""
        from gpt_lab.config.architecture import is_book_architecture
        from gpt_lab.generation.prompts import continue_prompt, encode_prompt
        from gpt_lab.model.book_checkpoint import save_book_checkpoint
        from gpt_lab.model.finetuned import write_meta
        from gpt_lab.training.fsdp import gathered_model_state

        train_loss = self.mean_loss(datamodule.eval_dataloader("train"))
        val_loss = self.mean_loss(datamodule.eval_dataloader("val"))
        if trainer.is_global_zero:
            log.info("Final losses: training %.4f, validation %.4f", train_loss, val_loss)
        tokenizer = getattr(datamodule, "tokenizer", None) or self.tokenizer
        sample = continue_prompt(self.model, tokenizer, encode_prompt(tokenizer, cfg.prompt), cfg)
        book_path = Path(cfg.paths.output_dir) / MODEL_FILE
        state = gathered_model_state(trainer)  # every process: FSDP gathers its shards
        if trainer.is_global_zero:
            if self.hparams.finetune == "all" and is_book_architecture(self.model.cfg):
                save_book_checkpoint(self.model, book_path)
                write_meta(self.model, cfg.paths.output_dir, {"finetune": "all"})  # init_from=<run> builds it
            else:  # adapters merged, and model.json saying how it was made (an architecture variant's parts)
                meta = {"finetune": self.hparams.finetune, "lora": self.hparams.lora}
                self.write_model_files(cfg.paths.output_dir, meta, state)
        results = {
            "prompt": cfg.prompt,
            **sample,
            "data_path": str(datamodule.path),
            "train_tokens": datamodule.n_train_tokens,
            "val_tokens": datamodule.n_val_tokens,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "tokens_seen": self.tokens_seen,
            "book_checkpoint": str(book_path),
        }
        if hasattr(datamodule, "split_sizes"):
            results.update(datamodule.split_sizes())
        return results

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

    def configure_optimizers(self) -> Any:
        # parameters() yields a tied weight once; the book decays every parameter. Frozen ones
        # (finetune=last_block, lora, ...) stay out of the optimizer.
        params = [p for p in self.model.parameters() if p.requires_grad]
        fused = all(p.device.type in _fused_adamw_devices() for p in params)
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused or None
        )
        if self.hparams.scheduler.get("name", "constant") == "constant":
            return optimizer
        scheduler = build_scheduler(optimizer, self.hparams.scheduler, self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Log the global gradient norm (before clipping) every step; clip it to ``clip_grad_norm``
        from the end of warmup on (appendix D: ``global_step >= warmup_steps``)."""
        limit = self.hparams.clip_grad_norm
        clip = limit is not None and self.global_step >= self.warmup_steps
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # FSDP: each process holds a shard; only the wrapped root module knows the global norm.
            norm = self.trainer.model.clip_grad_norm_(limit if clip else math.inf)
        else:
            params = [p for p in self.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
            if clip:  # with the norm just computed (clip_grad_norm_ would compute it again)
                torch.nn.utils.clip_grads_with_norm_(params, limit, norm)
            elif gradient_clip_val:  # Lightning's own trainer.gradient_clip_val, unconditional
                self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.log("train/grad_norm", norm.float())

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

    def write_model_files(
        self, out_dir: str | Path, meta: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> Path:
        """``model.pth`` and ``model.json`` (``save_finetuned``; ``state``: the whole state dict when the
        model is sharded, FSDP); a LoRA run on ``init_from`` weights adds ``adapter.safetensors`` and
        ``adapter.json`` (its own tensors and the base reference)."""
        from gpt_lab.model.finetuned import save_finetuned

        path = save_finetuned(self.model, out_dir, meta, state)
        if self.adapters_only:
            write_adapter(self.model, Path(out_dir), self.hparams.lora, self.base_reference)
        return path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.adapters_only:
            checkpoint[BASE_WEIGHTS_KEY] = self.base_reference
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(BASE_WEIGHTS_KEY)
        if saved is not None and self.hparams.get("finetune") == "lora":
            check_same_base(saved, self.base_reference)
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self._resume_rng_state = checkpoint.get("rng_state")
        self._resume_cuda_rng_state = checkpoint.get("cuda_rng_state")

    # Lightning writes a step's scalars at the count of optimizer steps finished before that step (the
    # loss of step 1 at 0, an evaluation after step 5 at 4); a logged ``step`` is the x-axis it uses
    # instead, so TensorBoard and CSV name the step the progress lines, results.json and the plots name.
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.log("step", float(self.global_step + 1))  # the optimizer step this batch is part of

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("step", float(self.global_step), batch_size=1)  # the steps taken before this evaluation

    def on_train_start(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            # Lightning's count of optimizer steps (epochs x batches / accumulation, or max_steps), asked
            # for only now that the training loader exists and the checkpoint (if any) is restored.
            self.warmup_steps = resolve_schedule(scheduler, self.trainer.estimated_stepping_batches)
        # Restored here, after the sanity check and just before the first batch, where the
        # uninterrupted run stood when it saved the checkpoint.
        if self._resume_rng_state is not None:
            torch.set_rng_state(self._resume_rng_state.cpu())
            if self._resume_cuda_rng_state is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._resume_cuda_rng_state)
            self._resume_rng_state = None
