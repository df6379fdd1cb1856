"""The train task: fit the LightningModule that ``objective.lit_module`` names on the data module that
``data._target_`` builds, with a Lightning Trainer from config. One task for every objective.

Order of work: the Trainer, its loggers and callbacks first (``build_trainer``: a bad setting is a
config error before anything heavy), then the checkpoint to resume and the data are checked, then
the model is built. Random draws as in the book: seed, build the model; seed again, then the data.
Writes into the run directory: Lightning checkpoints (``checkpoints/``), TensorBoard events, and
what the objective's ``finish`` writes (chapter 5: the trained weights as the book's ``model.pth``).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_method, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import input_path
from gpt_lab.data.text import DataError
from gpt_lab.errors import ConfigError, UserError, first_line
from gpt_lab.hf_tokenizer import HFTokenizer, check_vocab, copy_tokenizer_files
from gpt_lab.model.estimate import architecture_figures
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import init_model_config, require_language_model
from gpt_lab.run.preflight import check_components
from gpt_lab.run.previous import begin_changes
from gpt_lab.run.tensorboard import run_hparams
from gpt_lab.training.callbacks import InitialLossEvaluation, LossHistory, SampleText, Throughput
from gpt_lab.training.cpu_memory import freed_memory_kept
from gpt_lab.training.resume import ResumedOptimizerSettings, check_resume, check_resume_data
from gpt_lab.training.resume_last import newest_checkpoint, resolve_ckpt_path

log = logging.getLogger(__name__)

# results.json fields that also go to TensorBoard's HPARAMS tab beside the run's settings.
HPARAM_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "test_accuracy", "val_reward_margin")


def build_datamodule(cfg: DictConfig, context_length: int) -> L.LightningDataModule:
    """The run's data module: ``data._target_`` is its ``from_config(cfg, context_length)``."""
    return get_method(cfg.data._target_)(cfg, context_length)


def _instantiation_problem(key: str, node: Any, err: Exception) -> str:
    """Hydra's ``InstantiationException`` as one sentence naming the config key."""
    cause = err.__cause__ or err
    target = OmegaConf.select(node, "_target_", default=None) if OmegaConf.is_config(node) else None
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(cause))
    if unknown:
        return f"{key}.{unknown.group(1)} is not an argument of {target}"
    if isinstance(cause, ImportError):
        return f"{key}._target_={target} cannot be imported ({first_line(cause)})"
    message = first_line(cause)
    return message if message.startswith(f"{key}.") else f"{key}: {message}"


def _instantiate_group(cfg: DictConfig, group: str, problems: list[str]) -> list[Any]:
    """Every ``_target_`` entry of a config group (a null entry switches that one off); failures go to ``problems``."""
    built = []
    for name, node in (cfg.get(group) or {}).items():
        if node is None:
            continue
        try:
            built.append(instantiate(node))
        except InstantiationException as err:
            problems.append(_instantiation_problem(f"{group}.{name}", node, err))
    return built


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] = ()) -> L.Trainer:
    """The run's loggers, callbacks and Trainer, built from config before anything else (the model, the data).

    Every problem (a key the target does not take, a target that does not import, a setting its
    constructor refuses, a value of the wrong type) is reported at once, as one ``ConfigError``
    naming the keys.
    """
    problems = check_components(cfg)  # the types the constructors would accept and fail on later
    loggers = _instantiate_group(cfg, "logger", problems)
    callbacks = _drop_lr_monitor_without_logger(_instantiate_group(cfg, "callbacks", problems), loggers)
    trainer_cfg = _ddp_for_experts(cfg)
    try:
        trainer = instantiate(trainer_cfg, callbacks=[*callbacks, *extra_callbacks], logger=loggers or False)
    except InstantiationException as err:
        problems.append(_instantiation_problem("trainer", cfg.trainer, err))
    if problems:
        raise ConfigError("; ".join(problems))
    return trainer


# Lightning's registered name for DDP that tolerates parameters without a gradient in a step.
DDP_UNUSED = "ddp_find_unused_parameters_true"


