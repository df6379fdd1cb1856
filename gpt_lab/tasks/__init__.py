"""The jobs scripts/run.py dispatches to: ``task=generate|train|evaluate``."""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

TASKS = ("generate", "train", "evaluate")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.task.name`` (each task module has ``run(cfg) -> results dict``)."""
    name = cfg.task.name
    if name not in TASKS:
        raise ValueError(f"task={name} is not a task; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"gpt_lab.tasks.{name}").run(cfg)
