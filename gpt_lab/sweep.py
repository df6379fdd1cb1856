"""The sweep summary: a Hydra callback that writes summary.csv and summary.md at a multirun's root.

Rows are built from the job directories on disk (each job's ``.hydra/overrides.yaml`` and
``results.json``), so it works the same for every launcher (basic, joblib, submitit): jobs may
have run in other processes or on other machines. A job that left no results.json, or one whose
status is not "completed", is a row marked failed. Configured in ``conf/hydra/default.yaml``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

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
# Shown too when at least one job has them (training and evaluation runs).
OPTIONAL_COLUMNS = ("train_loss", "val_loss", "loss", "perplexity", "error")


class SweepSummary(Callback):
    """Writes ``summary.csv`` and ``summary.md`` in the sweep directory when a multirun ends.

    Exits with status 1 after writing them if any job failed, so scripts notice.
    """

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error
        self._sweep_dir: Path | None = None
        self._started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir))
        self._started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        rows = summarise_sweep(sweep_dir, since=self._started - 5.0)
        csv_path, md_path = write_summary(sweep_dir, rows)
        failed = sum(row["status"] != "completed" for row in rows)
        log.info(f"Sweep summary ({len(rows)} jobs, {failed} failed): {md_path} and {csv_path.name}")
        if failed and self.fail_on_error:
            raise SystemExit(1)


def job_dirs(sweep_dir: Path, since: float = 0.0) -> list[Path]:
    """Job directories under ``sweep_dir`` (those holding ``.hydra/overrides.yaml``) started after ``since``."""
    found = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if p.stat().st_mtime >= since]
    return sorted(found)


def summarise_sweep(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """One row per job of the sweep at ``sweep_dir``, in job order."""
    rows = [_job_row(d) for d in job_dirs(Path(sweep_dir), since)]
    return sorted(rows, key=lambda r: (r["job"] is None, r["job"] if r["job"] is not None else 0, r["overrides"]))


def _job_row(job_dir: Path) -> dict[str, Any]:
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
    row: dict[str, Any] = {
        "job": results.get("job_num", _job_num(job_dir)),
        "overrides": " ".join(str(o) for o in overrides),
        "status": status if status == "completed" else "failed",
        "dir": str(job_dir),
    }
    row["model_config"] = _model_sizes(results.get("model_config"))
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


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``summary.csv`` (every column) and ``summary.md`` (a table to read) in ``sweep_dir``."""
    columns = [*COLUMNS, *(c for c in OPTIONAL_COLUMNS if any(row.get(c) is not None for row in rows))]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    csv_path = sweep_dir / "summary.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, "dir"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    md_path = sweep_dir / "summary.md"
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(rows)} jobs, {sum(r['status'] == 'completed' for r in rows)} completed.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_md_cell(row.get(c)) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")
