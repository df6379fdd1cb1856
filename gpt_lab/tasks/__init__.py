"""The jobs scripts/run.py dispatches to: ``task=generate|train|evaluate``.

``conf/task/<name>.yaml`` names the function a task runs (``_target_``, e.g.
``gpt_lab.tasks.train.run``) and the task's ``name``. That function receives the validated
config and returns its results (a dict); a new task is one module with such a function plus one
YAML file. A task seeds what it draws from with ``cfg.seed`` (the train task with Lightning's
``seed_everything``; generation and evaluation seed torch where the book does, and generation
imports no Lightning, so it starts seconds sooner). ``run_task`` adds what every run records (status,
overrides, wall time) and writes ``results.json`` into the run directory. ``run_job`` is the
command line's wrapper around it: user errors become one paragraph on stderr, and in a multirun a
failing job is recorded and the sweep goes on.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import validate_config
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.run_files import write_results

log = logging.getLogger(__name__)

USER_ERROR_EXIT_CODE = 2


def run_task(cfg: DictConfig, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``cfg``, run the function ``cfg.task`` names and write ``results.json``; return the results.

    ``run_info`` (e.g. the Hydra overrides) is recorded in results.json next to the task's own
    results. Raises ``UserError`` for problems the user can fix; results.json then records the
    failure too.
    """
    started = time.perf_counter()
    info = dict(run_info or {})
    output_dir = _output_dir(cfg)
    info.setdefault("model", OmegaConf.select(cfg, "model.name", default=None, throw_on_resolution_failure=False))
    try:
        cfg = validate_config(cfg)
        info.update(task=cfg.task.name, model=cfg.model.name, seed=cfg.seed)
        results = task_function(cfg)(cfg)
    except BaseException as err:
        if output_dir is not None and is_rank_zero():
            failed = {**info, "status": "failed", "error": _error_text(err)}
            write_results(output_dir, {**failed, "wall_time_s": time.perf_counter() - started})
        raise
    results = {**info, **results, "status": "completed", "wall_time_s": time.perf_counter() - started}
    if is_rank_zero():
        write_results(cfg.paths.output_dir, results)
    return results


def task_function(cfg: DictConfig) -> Callable[[DictConfig], dict[str, Any]]:
    """The function ``cfg.task._target_`` names; a ``ConfigError`` when it names none."""
    from hydra.utils import get_method

    try:
        return get_method(cfg.task._target_)
    except Exception as err:
        raise ConfigError(
            f"task._target_={cfg.task._target_} (task={cfg.task.name}) is not a function gpt_lab can import "
            f"({_error_text(err.__cause__ or err)}); a task is a function run(cfg) -> dict, "
            "e.g. gpt_lab.tasks.train.run"
        ) from None


def is_rank_zero() -> bool:
    """False in the extra processes of a multi-process run (DDP under Lightning, torchrun or SLURM):
    they share rank 0's run directory, and only rank 0 writes results.json.

    Lightning's ``rank_zero_only.rank`` says which process this is. Only a task that runs Lightning
    starts several processes per run, and it has imported Lightning by then; a run that has not
    (generation, a config error) is a single process and need not pay for the import.
    """
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return rank_zero is None or rank_zero.rank_zero_only.rank == 0


def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one Hydra job from the command line (scripts/run.py's whole body).

    A ``UserError`` is printed as one paragraph on stderr and, in a single run, ends the process
    with status 2 and no traceback. In a multirun every failure is logged (with its traceback
    in the job's log file when it is not a user error), recorded in the job's results.json and
    swallowed, so the other jobs still run and the sweep summary gets a "failed" row.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    quiet_known_warnings()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_info = {
        "overrides": list(hydra_cfg.overrides.task),
        "choices": {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")},
    }
    if multirun:
        run_info["job_num"] = hydra_cfg.job.num
    try:
        return run_task(cfg, run_info)
    except UserError as err:
        print(f"gpt_lab: error: {err}", file=sys.stderr, flush=True)
        if not multirun:
            raise SystemExit(USER_ERROR_EXIT_CODE) from None
    except Exception:
        if not multirun:
            raise  # a bug: Hydra prints where it happened
        log.error("gpt_lab: job %d failed\n%s", hydra_cfg.job.num, traceback.format_exc())
    finally:
        release_memory()
    return None


def quiet_known_warnings() -> None:
    """Silence the third-party warnings a user can do nothing about (the one list; tests apply it too).

    Called once at start-up by ``run_job``; the test suite applies it around every test.
    """
    import torch

    # Lightning's TensorBoardLogger draws the graph with torch.jit.trace, which warns about every
    # shape check in forward() and about torch.jit's deprecation.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)
    # Lightning 2.6 with torch >= 2.10 warns about its own use of torch's pytree API on every step.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning warns about any sized IterableDataset (data=corpus: litdata's, which shards its own workers).
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def release_memory() -> None:
    """Free what the finished job held before the next job of a sweep starts."""
    gc.collect()
    torch = sys.modules.get("torch")  # not imported when the job stopped at validation
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _output_dir(cfg: DictConfig) -> str | None:
    """The run directory, if the config can name it (results.json of a failed run goes there)."""
    try:
        output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=True)
    except Exception:
        return None
    return str(output_dir) if output_dir else None


def _error_text(err: BaseException) -> str:
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, SystemExit | KeyboardInterrupt):
        return f"interrupted ({type(err).__name__})"
    return f"{type(err).__name__}: {err}"