def _ddp_for_experts(cfg: DictConfig) -> DictConfig:
    """``trainer.strategy=ddp`` with ``ffn=moe``: a step routes no token to some experts, their
    parameters get no gradient, and plain DDP waits for them for ever (two CPU processes hung at step
    2). Such a model trains with Lightning's ``ddp_find_unused_parameters_true`` instead (logged)."""
    if OmegaConf.select(cfg, "trainer.strategy") != "ddp" or OmegaConf.select(cfg, "model.ffn") != "moe":
        return cfg.trainer
    log.info("ffn=moe under DDP: trainer.strategy=%s (experts a step does not use have no gradient)", DDP_UNUSED)
    trainer_cfg = cfg.trainer.copy()
    trainer_cfg.strategy = DDP_UNUSED
    return trainer_cfg


def _refuse_ddp_unused_experts(cfg: DictConfig, model_cfg: Any) -> None:
    """The model came from ``init_from`` (not ``cfg.model``) with experts, under plain DDP: say how to run it."""
    chosen_experts = OmegaConf.select(cfg, "model.ffn") == "moe"  # then _ddp_for_experts switched already
    if model_cfg.get("ffn") == "moe" and not chosen_experts and OmegaConf.select(cfg, "trainer.strategy") == "ddp":
        raise ConfigError(
            f"init_from={cfg.init_from} is a mixture-of-experts model and trainer.strategy=ddp waits for a gradient "
            f"from every expert, which a step may not route tokens to: add trainer.strategy={DDP_UNUSED} "
            "(or ffn=moe, which sets it)"
        )


def build_lit_module(cfg: DictConfig, model_cfg: Any, init_state: Any, datamodule: Any) -> L.LightningModule:
    """``objective.lit_module``'s ``from_config(cfg, model_cfg, init_state, datamodule)`` (``datamodule`` set up)."""
    return get_class(cfg.objective.lit_module).from_config(cfg, model_cfg, init_state, datamodule)


def _find(callbacks: list[Any], kind: type) -> Any:
    return next((c for c in callbacks if isinstance(c, kind)), None)


def _refuse_ddp_in_multirun(trainer: L.Trainer) -> None:
    """Lightning's DDP re-runs the command line once per extra process; under ``-m`` each would re-run the sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        type(launcher).__name__ == "_SubprocessScriptLauncher"
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise UserError(
            f"trainer.devices={trainer.num_devices} with strategy DDP starts its extra processes by re-running the "
            "command line, which -m (multirun) cannot do: run multi-device jobs one at a time, or sweep with "
            "hydra/launcher=slurm where SLURM starts one task per device"
        )


class CompileModel(L.Callback):
    """``compile=true``: the model's ``forward`` runs through ``torch.compile`` while training.

    An instance attribute over ``GPTModel.forward``, so the state dict's keys (checkpoints,
    model.pth) stay the book's; set at train start, after the TensorBoard logger has traced the
    graph (a compiled function cannot be traced), and removed at train end: the final evaluation
    and generation run eager.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vars(pl_module.model)["forward"] = torch.compile(pl_module.model.forward)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vars(pl_module.model).pop("forward", None)


def _log_hparams(trainer: L.Trainer, cfg: DictConfig, model_cfg: dict[str, Any], metrics: dict[str, float]) -> None:
    """The run's settings beside its final losses, for TensorBoard's HPARAMS tab (compare sweep runs)."""
    trainer_cfg = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if not k.startswith("_")}
    # The model as built (init_from's config.json or model.json may have replaced the group's sizes).
    params = run_hparams(cfg, ("data", "optim", "seed", "init_from"), model=model_cfg, trainer=trainer_cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics)


def _drop_lr_monitor_without_logger(callbacks: list[Any], loggers: list[Any]) -> list[Any]:
    """LearningRateMonitor refuses to run without a logger (logger=none): it then has nothing to do."""
    if loggers:
        return callbacks
    kept = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if len(kept) < len(callbacks):
        log.info("No logger (logger=none): the learning-rate monitor is off")
    return kept


