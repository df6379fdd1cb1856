"""Task dispatch: ``cfg.task._target_`` names the function that runs; run_task records its results."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import DictConfig

from gpt_lab.errors import ConfigError
from gpt_lab.run.files import read_results
from gpt_lab.run.job import run_task

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
    with pytest.raises(
        ConfigError, match=r"task._target_=gpt_lab.run.job.dream.run \(task=generate\) is not a function"
    ):
        run_task(compose_config("model=tiny", "task._target_=gpt_lab.run.job.dream.run"))
    assert read_results(tmp_path)["status"] == "failed"


def test_results_record_the_option_and_the_sizes_built(compose_config) -> None:
    # An overridden option: results.json must not claim the option's own sizes were built.
    results = run_task(compose_config("model=tiny", "model.emb_dim=64", "max_new_tokens=1", "logger=none"))
    assert results["model"] == "tiny"
    built = results["model_config"]
    assert built["emb_dim"] == 64
    # The count is that of the built sizes: embeddings, blocks (4 linear maps of emb^2 plus the
    # 4x feed-forward, biases and norms) and the untied head, written out.
    v, c, e, n = built["vocab_size"], built["context_length"], 64, built["n_layers"]
    block = 3 * e * e + (e * e + e) + (4 * e * e + 4 * e) + (4 * e * e + e) + 4 * e
    assert results["total_params"] == v * e + c * e + n * block + 2 * e + v * e
