"""Training on a CUDA device (``trainer=gpu``: bf16 mixed precision) and exact resume there.

Marked ``gpu``: skipped without a CUDA device (tests/conftest.py), run where one is present.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.run.job import run_task

pytestmark = pytest.mark.gpu

STORY = "The cat sat on the mat. The dog lay by the door. " * 30
TRAIN = (
    "task=train",
    *TINY_RUN,
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "callbacks.sample_text.max_new_tokens=3",
    "max_new_tokens=3",
)


@pytest.fixture
def train(compose_config: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., dict]:
    """``train(run_dir, *overrides)``: task=train of the tiny model on a short story."""
    (tmp_path / "story.txt").write_text(STORY, encoding="utf-8")

    def _train(out: Path, *overrides: str) -> dict:
        return run_task(compose_config(*TRAIN, f"data.path={tmp_path / 'story.txt'}", *overrides, run_dir=out))

    return _train


def test_gpu_bf16_mixed_training_matches_the_cpu_start_and_keeps_float32_weights(
    tmp_path: Path, train: Callable[..., dict]
) -> None:
    cpu = train(tmp_path / "cpu", "trainer.max_epochs=1")
    gpu = train(tmp_path / "gpu", "trainer=gpu", "trainer.max_epochs=3", "optim.lr=0.005")
    assert gpu["status"] == "completed"
    # The initial losses are measured in float32 before the first step: the same model, another device.
    assert gpu["initial_train_loss"] == pytest.approx(cpu["initial_train_loss"], rel=1e-4)
    assert gpu["initial_val_loss"] == pytest.approx(cpu["initial_val_loss"], rel=1e-4)
    assert gpu["train_loss"] < gpu["initial_train_loss"] - 1.0  # bf16 autocast still learns
    # bf16-mixed computes in bf16 but keeps (and saves) float32 weights.
    state = torch.load(tmp_path / "gpu" / "model.pth", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())


def test_gpu_resume_restores_the_cuda_random_state(tmp_path: Path, train: Callable[..., dict]) -> None:
    # float32 and dropout on: the dropout masks come from the CUDA generator, which the checkpoint restores.
    gpu = ("trainer=gpu", "trainer.precision=32-true", "model.drop_rate=0.3")
    whole = train(tmp_path / "whole", *gpu, "trainer.max_epochs=2")
    train(tmp_path / "first", *gpu, "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(tmp_path / "second", *gpu, "trainer.max_epochs=2", f"ckpt_path={last}")
    # Atomic adds in CUDA backward passes may differ in the last bits; other dropout masks would not.
    for key in ("train_loss", "val_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4), key
    assert resumed["loss_curve"][-1]["train_loss"] == pytest.approx(whole["loss_curve"][-1]["train_loss"], rel=1e-4)
    assert resumed["tokens_seen"] == whole["tokens_seen"]
