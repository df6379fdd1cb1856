"""The run's results file, ``results.json`` (written atomically through gpt_lab.storage)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gpt_lab.storage import write_text_atomic

RESULTS_FILE = "results.json"
# What every run has before its task writes anything: Hydra's files, the log, the record, the lock.
RUN_BOOKKEEPING = (".hydra", "run.log", RESULTS_FILE, ".run.lock")


def write_results(output_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as ``<output_dir>/results.json`` atomically (NaN and infinities become null)."""
    path = Path(output_dir) / RESULTS_FILE
    return write_text_atomic(path, json.dumps(_json_safe(results), indent=2, ensure_ascii=False) + "\n")


def read_results(output_dir: str | Path) -> dict[str, Any] | None:
    """The results.json of a run directory, or None when the run left none."""
    path = Path(output_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def holds_only_bookkeeping(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds no file but a run's bookkeeping (``RUN_BOOKKEEPING``; empty folders
    aside): a run that stopped there wrote nothing a later run could lose."""
    root = Path(run_dir)
    for path in root.rglob("*"):
        if path.is_file() and path.relative_to(root).parts[0] not in RUN_BOOKKEEPING:
            return False
    return True


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
