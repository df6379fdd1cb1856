"""The sweep summary: a Hydra callback that writes summary.csv and summary.md at a multirun's root.

Rows are built from the job directories on disk (each job's ``.hydra/overrides.yaml`` and
``results.json``), so it works the same for every launcher (basic, joblib, submitit): jobs may
have run in other processes or on other machines. A row's status is the job's own (completed,
failed, interrupted); a job that left no results.json, or died while "running", is failed. A sweep
stopped by SIGINT / SIGTERM still writes its summary (``finish_interrupted_sweep``): the job
that was running is "interrupted", and the jobs the basic sweeper had planned but not reached
are rows marked "not run". Configured in ``conf/hydra/default.yaml``.

A sweep stopped part-way (preempted, SIGTERM) continues in place with the same command plus
``ckpt_path=last`` (and the same ``hydra.sweep.dir``): the guard lets it in (``continues_sweep``),
jobs keep their directories (``ckpt_path`` is left out of job names), a completed job is kept as it
is (``kept_job_results``), an interrupted one resumes from its last checkpoint, an unstarted one runs.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gpt_lab.run.sweep_plot import job_labels, plot_summary, shared_overrides
from gpt_lab.storage import atomic_write, write_text_atomic

log = logging.getLogger(__name__)

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
RESUME_KEY = "ckpt_path"  # a sweep re-run with ckpt_path=last continues in place (continues_sweep)
# The sweep this process is running, for finish_interrupted_sweep (set between multirun start and end).
_running: SweepSummary | None = None

COLUMNS = (
    "job",
    "overrides",
    "status",
    "model",
    "model_config",  # the sizes actually built (the model option may have been overridden)
    "total_params",
    "total_params_tied",
    "size_mb",
    "generation_tokens_per_second",
    "output_text",
)
MODEL_SIZE_KEYS = ("emb_dim", "n_layers", "n_heads", "context_length")
# Columns read from results.json's nested figures (issue 25: what an ablation compares variants by).
NESTED_COLUMNS = {
    "parameters": ("parameters", "total"),
    "active_parameters": ("parameters", "active"),
    "kv_bytes_per_token": ("kv_cache", "bytes_per_token"),
}
ALWAYS_SHOWN = ("job", "overrides", "status")  # the other columns only when at least one job has a value
PERCENT_COLUMNS = ("train_accuracy", "val_accuracy", "test_accuracy")  # summary.md: as the console prints them
# Training and evaluation runs' figures.
OPTIONAL_COLUMNS = (
    *NESTED_COLUMNS,
    "train_tokens_per_second",
    "train_loss",
    "val_loss",
    "loss",
    "perplexity",
    "train_accuracy",  # classification runs (issue 18): the book's table, with the time per row
    "val_accuracy",
    "test_accuracy",
    "trainable_params",
    "train_seconds",
    "step",
    "error",
)


class SweepSummary(Callback):
    """Writes ``summary.csv`` and ``summary.md`` in the sweep directory when a multirun ends.

    Exits with status 1 after writing them if any job failed, so scripts notice.
    """

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error
        self._sweep_dir: Path | None = None
        self._started = 0.0
        self._planned: list[list[str]] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _running
        self._sweep_dir = Path(str(config.hydra.sweep.dir))
        self._started = time.time()
        self._planned = planned_jobs(config)
        _running = self

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _running
        _running = None
        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        rows = summarise_sweep(sweep_dir, since=self._started - 5.0)
        csv_path, md_path = write_summary(sweep_dir, rows)
        plot_summary(sweep_dir, rows)  # summary.png: training jobs side by side (an ablation)
        failed = sum(row["status"] != "completed" for row in rows)
        log.info(f"Sweep summary ({len(rows)} jobs, {failed} failed): {md_path} and {csv_path.name}")
        if failed and self.fail_on_error:
            raise SystemExit(1)

    def write_interrupted(self, signal_name: str) -> Path | None:
        """The summary of a sweep stopped by ``signal_name``: done jobs, the interrupted one, the rest "not run"."""
        if self._sweep_dir is None:
            return None
        rows = summarise_sweep(self._sweep_dir, since=self._started - 5.0, interrupted=True)
        done = {row["job"] for row in rows}
        for num, overrides in enumerate(self._planned or []):
            if num not in done:
                rows.append({"job": num, "overrides": " ".join(overrides), "status": "not run", "dir": ""})
        rows.sort(key=_job_order)
        _, md_path = write_summary(self._sweep_dir, rows, note=f"Interrupted by {signal_name}.")
        log.info(f"Sweep interrupted by {signal_name}; summary of {len(rows)} jobs: {md_path}")
        return md_path


JOB_DIR_RESOLVER = "job_dir"
MAX_READABLE_NAME = 60  # longer override lists (or ones holding a path) name the job by a hash


def job_dir_name(num: Any, override_dirname: Any) -> str:
    """A sweep job's directory name: short and flat whatever its overrides (``${job_dir:...}`` in
    conf/hydra/default.yaml). ``<num>_<overrides>`` when they are short and hold no ``/``, else
    ``<num>_<8 hex digits of their SHA-1>``; the full overrides are in the job's ``.hydra/overrides.yaml``,
    its results.json and the summary. ``ckpt_path`` is not part of them, so a continued sweep finds its jobs."""
    overrides = str(override_dirname)
    if overrides and len(overrides) <= MAX_READABLE_NAME and "/" not in overrides and "\\" not in overrides:
        return f"{num}_{overrides}"
    return f"{num}_{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def _without_resume(overrides: Any) -> list[str]:
    """A sweep's overrides, sorted, without ``ckpt_path`` (what continuing a sweep adds)."""
    return sorted(str(o) for o in overrides or [] if str(o).lstrip("+~").split("=")[0] != RESUME_KEY)


