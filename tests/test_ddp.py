"""Lightning's DDP on 2 CPU processes (gloo) under Hydra: one run directory, rank 0 writes the files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from configs import TINY_RUN


def _two_process_run(tmp_path: Path, run_cli: Callable, *overrides: str) -> Any:
    """One epoch of a tiny model on a short story, DDP over 2 CPU processes (gloo)."""
    (tmp_path / "story.txt").write_text("The cat sat on the mat. The dog lay by the door. " * 30, encoding="utf-8")
    common = ("task=train", *TINY_RUN, "data.path=story.txt")  # the path relative to the command's directory
    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1")
    return run_cli(*common, *ddp, "callbacks.sample_text.max_new_tokens=3", *overrides, timeout=240)


@pytest.mark.slow  # two training processes started through the command line
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ddp_two_cpu_processes_share_one_run_directory(tmp_path: Path, run_cli: Callable) -> None:
    # Microseconds in the name: a child process that resolved the directory again would get another one.
    proc = _two_process_run(tmp_path, run_cli, "hydra.run.dir=runs/${now:%H-%M-%S-%f}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "train_ddp_process_1.log").is_file()  # the second process logged beside the first
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    # 23 windows over 2 processes: DistributedSampler pads to 12 each, 6 batches of 2 per process.
    assert results["global_step"] == 6
    assert results["tokens_seen"] == 6 * 2 * 2 * 16
    assert (run / "model.pth").is_file() and Path(results["checkpoint"]).is_file()
    assert results["val_loss"] < results["initial_val_loss"] + 0.5


@pytest.mark.slow  # two training processes started through the command line
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ddp_trains_a_mixture_of_experts_whose_steps_leave_experts_unused(tmp_path: Path, run_cli: Callable) -> None:
    # 8 experts, 1 per token, 8 tokens a batch: some expert gets no token in most steps, so its
    # parameters have no gradient; plain DDP then waited for them for ever (hung at step 2).
    moe = ("ffn=moe", "model.num_experts=8", "model.experts_per_token=1", "model.moe_hidden_dim=8")
    proc = _two_process_run(tmp_path, run_cli, *moe, "hydra.run.dir=runs/moe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "moe" / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["global_step"] == 6  # as the dense model's run above: every step of both processes ran
    assert "ddp_find_unused_parameters_true" in (tmp_path / "runs" / "moe" / "run.log").read_text()
