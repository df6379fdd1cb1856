"""The speed options of task=train: trainer=cpu_bf16 (bf16 mixed precision) and compile=true.

Each is compared with the default fp32 eager run of the same tiny model and data: bf16 losses close
to fp32's (not equal: bf16 did run), compiled losses equal to eager's to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.model import GPTModel
from gpt_lab.tasks import run_task

# The tests' tiny run, 4 optimizer steps, no sample text (generation is not under test here).
TINY_TRAIN = ["task=train", *TINY_RUN, "trainer.max_steps=4", "callbacks.sample_text=null", "max_new_tokens=1"]


def _train(compose_config: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> dict:
    """Train on a short repeated text in a run directory of its own; return results.json's content."""
    text = tmp_path / "story.txt"
    if not text.exists():
        text.write_text("A quick brown fox jumps over the lazy dog, twice. " * 30, encoding="utf-8")
    run_dir = tmp_path / ("_".join(o.replace("=", "-") for o in overrides) or "default")
    return run_task(compose_config(*TINY_TRAIN, f"data.path={text}", *overrides, run_dir=run_dir))


def test_cpu_bf16_losses_close_to_fp32(compose_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    fp32 = _train(compose_config, tmp_path)
    bf16 = _train(compose_config, tmp_path, "trainer=cpu_bf16")
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss"):
        # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %): losses within 1 % of fp32's.
        assert bf16[key] == pytest.approx(fp32[key], rel=0.01), key
    assert bf16["train_loss"] != fp32["train_loss"]  # the products did run in bf16
    # Weights, optimizer and checkpoints stay float32 (mixed precision): the book's model.pth loads.
    state = torch.load(bf16["book_checkpoint"], weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.float32}


def test_compiled_training_equals_eager(compose_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    # Without dropout: compiled code draws its random numbers with its own generator, not eager's.
    eager = _train(compose_config, tmp_path, "dropout=none")
    compiled = _train(compose_config, tmp_path, "dropout=none", "compile=true")
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-4), key
    # Compiled in place: the checkpoint keeps the book's keys and loads into a plain GPTModel.
    state = torch.load(compiled["book_checkpoint"], weights_only=True)
    model = GPTModel(
        {
            "vocab_size": 50257,
            "context_length": 16,
            "emb_dim": 16,
            "n_heads": 2,
            "n_layers": 1,
            "drop_rate": 0.0,
            "qkv_bias": False,
        }
    )  # TINY_RUN's sizes
    model.load_state_dict(state, strict=True)