def _one_console_for_lightning() -> None:
    """Lightning's package logger prints to stderr itself ("INFO: GPU available: ...") and passes every
    message on to the root logger, which Hydra's console and the run's log file hold: each message
    showed twice. Its own console goes; the message is printed (and logged to run.log) once."""
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    _one_console_for_lightning()
    trainer = build_trainer(cfg, [CompileModel()] if cfg.get("compile") else [])
    _refuse_ddp_in_multirun(trainer)
    init_from = input_path(cfg, cfg.init_from)
    model_cfg, init_state = init_model_config(cfg.model, init_from)
    _refuse_ddp_unused_experts(cfg, model_cfg)
    if cfg.data.name != "classification":  # every other objective trains a language model
        require_language_model(model_cfg, cfg.init_from, f"experiment / data={cfg.data.name}")
    # ckpt_path=last: the newest checkpoint of this run directory (none yet: a fresh start).
    ckpt_path = resolve_ckpt_path(cfg, getattr(trainer.checkpoint_callback, "dirpath", None))
    # The checkpoint is read (memory-mapped) and checked against this run before anything is built.
    finetune = OmegaConf.select(cfg, "finetune.name", default=None)
    resume = check_resume(ckpt_path, model_cfg, cfg.optim, finetune) if ckpt_path is not None else None

    # Read and check the data first: a bad data.path fails before the model is built.
    datamodule = build_datamodule(cfg, model_cfg["context_length"])
    if resume is not None:
        check_resume_data(resume, datamodule)  # the same data, in the same batches, or a paragraph
    try:
        datamodule.setup("fit")
    except DataError as err:
        if init_from is None or "context_length" not in str(err):  # the hint only where the length is the cause
            raise
        raise DataError(
            f"{err} (here init_from={cfg.init_from} fixes model.context_length={model_cfg['context_length']}: "
            "the length of its position embeddings)"
        ) from None
    if hasattr(datamodule, "describe"):
        log.info(datamodule.describe())
    tokenizer = getattr(datamodule, "tokenizer", None)
    if isinstance(tokenizer, HFTokenizer):  # a family's tokenizer.json must fit the model's embedding rows
        check_vocab(tokenizer.n_vocab, int(model_cfg["vocab_size"]), cfg.init_from)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    lit = build_lit_module(cfg, model_cfg, init_state, datamodule)
    del init_state  # the module holds what it keeps of it (a DPO reference shares its tensors); free the rest
    report = model_report(lit.model)
    log.info("Model %s: %s parameters", cfg.model.name, f"{report['total_params']:,}")

    if resume is not None and resume.optimizer_changes:
        trainer.callbacks.append(ResumedOptimizerSettings(resume.optimizer_changes))

    torch.manual_seed(cfg.seed)  # the book seeds again before its data loaders
    begin_changes(cfg.paths.output_dir)  # every check passed: from here on this run may change its directory
    # A family's tokenizer files go with the run's model: init_from=<this run> reads the same tokenizer.
    copy_tokenizer_files(init_from, cfg.paths.output_dir)
    # On the CPU every step frees and re-allocates the same large tensors (logits, gradients): their
    # pages stay in the process for the fit, not for the process's life (gpt_lab/training/cpu_memory.py).
    # SIGTERM / SIGINT: StopOnSignal (or the command line's handlers) raise RunInterrupted(step, checkpoint).
    with freed_memory_kept(trainer.strategy.root_device.type == "cpu"):
        trainer.fit(lit, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - started

    finished = lit.finish(trainer, datamodule, cfg)  # the objective's final metrics and files
    _log_hparams(trainer, cfg, dict(lit.model.cfg), {f"hp/{k}": v for k, v in finished.items() if k in HPARAM_METRICS})

    initial = _find(trainer.callbacks, InitialLossEvaluation)
    history = _find(trainer.callbacks, LossHistory)
    sampler = _find(trainer.callbacks, SampleText)
    throughput = _find(trainer.callbacks, Throughput)
    trainable = sum(p.numel() for p in lit.model.parameters() if p.requires_grad)
    results: dict[str, Any] = {"model_config": lit.model.cfg, **report, "trainable_params": trainable}
    # What a sweep compares variants by (experiment=ablation): sizes, cache per token, both speeds.
    results.update(
        architecture_figures(lit.model),
        train_tokens_per_second=throughput.tokens_per_second if throughput is not None else None,
        generation_tokens_per_second=sampler.tokens_per_second if sampler is not None else None,
    )

    checkpoint_cb = trainer.checkpoint_callback
    checkpoint = newest_checkpoint(getattr(checkpoint_cb, "dirpath", None)) if checkpoint_cb is not None else None
    initial_fields = (
        initial.initial_results() if initial is not None else {"initial_train_loss": None, "initial_val_loss": None}
    )
    results.update(
        **initial_fields,
        **finished,
        global_step=trainer.global_step,
        epochs=trainer.current_epoch,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        loss_curve=history.epochs if history is not None else None,
        last_sample=sampler.last_text if sampler is not None else None,
        train_seconds=fit_seconds,
    )
    return results