def continues_sweep(config: DictConfig, sweep_dir: Path) -> bool:
    """Whether this multirun continues the sweep in ``sweep_dir``: ``ckpt_path=last`` and the same overrides.

    The earlier sweep's overrides are read from its ``multirun.yaml`` (Hydra writes it when a sweep
    starts); without one, nothing says it was the same sweep.
    """
    if str(OmegaConf.select(config, RESUME_KEY, default=None)) != "last":
        return False
    try:
        earlier = OmegaConf.load(sweep_dir / "multirun.yaml")
    except Exception:
        return False
    previous = OmegaConf.select(earlier, "hydra.overrides.task", default=None)
    return previous is not None and _without_resume(previous) == _without_resume(config.hydra.overrides.task)


def kept_job_results(cfg: DictConfig) -> dict[str, Any] | None:
    """In a sweep continued with ``ckpt_path=last``, the results of a job that had completed: it is kept, not
    run again (None: run the job; an interrupted job then resumes from its last checkpoint, an unstarted one
    starts)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    if str(OmegaConf.select(cfg, RESUME_KEY, default=None)) != "last":
        return None
    results_path = Path(str(OmegaConf.select(cfg, "paths.output_dir", default=""))) / "results.json"
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("status") != "completed":
        return None
    log.info("Job %s completed before this sweep was continued: kept (%s)", results.get("job_num"), results_path)
    return results


def finish_interrupted_sweep(signal_name: str) -> Path | None:
    """Write the summary of the sweep this process is running, if any, after ``signal_name`` stopped it."""
    global _running
    sweep, _running = _running, None
    return sweep.write_interrupted(signal_name) if sweep is not None else None


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, in launch order, when Hydra's basic sweeper runs the sweep (else None).

    The basic sweeper takes ``hydra.sweeper.params`` then the command line's overrides (a key
    given twice keeps its first place and its last value) and launches their product, last key
    fastest. Other sweepers (Optuna) choose their jobs as they go.
    """
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def job_dirs(sweep_dir: Path, since: float = 0.0) -> list[Path]:
    """Job directories under ``sweep_dir`` (those holding ``.hydra/overrides.yaml``) started after ``since``."""
    found = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if p.stat().st_mtime >= since]
    return sorted(found)


def summarise_sweep(sweep_dir: Path, since: float = 0.0, interrupted: bool = False) -> list[dict[str, Any]]:
    """One row per job of the sweep at ``sweep_dir``, in job order.

    ``interrupted``: the sweep was stopped, so a job still "running" is "interrupted" (else: failed).
    """
    rows = [_job_row(d, interrupted) for d in job_dirs(Path(sweep_dir), since)]
    return sorted(rows, key=_job_order)


def _job_order(row: dict[str, Any]) -> tuple[bool, int, str]:
    return (row["job"] is None, row["job"] if row["job"] is not None else 0, row["overrides"])


def _job_row(job_dir: Path, interrupted: bool = False) -> dict[str, Any]:
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    results_path = job_dir / "results.json"
    results: dict[str, Any] = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            results = {"error": "results.json is not valid JSON"}
    status = results.get("status", "failed")
    if not results:
        results["error"] = "the job ended without writing results.json (see its log)"
    if status == "running":
        status = "interrupted" if interrupted else "failed"
        if not interrupted:
            results["error"] = f"the job stopped while running (process {results.get('pid')} was killed?)"
    row: dict[str, Any] = {
        "job": results.get("job_num", _job_num(job_dir)),
        "overrides": " ".join(str(o) for o in overrides),
        "status": status if status in ("completed", "failed", "interrupted") else "failed",
        "dir": str(job_dir),
    }
    row["model_config"] = _model_sizes(results.get("model_config"))
    for column, (node, key) in NESTED_COLUMNS.items():
        value = results.get(node)
        row[column] = value.get(key) if isinstance(value, dict) else None
    for key in (*COLUMNS, *OPTIONAL_COLUMNS):
        row.setdefault(key, results.get(key))
    return row


def _model_sizes(model_config: Any) -> str | None:
    """``emb_dim=512 n_layers=24 n_heads=16 context_length=1024``: what a job's model was built with."""
    if not isinstance(model_config, dict):
        return None
    return " ".join(f"{key}={model_config[key]}" for key in MODEL_SIZE_KEYS if key in model_config)


def _job_num(job_dir: Path) -> int | None:
    try:
        return int(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.num)
    except Exception:
        return None


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], note: str = "") -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` (a table to read) in ``sweep_dir``, atomically.

    Both leave out a column no job has a value in (a training sweep's generation columns). The CSV
    keeps each job's full overrides and fractions; the table names the overrides every job shares
    once, above it, shows each row's own, and accuracies as percentages, as the console prints them.
    """
    filled = {c for row in rows for c, value in row.items() if value not in (None, "")}
    columns = [c for c in (*COLUMNS, *OPTIONAL_COLUMNS) if c in ALWAYS_SHOWN or c in filled]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    csv_path = sweep_dir / "summary.csv"
    with atomic_write(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "dir"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    md_path = sweep_dir / "summary.md"
    shared = shared_overrides(rows)
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(rows)} jobs, {sum(r['status'] == 'completed' for r in rows)} completed. {note}".rstrip(),
        "",
        *([f"Every job: `{' '.join(shared)}`", ""] if shared else []),
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    own = job_labels(rows) if shared else [row.get("overrides") for row in rows]
    for row, label in zip(rows, own, strict=True):
        cells = [_md_cell(label if c == "overrides" else row.get(c), percent=c in PERCENT_COLUMNS) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _md_cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return ""
    if percent and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")
