"""The files a run leaves in its directory: results.json and TensorBoard events.

The generate task writes TensorBoard with torch's own ``SummaryWriter`` (no Lightning needed),
into the same folder Lightning's ``TensorBoardLogger`` of ``cfg.logger`` would use, so generation
and training runs sit side by side under ``tensorboard --logdir outputs``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: writing results.json needs none of it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
TENSORBOARD_LOGGER = "TensorBoardLogger"


def write_results(output_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as ``<output_dir>/results.json`` (NaN and infinities become null)."""
    path = Path(output_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_results(output_dir: str | Path) -> dict[str, Any] | None:
    """The results.json of a run directory, or None when the run left none."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # a tensor or a NumPy value
        return _json_safe(value.tolist())
    return value


def tensorboard_logger(logger_cfg: Mapping[str, Any] | None) -> tuple[Path, bool] | None:
    """Where the configured TensorBoardLogger writes, and whether it logs the graph; None if none is.

    Follows Lightning's layout: ``save_dir/name/version`` (an empty name or version adds nothing).
    """
    for entry in (logger_cfg or {}).values():
        if isinstance(entry, Mapping) and str(entry.get("_target_", "")).endswith(TENSORBOARD_LOGGER):
            log_dir = Path(str(entry["save_dir"]))
            for part in (entry.get("name", "lightning_logs"), entry.get("version", "")):
                if part not in (None, ""):
                    log_dir = log_dir / (f"version_{part}" if isinstance(part, int) else str(part))
            return log_dir, bool(entry.get("log_graph", False))
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

    The graph is traced with ``torch.jit.trace`` on ``example_input`` (b, t): the trace refers to
    the model's own parameters, so it adds no copy of the weights (gpt2_xl: peak memory stays
    within a few hundred MiB of the weights' 6,248 MiB). A graph that cannot be traced is logged
    as a warning, not raised: the run's results do not depend on it.
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        if model is not None and example_input is not None:
            # No grad: the trace and its consistency check then take the same (inference) path.
            with warnings.catch_warnings(), torch.no_grad(), _trace_without_check():
                # The trace warns about Python-side shape checks in forward(); they are constant here.
                warnings.simplefilter("ignore")
                try:
                    writer.add_graph(model, example_input)
                except Exception as err:  # the graph is a view of the run, not its result: keep going
                    log.warning(f"TensorBoard: could not trace the model graph ({type(err).__name__}: {err})")
        for tag, value in (metrics or {}).items():
            writer.add_scalar(tag, value, step)
        if hparams:
            # Written into this run's own file (SummaryWriter.add_hparams would start a sub-run).
            experiment, session_start, session_end = hparams_summary(dict(hparams), dict(metrics or {}))
            file_writer = writer._get_file_writer()
            for summary in (experiment, session_start, session_end):
                file_writer.add_summary(summary)
        for tag, text in (texts or {}).items():
            writer.add_text(tag, text, step)
    finally:
        writer.close()
    return log_dir


@contextlib.contextmanager
def _trace_without_check() -> Iterator[None]:
    """Make ``SummaryWriter.add_graph``'s ``torch.jit.trace`` skip its consistency check.

    ``add_graph`` offers no way to pass ``check_trace=False``; the check traces and runs the model
    again and compares the two graphs as text, about 5x the cost of the trace itself (a minute
    for gpt2_xl on 2 cores). The graph drawn is the same.
    """
    import torch

    trace = torch.jit.trace
    torch.jit.trace = functools.partial(trace, check_trace=False)
    try:
        yield
    finally:
        torch.jit.trace = trace
