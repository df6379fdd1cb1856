"""Task dispatch: ``cfg.task._target_`` names the function that runs; run_task records its results."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import DictConfig

from gpt_lab.errors import ConfigError
from gpt_lab.run_files import read_results
from gpt_lab.tasks import run_task

CALLS: list[DictConfig] = []


def echo_task(cfg: DictConfig) -> dict[str, Any]:
    """A task defined outside gpt_lab: proof that a new task needs only a function and a YAML entry."""
    CALLS.append(cfg)
    return {"echo": cfg.prompt}


def test_task_target_names_the_function_that_runs(compose_config, tmp_path) -> None:
    CALLS.clear()
    results = run_task(compose_config("model=tiny", f"task._target_={__name__}.echo_task", "task.name=echo"))
    assert len(CALLS) == 1 and CALLS[0].task.name == "echo"
    assert results["echo"] == "Hello, I am" and results["task"] == "echo" and results["status"] == "completed"
    assert read_results(tmp_path) == results


def test_task_target_that_names_nothing_is_a_config_error(compose_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"task._target_=gpt_lab.tasks.dream.run \(task=generate\) is not a function"):
        run_task(compose_config("model=tiny", "task._target_=gpt_lab.tasks.dream.run"))
    assert read_results(tmp_path)["status"] == "failed"
