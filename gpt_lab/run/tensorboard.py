"""TensorBoard events for runs that have no Lightning Trainer (generation, evaluation).

They are written with torch's own ``SummaryWriter`` into the folder the configured Lightning
``TensorBoardLogger`` (``cfg.logger``) would use, so generation, evaluation and training runs
sit side by side under ``tensorboard --logdir outputs``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch is imported where it is used
    import torch
    from torch import nn

log = logging.getLogger(__name__)

TENSORBOARD_LOGGER = "TensorBoardLogger"


class TensorBoardSettings(NamedTuple):
    """Where the configured TensorBoardLogger writes, and whether it draws the model graph."""

    log_dir: Path
    log_graph: bool


def tensorboard_settings(logger_cfg: Mapping[str, Any] | None) -> TensorBoardSettings | None:
    """The TensorBoardLogger entry of ``cfg.logger`` (None if there is none).

    Follows Lightning's layout: ``save_dir/name/version`` (an empty name or version adds nothing).
    """
    for entry in (logger_cfg or {}).values():
        if isinstance(entry, Mapping) and str(entry.get("_target_", "")).endswith(TENSORBOARD_LOGGER):
            log_dir = Path(str(entry["save_dir"]))
            for part in (entry.get("name", "lightning_logs"), entry.get("version", "")):
                if part not in (None, ""):
                    log_dir = log_dir / (f"version_{part}" if isinstance(part, int) else str(part))
            return TensorBoardSettings(log_dir, bool(entry.get("log_graph", False)))
    return None


def flatten_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config → ``{"model/emb_dim": 768, ...}`` of primitives TensorBoard's HPARAMS accepts.

    None becomes the string "None"; lists become their string form.
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_hparams(value, f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def run_hparams(cfg: DictConfig, keys: Iterable[str] = (), **given: Any) -> dict[str, bool | int | float | str]:
    """The one builder of a run's TensorBoard hyper-parameters (HPARAMS tab), for every task.

    ``keys`` are read from ``cfg`` (a config node as a plain tree), ``given`` adds or replaces entries
    with values the task knows better (the model as built, its data settings); the whole is
    flattened to ``{"model/emb_dim": 768, ...}`` (``flatten_hparams``).
    """
    tree: dict[str, Any] = {}
    for key in keys:
        value = cfg.get(key)
        tree[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    tree.update(given)
    return flatten_hparams(tree)


def write_run_tensorboard(
    cfg: DictConfig,
    model: nn.Module,
    example_input: torch.Tensor,
    hparams: Mapping[str, bool | int | float | str],
    metrics: Mapping[str, float],
    texts: Mapping[str, str],
) -> Path | None:
    """A run's events where ``cfg.logger``'s TensorBoardLogger writes; nothing without one.

    The graph is drawn when that logger has ``log_graph: true``. Returns the folder written.
    """
    settings = tensorboard_settings(OmegaConf.to_container(cfg.logger) if cfg.logger else None)
    if settings is None:
        return None
    write_tensorboard(
        settings.log_dir,
        model=model if settings.log_graph else None,
        example_input=example_input,
        hparams=hparams,
        metrics=metrics,
        texts=texts,
    )
    log.info(f"TensorBoard: tensorboard --logdir {settings.log_dir}")
    return settings.log_dir


def write_tensorboard(
    log_dir: str | Path,
    *,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    hparams: Mapping[str, bool | int | float | str] | None = None,
    metrics: Mapping[str, float] | None = None,
    texts: Mapping[str, str] | None = None,
    step: int = 0,
) -> Path:
    """Write the model graph, hyper-parameters (with ``metrics`` beside them) and texts to ``log_dir``.

    The graph is traced once with ``torch.jit.trace(..., check_trace=False)`` on ``example_input``
    (b, t) and handed to ``SummaryWriter.add_graph``. The check that a trace runs by default
    would trace and run the model a second time and compare the graphs as text (about 5x the
    trace itself: a minute for gpt2_xl on 2 cores) for the same drawing. The trace refers to the
    model's own parameters, so it adds no copy of the weights. A graph that cannot be traced is
    logged as a warning, not raised: the run's results do not depend on it.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        if model is not None and example_input is not None:
            # No grad: the trace takes the inference path. The tracer warns about the Python-side
            # shape checks in forward(); they are constant for this input.
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                was_training = model.training
                try:
                    traced = torch.jit.trace(model.eval(), example_input, check_trace=False)
                    writer.add_graph(traced, example_input)
                except Exception as err:  # the graph is a view of the run, not its result: keep going
                    log.warning(f"TensorBoard: could not trace the model graph ({type(err).__name__}: {err})")
                finally:
                    model.train(was_training)
        if hparams:
            # run_name="." keeps the HPARAMS entry in this run's folder (the default starts a sub-run);
            # add_hparams also writes each metric as a scalar.
            writer.add_hparams(dict(hparams), dict(metrics or {}), run_name=".", global_step=step)
        else:
            for tag, value in (metrics or {}).items():
                writer.add_scalar(tag, value, step)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, step)
    finally:
        writer.close()
    return log_dir
