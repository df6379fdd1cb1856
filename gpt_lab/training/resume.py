"""Resuming from ``ckpt_path``: check the checkpoint before training, and say what changes.

``check_resume`` reads the checkpoint's hyper-parameters and tensor shapes (memory-mapped: no
weights are loaded) before anything is built. A file that is not a readable Lightning checkpoint
of GPTLitModule is a ``UserError``; so is a model whose shape keys (vocab_size, context_length,
emb_dim, n_heads, n_layers, qkv_bias, tie_weights) differ from the checkpoint's, with the list of
differences. Optimizer keys that differ (``optim.lr``, ``optim.weight_decay``) are what this run
asked for: ``ResumedOptimizerSettings`` applies them to the restored optimizer (and scales the
restored schedule with the new peak rate) and logs them, so the config on disk is what trained.

``check_resume_data`` (issue 21) compares the data the checkpoint trained on with this run's data
module: a checkpoint holds its position in the data (batches into the epoch for data=text, windows
yielded for data=corpus), which means something only for the same data read in the same batches.
Another data option (text / corpus), another ``data.path`` / ``data.dir`` or another
``data.batch_size`` is refused with the reason, before the model is built. The fine-tuning data
(classification, instructions, preferences; issue 30) the same way: their data modules record their
files and batch size in the checkpoint, and a classifier's class names, in index order, must be
the ones this run's data gives (checked when the data is read, before any split file is written).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from gpt_lab.config.architecture import ARCH_DEFAULTS
from gpt_lab.errors import UserError
from gpt_lab.model.adapters import BASE_WEIGHTS_KEY

log = logging.getLogger(__name__)

# The book's shape keys, then the architecture lab's (issue 25: another variant's checkpoint is refused).
SHAPE_KEYS = (
    "vocab_size",
    "context_length",
    "emb_dim",
    "n_heads",
    "n_layers",
    "qkv_bias",
    "tie_weights",
    *ARCH_DEFAULTS,
)
# GPTLitModule's hyper-parameter → the config key that sets it.
OPTIMIZER_KEYS = {"lr": "optim.lr", "weight_decay": "optim.weight_decay"}
MAX_LISTED = 8


class ResumeError(UserError):
    """``ckpt_path`` cannot resume this run: unreadable, not GPTLitModule's, or another model's shape."""


@dataclass
class TrainedData:
    """What a checkpoint's run read: ``kind`` text, corpus, classification, instructions or preferences
    (None: not known), where (``location`` for text / corpus; ``files``, data key -> path, for the
    fine-tuning data), in batches of how many."""

    kind: str | None = None
    location: str | None = None
    batch_size: int | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class ResumePlan:
    """What resuming from ``path`` changes: optimizer settings ``{name: (checkpoint's, this run's)}``."""

    path: Path
    optimizer_changes: dict[str, tuple[float, float]] = field(default_factory=dict)
    data: TrainedData = field(default_factory=TrainedData)
    class_names: list[str] | None = None  # a classifier's classes, in index order


def trained_data(checkpoint: Mapping[str, Any]) -> TrainedData:
    """The data a checkpoint's run read, from its training loader's state (and the data module's hparams).

    data=corpus: litdata's loader state names the split directory and the batch size; data=text:
    the loader state counts batches, and TextDataModule's hyper-parameters give path and batch size.
    """
    loops = checkpoint.get("loops") if isinstance(checkpoint.get("loops"), Mapping) else {}
    fit = (loops.get("fit_loop") or {}).get("state_dict") or {}
    states = fit.get("combined_loader") or []
    state = states[0] if isinstance(states, list) and states and isinstance(states[0], Mapping) else {}
    hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    if isinstance(hparams.get("data_kind"), str):  # the fine-tuning data (gpt_lab.data.text.save_data_identity)
        files = hparams.get("data_files") if isinstance(hparams.get("data_files"), Mapping) else {}
        return TrainedData(hparams["data_kind"], None, hparams.get("data_batch_size"), dict(files))
    if isinstance(state.get("dataset"), Mapping) and "current_epoch" in state:
        dataset = state["dataset"]
        split_dir = dataset.get("input_dir_url") or dataset.get("input_dir_path")
        location = str(split_dir).rstrip("/").rsplit("/", 1)[0] if split_dir else None
        return TrainedData("corpus", location, dataset.get("batch_size"))
    if "batches_done" in state or "path" in hparams:
        path = hparams.get("path")
        return TrainedData("text", str(path) if path else None, hparams.get("batch_size"))
    return TrainedData()


def _this_run_data(datamodule: Any) -> TrainedData:
    """The same facts about this run's data module (kind None for objectives other than text / corpus)."""
    from gpt_lab.data.corpus import CorpusDataModule
    from gpt_lab.data.text import TextDataModule

    if isinstance(datamodule, CorpusDataModule):
        return TrainedData("corpus", datamodule.data_dir.rstrip("/"), datamodule.batch_size)
    if isinstance(datamodule, TextDataModule):
        return TrainedData("text", str(datamodule.path), datamodule.batch_size)
    hparams = getattr(datamodule, "hparams", None) or {}
    if "data_kind" in hparams:
        return TrainedData(hparams["data_kind"], None, hparams["data_batch_size"], dict(hparams["data_files"]))
    return TrainedData()


def check_resume_data(plan: ResumePlan, datamodule: Any) -> None:
    """Refuse (``ResumeError``) to resume ``plan``'s checkpoint on other data or in other batches (see the module)."""
    saved, this = plan.data, _this_run_data(datamodule)
    if saved.kind is None or this.kind is None:
        return
    if saved.kind == "text" and saved.location is None and this.kind not in ("text", "corpus"):
        return  # a fine-tuning checkpoint of before issue 30: its loader state says nothing of its data
    restart = f"or start a new run from its weights with init_from={plan.path}"
    key = {"text": "data.path", "corpus": "data.dir"}
    if saved.kind != this.kind:
        where = f" {key[saved.kind]}={saved.location}" if saved.location and saved.kind in key else ""
        raise ResumeError(
            f"ckpt_path={plan.path} was trained with data={saved.kind}{where}, and this run reads data={this.kind}: "
            f"a checkpoint resumes only on the data it trained on (its position in that data is part of it). "
            f"Resume with data={saved.kind}{where}, {restart}"
        )
    if saved.files or this.files:
        _check_files(plan.path, saved.files, this.files, restart)
    elif saved.location is not None and not _same_place(saved.location, this.location):
        name = key[this.kind]
        raise ResumeError(
            f"ckpt_path={plan.path} was trained on {name}={saved.location}, and this run reads {name}={this.location}: "
            f"its position in the data means nothing in other data, so batches would be skipped or repeated. "
            f"Resume with {name}={saved.location}, {restart}"
        )
    if saved.batch_size is not None and saved.batch_size != this.batch_size:
        raise ResumeError(
            f"ckpt_path={plan.path} was trained with data.batch_size={saved.batch_size}, and this run asks for "
            f"data.batch_size={this.batch_size}: its position in the epoch is counted in batches of "
            f"{saved.batch_size}, so other batches would skip or repeat windows. Resume with "
            f"data.batch_size={saved.batch_size} (change it at the next run instead), {restart}"
        )
    if plan.class_names and hasattr(datamodule, "expect_class_names"):
        datamodule.expect_class_names(plan.class_names, f"ckpt_path={plan.path}")


def _check_files(path: Path, saved: Mapping[str, str], this: Mapping[str, str], restart: str) -> None:
    """The fine-tuning data files: the same keys naming the same files, or a ``ResumeError`` listing them."""
    differ = [k for k in sorted(set(saved) | set(this)) if k not in saved or not _same_place(saved[k], this.get(k))]
    if differ:
        trained = ", ".join(f"{k}={saved[k]}" for k in sorted(saved)) or "no data file"
        asked = ", ".join(f"{k}={this[k]}" for k in sorted(this)) or "no data file"
        raise ResumeError(
            f"ckpt_path={path} was trained on {trained}, and this run reads {asked}: its position in the data "
            f"(and, for a classifier, what each class index means) holds only for that data. Resume with "
            f"{trained}, {restart}"
        )


def _same_place(a: str, b: str | None) -> bool:
    if b is None:
        return False
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _load(path: Path) -> Mapping[str, Any]:
    advice = "give a .ckpt that task=train wrote (in a run's checkpoints/ folder)"
    if not path.is_file():
        raise ResumeError(f"ckpt_path={path} is not a file; {advice}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ResumeError(
            f"ckpt_path={path} is not a readable Lightning checkpoint (truncated, corrupt, or another kind of "
            f"file: {type(err).__name__}: {reason[:200]}); {advice}"
        ) from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ResumeError(
            f"ckpt_path={path} holds no Lightning state_dict (a book model.pth?); {advice}, or "
            f"start from its weights with init_from={path}"
        )
    return checkpoint


def _expected_shapes(model_cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    from gpt_lab.model.gpt import GPTModel

    with torch.device("meta"):  # shapes only, no memory
        model = GPTModel(dict(model_cfg))
    return {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def check_resume(
    path: Path, model_cfg: Mapping[str, Any], optim: Mapping[str, Any], finetune: str | None = None
) -> ResumePlan:
    """Check that ``path`` can resume a run of ``model_cfg`` (with ``finetune``: whether LoRA adapters
    train, ``lora`` or another option; None: not checked); return what changes (see the module)."""
    checkpoint = _load(path)
    adapters = any(str(k).endswith((".lora_A", ".lora_B")) for k in checkpoint["state_dict"])
    if finetune is not None and adapters != (finetune == "lora"):
        trained = "finetune=lora (its weights hold LoRA adapters)" if adapters else "without LoRA adapters"
        raise ResumeError(
            f"ckpt_path={path} was trained {trained}, and this run asks for finetune={finetune}: a checkpoint "
            f"resumes only what it trained. Resume with {'finetune=lora' if adapters else 'its finetune option'}, "
            f"or start a new run from its weights with init_from={path}"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    saved_model = hparams.get("model_cfg") if isinstance(hparams, Mapping) else None
    differences = []
    if isinstance(saved_model, Mapping):
        for key in SHAPE_KEYS:
            if key in saved_model and saved_model[key] != model_cfg.get(key):
                differences.append(f"model.{key}={model_cfg.get(key)} (checkpoint: {saved_model[key]})")
    if not differences:  # also the truth for checkpoints without hyper-parameters
        # A classifier's checkpoint (issue 18) holds the head its class names give, not the vocabulary's.
        classes = hparams.get("class_names") if isinstance(hparams, Mapping) else None
        expected = _expected_shapes({**model_cfg, "num_classes": len(classes)} if classes else model_cfg)
        state = checkpoint["state_dict"]
        # LoRA adapters (finetune=lora) are not part of the model's shape: this run adds its own.
        model_keys = [k for k in state if k.startswith("model.") and not k.endswith((".lora_A", ".lora_B"))]
        # A LoRA run's checkpoint leaves out the base it refers to (gpt_lab.model.adapters); a resume checks it.
        base = checkpoint.get(BASE_WEIGHTS_KEY)
        left_out = {f"model.{k}" for k in base.get("keys", [])} if isinstance(base, Mapping) else set()
        if not model_keys and not left_out:  # a family's LoRA checkpoint may hold adapters only (no buffers)
            raise ResumeError(f"ckpt_path={path} is a Lightning checkpoint without GPTLitModule's model.* weights")
        for key in sorted(set(expected) | set(model_keys)):
            if key in left_out and key not in state:
                continue
            found = tuple(state[key].shape) if key in state else None
            if found != expected.get(key):
                differences.append(
                    f"{key}: {expected.get(key) or 'absent'} here, {found or 'absent'} in the checkpoint"
                )
    if differences:
        listed = "; ".join(differences[:MAX_LISTED]) + ("; ..." if len(differences) > MAX_LISTED else "")
        raise ResumeError(
            f"ckpt_path={path} holds a model of another shape than this run's: {listed}. Resume with the "
            f"checkpoint's model settings, or start a new run from its weights with init_from={path}"
        )
    plan = ResumePlan(path, data=trained_data(checkpoint))
    if isinstance(hparams, Mapping) and isinstance(hparams.get("class_names"), list):
        plan.class_names = [str(name) for name in hparams["class_names"]]
    for name, key in OPTIMIZER_KEYS.items():
        saved, wanted = hparams.get(name), optim.get(name)
        if isinstance(saved, int | float) and wanted is not None and float(saved) != float(wanted):
            plan.optimizer_changes[name] = (float(saved), float(wanted))
            log.info(
                "Resuming with %s=%g (the checkpoint trained with %g): applied to the restored optimizer",
                key,
                wanted,
                saved,
            )
    return plan


class ResumedOptimizerSettings(L.Callback):
    """After Lightning restores the optimizer and schedule from the checkpoint, apply this run's settings.

    The learning rate is scaled by new / old in every parameter group and in the schedulers'
    ``base_lrs``, so a schedule keeps its shape around the new peak; weight decay is set.
    """

    def __init__(self, changes: Mapping[str, tuple[float, float]]) -> None:
        self.changes = dict(changes)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "lr" in self.changes:
            old, new = self.changes["lr"]

            def rescale(lr: float) -> float:  # exactly the new rate where the schedule stands at the old one
                return new if lr == old else lr * new / old

            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = rescale(group["lr"])
                    if "initial_lr" in group:
                        group["initial_lr"] = rescale(group["initial_lr"])
            for config in trainer.lr_scheduler_configs:
                if hasattr(config.scheduler, "base_lrs"):
                    config.scheduler.base_lrs = [rescale(lr) for lr in config.scheduler.base_lrs]
        if "weight_decay" in self.changes:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["weight_decay"] = self.changes["weight_decay"][1]
