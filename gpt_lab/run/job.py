"""The jobs scripts/run.py dispatches to: ``task=generate|train|evaluate``.

``conf/task/<name>.yaml`` names the function a task runs (``_target_``, e.g.
``gpt_lab.tasks.train.run``) and the task's ``name``. That function receives the validated
config and returns its results (a dict); a new task is one module with such a function plus one
YAML file. A task seeds what it draws from with ``cfg.seed`` (the train task with Lightning's
``seed_everything``; generation and evaluation seed torch where the book does, and generation
imports no Lightning, so it starts seconds sooner). ``run_task`` adds what every run records
(status, overrides, process, wall time) and writes ``results.json`` into the run directory, first
as "running". ``run_job`` is the command line's wrapper around it: user errors become one
paragraph on stderr, and in a multirun a failing job is recorded and the sweep goes on.
``run_command_line`` wraps the whole Hydra program: signals become exit statuses 130 / 143, and an
interrupted sweep still writes its summary.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import validate_config
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.run.dirs import register_resolver
from gpt_lab.run.error_exit import exit_with_error
from gpt_lab.run.files import holds_only_bookkeeping, write_results
from gpt_lab.run.preflight import check_resources
from gpt_lab.run.previous import forget_previous_run, keep_previous_run, restore_previous_run
from gpt_lab.run.status import (
    RunInterrupted,
    as_interruption,
    install_signal_handlers,
    is_rank_zero,
)
from gpt_lab.run.sweep import finish_interrupted_sweep, kept_job_results
from gpt_lab.storage import StorageError

log = logging.getLogger(__name__)
# ${unique_dir:...} in conf/hydra/default.yaml (one directory per run), registered on import: by
# scripts/run.py, and by the job processes of a launcher (joblib, submitit), which evaluate hydra.sweep.dir too.
register_resolver()


def run_task(cfg: DictConfig, run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``cfg``, run the function ``cfg.task`` names and write ``results.json``; return the results.

    ``run_info`` (e.g. the Hydra overrides) is recorded in results.json next to the task's own
    results. Raises ``UserError`` for problems the user can fix; results.json then records the
    failure too.
    """
    started = time.perf_counter()
    # Only rank 0 of a multi-process run (DDP) records the run.
    output_dir = _output_dir(cfg) if is_rank_zero() else None
    info = {**(run_info or {}), **_process_info()}
    info.setdefault("model", OmegaConf.select(cfg, "model.name", default=None, throw_on_resolution_failure=False))

    def record(status: str, **fields: Any) -> dict[str, Any]:
        entry = {"status": status, **info, **fields, "wall_time_s": time.perf_counter() - started}
        if output_dir is not None:
            write_results(output_dir, entry)
        return entry

    if output_dir is not None:
        keep_previous_run(output_dir)  # an existing run's record, put back if this attempt fails its checks
    try:
        record("running")
        cfg = validate_config(cfg)
        info.update(task=cfg.task.name, model=cfg.model.name, seed=cfg.seed)
        check_resources(cfg)
        results = task_function(cfg)(cfg)
    except BaseException as err:
        interrupted = as_interruption(err)
        try:
            if output_dir is not None and restore_previous_run(output_dir, interrupted=interrupted is not None):
                pass  # the run keeps the record it had (gpt_lab.run.previous); the error is printed
            elif interrupted is not None:
                step, checkpoint = interrupted.step, interrupted.checkpoint
                if checkpoint is None:  # stopped outside the fit (test responses, a final evaluation)
                    step, checkpoint = _saved_checkpoint(cfg, step)
                record("interrupted", signal=interrupted.signal_name, step=step, checkpoint=checkpoint)
            else:
                # A bad input refused before the task wrote anything leaves the directory free for the
                # corrected command (gpt_lab.run.dirs.check_run_dir).
                refused = isinstance(err, UserError) and output_dir is not None and holds_only_bookkeeping(output_dir)
                record("failed", error=_error_text(err), **({"refused": True} if refused else {}))
        except StorageError as write_err:  # e.g. the disk is still full: the "running" file stays, intact
            log.error("gpt_lab: could not record the run's end in results.json: %s", write_err)
        if interrupted is not None and interrupted is not err:
            raise interrupted from None  # a KeyboardInterrupt under Python's own SIGINT handler
        raise
    finally:
        if output_dir is not None:
            forget_previous_run(output_dir)
    done = record("completed", **results)
    if output_dir is not None:
        log.info("Run directory: %s", output_dir)  # what the next step's init_from=... names
    return done


def _saved_checkpoint(cfg: DictConfig, step: int | None) -> tuple[int | None, str | None]:
    """The newest checkpoint a training run left (what ``ckpt_path=last`` resumes) and its step, when
    the signal came outside the fit, where ``StopOnSignal`` reports none; ``(step, None)`` otherwise."""
    if OmegaConf.select(cfg, "task.name", default=None, throw_on_resolution_failure=False) != "train":
        return step, None
    where = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None, throw_on_resolution_failure=False)
    from gpt_lab.training.resume_last import checkpoint_step, newest_checkpoint

    found = newest_checkpoint(where) if where else None
    if found is None:
        return step, None
    return checkpoint_step(found.resolve()), str(found)


def _process_info() -> dict[str, Any]:
    """Who runs this: enough for a reader to tell a live run from one that was killed (SIGKILL)."""
    return {
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


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


def run_command_line(hydra_main: Callable[[], Any]) -> None:
    """scripts/run.py's whole body: run the ``@hydra.main`` function, signals turned into exit statuses.

    SIGINT / SIGTERM anywhere (in a job, between a sweep's jobs) end the process with status 130 /
    143. A sweep whose jobs run in processes of their own (``hydra/launcher=parallel``) first passes
    the signal on to them and waits for them to record their stop (``gpt_lab.run.status``); an
    interrupted sweep then writes its summary, the jobs it did not reach marked "not run".
    """
    install_signal_handlers()
    try:
        hydra_main()
    except (RunInterrupted, KeyboardInterrupt) as err:
        interrupted = as_interruption(err)
        assert interrupted is not None
        finish_interrupted_sweep(interrupted.signal_name)
        print(f"gpt_lab: {interrupted}", file=sys.stderr, flush=True)
        raise SystemExit(interrupted.exit_code) from None
    except (UserError, StorageError) as err:  # a Hydra callback's refusal (gpt_lab.run.dirs.RunDirGuard)
        raise exit_with_error(err) from None


def run_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Run one Hydra job from the command line (the ``@hydra.main`` function's whole body).

    A ``UserError`` is printed as one paragraph on stderr and, in a single run, ends the process
    with status 2 and no traceback; a ``StorageError`` (disk full) likewise, with status 1. In a
    multirun every failure is logged (with its traceback in the job's log file when it is not a
    user error), recorded in the job's results.json and swallowed, so the other jobs still run
    and the sweep summary gets a "failed" row. ``RunInterrupted`` goes through: it ends the sweep.
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
        if (kept := kept_job_results(cfg)) is not None:  # a sweep continued with ckpt_path=last: done before
            return kept
        return run_task(cfg, run_info)
    except (UserError, StorageError) as err:
        stop = exit_with_error(err)
        if not multirun:
            raise stop from None
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
    if isinstance(err, UserError | StorageError):
        return str(err)
    if isinstance(err, SystemExit):
        return f"exited ({type(err).__name__}: {err.code})"
    return f"{type(err).__name__}: {err}"
