"""Issue 30's data-loss cases: a failed attempt never rewrites a run's record or files, and a run never
writes over a file it did not create.

Independent expectations: every file of the run directory read byte for byte before the attempt
and compared after it; the user's own files compared with what the test wrote into them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from configs import TINY_RUN, write_sms
from conftest import RUN_SCRIPT
from omegaconf import DictConfig

from gpt_lab.data.text import DataError
from gpt_lab.run.job import run_task

C6 = ("experiment=ch06", *TINY_RUN, "trainer.max_steps=4", "classifier.initial_eval_batches=1", "logger=csv")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "GPT_LAB_ROOT")}
    env["GPT_LAB_ROOT"] = str(cwd)
    return subprocess.run(
        [sys.executable, str(RUN_SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory, byte for byte (the lock file is the directory's, not the run's)."""
    files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".run.lock"]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


@pytest.mark.slow  # one tiny training run and three refused attempts, each a process of its own
def test_case_1_a_failed_attempt_leaves_a_finished_run_byte_for_byte(tmp_path: Path) -> None:
    data = write_sms(tmp_path / "sms.tsv")
    done = _cli(tmp_path, *C6, f"data.path={data}", "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    before = _files(run)
    assert json.loads(before["results.json"])["status"] == "completed"
    other = write_sms(tmp_path / "other.tsv", n=10, spam="junk")
    attempts = [
        # A missing data file, with a value that would change the record's settings.
        (*C6, "data.path=x.tsv", "optim.lr=5", "ckpt_path=last"),
        # The wrong task: only task=train resumes.
        ("task=classify", "init_from=run", "text=hello", "ckpt_path=last"),
        # Another data file: its splits would replace the run's.
        (*C6, f"data.path={other}", "ckpt_path=last"),
    ]
    for args in attempts:
        failed = _cli(tmp_path, *args, "hydra.run.dir=run")
        assert failed.returncode == 2, (args, failed.stderr[-3000:])
        assert "gpt_lab: error:" in failed.stderr
        after = _files(run)
        assert sorted(after) == sorted(before), args
        for name in before:
            assert after[name] == before[name], (args, name)


def test_case_1_a_failed_check_in_process_keeps_the_record(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # The rule in run_task itself (no Hydra guard in between): an existing record is put back.
    run = tmp_path / "run"
    run.mkdir()
    record = {"status": "completed", "val_accuracy": 0.75}
    (run / "results.json").write_text(json.dumps(record), encoding="utf-8")
    cfg = compose_config(*C6, "data.path=missing.tsv", "ckpt_path=last", run_dir=run)
    with pytest.raises(DataError):
        run_task(cfg)
    assert json.loads((run / "results.json").read_text()) == record


def test_case_2_splits_never_overwrite_the_users_files(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    # The user's three split files, with columns of their own, kept in the run directory.
    rows = {"train.csv": 16, "validation.csv": 4, "test.csv": 4}
    for name, n in rows.items():
        lines = ["id,label,text,source"] + [f"{i},{'ham' if i % 2 else 'spam'},{name} text {i},web" for i in range(n)]
        (run / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = {name: (run / name).read_bytes() for name in rows}
    splits = [f"data.{k}_path={run / n}" for k, n in zip(("train", "val", "test"), rows, strict=True)]
    cfg = compose_config(*C6, *splits, run_dir=run)
    with pytest.raises(DataError, match=r"already holds train.csv \(data.train_path=.*never writes over a file"):
        run_task(cfg)
    assert {name: (run / name).read_bytes() for name in rows} == before

    # Chapter 7's train.json / val.json likewise.
    entries = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(12)]
    run7 = tmp_path / "run7"
    run7.mkdir()
    (run7 / "train.json").write_text(json.dumps(entries[:8]), encoding="utf-8")
    (run7 / "val.json").write_text(json.dumps(entries[8:]), encoding="utf-8")
    kept = {name: (run7 / name).read_bytes() for name in ("train.json", "val.json")}
    cfg = compose_config(
        "experiment=ch07",
        *TINY_RUN,
        "trainer.max_steps=1",
        "data.batch_size=2",
        f"data.train_path={run7 / 'train.json'}",
        f"data.val_path={run7 / 'val.json'}",
        "logger=csv",
        run_dir=run7,
    )
    with pytest.raises(DataError, match=r"already holds train.json \(data.train_path=.*val.json \(data.val_path="):
        run_task(cfg)
    assert {name: (run7 / name).read_bytes() for name in kept} == kept


def test_case_9_sigterm_after_training_records_the_checkpoint(
    compose_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    import torch

    from gpt_lab.errors import RunInterrupted

    def stopped(*args: object, **kwargs: object) -> None:  # SIGTERM arrives while the test responses are written
        raise RunInterrupted(signal.SIGTERM)

    monkeypatch.setattr("gpt_lab.training.instruction_module.generate_responses", stopped)
    entries = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(20)]
    (tmp_path / "e.json").write_text(json.dumps(entries), encoding="utf-8")
    run = tmp_path / "run"
    cfg = compose_config(
        "experiment=ch07",
        *TINY_RUN,
        "trainer.max_steps=3",
        "data.batch_size=2",
        "logger=csv",
        f"data.path={tmp_path / 'e.json'}",
        run_dir=run,
    )
    with pytest.raises(RunInterrupted):
        run_task(cfg)
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    # The checkpoint the fit wrote at its end, which ckpt_path=last resumes: its file says step 3.
    assert record["checkpoint"] is not None and record["step"] == 3
    assert torch.load(record["checkpoint"], weights_only=True, mmap=True)["global_step"] == 3


# ---------------------------------------------------------------------------------------------
# 10. A run or sweep directory that cannot be written: one paragraph, exit 2, before any work


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (a directory no one may write)")
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("hydra.run.dir=/proc/self",), "hydra.run.dir=/proc/self"),  # exists; the log file could not be opened
        (("hydra.run.dir=/proc/self/gpt_lab_run",), "hydra.run.dir=/proc/self/gpt_lab_run"),  # cannot be created
        (("-m", "hydra.sweep.dir=/proc/self/gpt_lab_sweep", "seed=1,2"), "hydra.sweep.dir=/proc/self/gpt_lab_sweep"),
    ],
)
def test_case_10_an_unwritable_output_directory_is_one_paragraph_exit_2(
    tmp_path: Path, args: tuple[str, ...], key: str
) -> None:
    """As root, chmod stops no write: /proc is a directory the kernel refuses to let anyone write."""
    done = _cli(tmp_path, *args, "model=tiny", "max_new_tokens=1")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("gpt_lab: error: ") == 1
    assert f"{key} cannot be written (" in done.stderr and "this process can write" in done.stderr
    assert "Traceback" not in done.stderr and "Unable to configure handler" not in done.stderr
    assert not list(tmp_path.rglob("results.json"))


def test_case_10_a_read_only_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errno 30 (a read-only mount; mounting one needs privileges a test should not ask for): the check's own
    probe write fails as it would there, and the paragraph names the cause."""
    import errno
    import tempfile

    from gpt_lab.run.dirs import check_writable

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(SystemExit) as stop:
        check_writable(tmp_path / "run", "hydra.run.dir")
    assert stop.value.code == 2
