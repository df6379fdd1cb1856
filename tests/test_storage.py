"""Atomic writes and resume checks, in-process (the command-line side is tests/test_faults.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from configs import TINY

from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.files import write_results
from gpt_lab.storage import StorageError, atomic_write
from gpt_lab.training.resume import ResumeError, check_resume


def test_a_write_that_fails_midway_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    write_results(tmp_path, {"status": "running"})
    with pytest.raises(RuntimeError, match="boom"), atomic_write(tmp_path / "results.json", "w") as f:
        f.write('{"status": "compl')
        raise RuntimeError("boom")
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


class _FullDisk:
    """A file whose writes fail as on a full disk (torch.save reports them as its own RuntimeError)."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def test_a_full_disk_is_a_storage_error_naming_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *args, **kwargs: _FullDisk(real_fdopen(*args, **kwargs)))
    with pytest.raises(StorageError) as caught, atomic_write(tmp_path / "model.pth") as f:
        torch.save({"w": torch.zeros(1000)}, f)
    assert str(caught.value).startswith(f"cannot write model.pth in {tmp_path}: the disk is full")
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def _checkpoint(path: Path, cfg: dict, hparams: dict) -> Path:
    state = {f"model.{k}": v for k, v in GPTModel(cfg).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


def test_resume_without_hyper_parameters_compares_tensor_shapes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "a.ckpt", {**TINY, "emb_dim": 8}, {})
    with pytest.raises(ResumeError, match=r"of another shape .*model.tok_emb.weight: \(64, 16\) here, \(64, 8\)"):
        check_resume(ckpt, TINY, {"lr": 4e-4, "weight_decay": 0.1})


def test_resume_lists_the_optimizer_settings_it_changes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "a.ckpt", TINY, {"model_cfg": TINY, "lr": 4e-4, "weight_decay": 0.1})
    plan = check_resume(ckpt, TINY, {"lr": 0.1, "weight_decay": 0.1})
    assert plan.optimizer_changes == {"lr": (4e-4, 0.1)}
