"""Fault injection through the real command line: concurrent runs, signals, a full disk, bad inputs.

Each test drives ``scripts/run.py`` in subprocesses (several at once where they are independent,
to keep the file fast on 2 cores) and then looks at what is on disk.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from configs import TINY, TINY_RUN
from conftest import RUN_SCRIPT

from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.dirs import unique_dir
from gpt_lab.storage import remove_stale_temp_files

# A tiny model trained on a tiny text: seconds per run.
TRAIN_WITH_SAMPLES = [
    "task=train",
    *TINY_RUN,  # width 16, one block, context 16
    "data.path=story.txt",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
]
TRAIN = [*TRAIN_WITH_SAMPLES, "callbacks.sample_text=null"]
STARTED_TRAINING = "Initial losses"  # logged to run.log by the first training batch's callback
TEMP_FILES = ".*.tmp"  # what gpt_lab.storage.atomic_write writes before renaming


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "story.txt").write_text("The cat sat on the mat. The dog lay by the door. " * 60, encoding="utf-8")
    return tmp_path


def _start(cwd: Path, *args: str, fsize_limit: int | None = None) -> subprocess.Popen[str]:
    """``python scripts/run.py ARGS`` from ``cwd``, with outputs/ under ``cwd`` (not the project's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "GPT_LAB_ROOT")}
    env["GPT_LAB_ROOT"] = str(cwd)

    def limit_file_size() -> None:  # `ulimit -f`: writes past it fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.Popen(
        [sys.executable, str(RUN_SCRIPT), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_file_size if fsize_limit else None,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _run(cwd: Path, *args: str, **kwargs: int) -> tuple[int, str, str]:
    return _finish(_start(cwd, *args, **kwargs))


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _wait_for(path_glob: Callable[[], list[Path]], text: str, proc: subprocess.Popen[str]) -> Path:
    """Poll until a file matched by ``path_glob`` contains ``text`` (the process must still be running)."""
    for _ in range(3000):
        for path in path_glob():
            if path.is_file() and text in path.read_text(errors="replace"):
                return path
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) first:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} after 300 s")


def _one_paragraph_error(stderr: str) -> str:
    """The error line: exactly one, starting with gpt_lab: error:, and no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("gpt_lab: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# One directory per run


def test_unique_dir_adds_a_suffix_when_the_name_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the answer is remembered in the environment
    taken = tmp_path / "12-00-00_generate_tiny"
    taken.mkdir()
    got = unique_dir(str(taken))
    assert got == f"{taken}-2" and Path(got).is_dir()
    assert unique_dir(str(taken)) == got  # asked again in the same run: the same directory


def test_processes_racing_for_one_name_each_get_their_own(tmp_path: Path) -> None:
    code = "import sys; from gpt_lab.run.dirs import unique_dir; print(unique_dir(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "same")], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    got = sorted(proc.communicate(timeout=120)[0].strip() for proc in procs)
    expected = sorted([str(tmp_path / "same"), *(str(tmp_path / f"same-{i}") for i in (2, 3, 4))])
    assert got == expected


def test_runs_and_sweeps_started_together_never_share_a_directory(workdir: Path) -> None:
    procs = [
        _start(workdir, "model=tiny", "max_new_tokens=2", "seed=1"),
        _start(workdir, "model=tiny", "max_new_tokens=2", "seed=2"),
        _start(workdir, "-m", "model=tiny", "max_new_tokens=2", "seed=3"),
        _start(workdir, "-m", "model=tiny", "max_new_tokens=2", "seed=4"),
    ]
    for proc in procs:
        code, _, err = _finish(proc)
        assert code == 0, err[-3000:]
    runs = sorted((workdir / "outputs").glob("*/*_generate_tiny*"))
    assert sorted(_results(run)["seed"] for run in runs) == [1, 2]
    for run in runs:  # each directory holds one run's files only (TensorBoard names its files by pid)
        events = list((run / "tensorboard").glob("events.out.tfevents.*"))
        assert events and all(f".{_results(run)['pid']}." in e.name for e in events)
        assert f"seed={_results(run)['seed']}" in (run / ".hydra" / "overrides.yaml").read_text()
    sweeps = sorted((workdir / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    seeds = []
    for sweep in sweeps:
        with (sweep / "summary.csv").open(newline="") as f:
            seeds += [re.search(r"seed=(\d)", row["overrides"]).group(1) for row in csv.DictReader(f)]
        assert "1 jobs, 1 completed." in (sweep / "summary.md").read_text()
    assert sorted(seeds) == ["3", "4"]


def test_logger_none_trains_and_its_directory_refuses_another_run(workdir: Path) -> None:
    run = workdir / "run"
    code, _, err = _run(
        workdir, *TRAIN, "logger=none", "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "hydra.run.dir=run"
    )
    assert code == 0, err[-3000:]
    finished = _results(run)
    assert finished["status"] == "completed" and Path(finished["checkpoint"]).is_file()
    assert not (run / "tensorboard").exists()
    before = {p: p.read_bytes() for p in (run / "results.json", run / ".hydra" / "config.yaml")}

    # A run that fails at once, aimed at the finished run: refused before Hydra writes anything.
    code, _, err = _run(workdir, "model=tiny", "model.n_heads=5", "hydra.run.dir=run")
    assert code == 2
    assert "hydra.run.dir=run already holds another run (results.json: status completed)" in _one_paragraph_error(err)
    assert {p: p.read_bytes() for p in before} == before

    # Resuming with another lr applies the lr (another model shape: test_bad_inputs_are_one_paragraph_errors).
    last = run / "checkpoints" / "last.ckpt"
    # What a writer killed during a save leaves (SIGKILL): resuming removes it, unless its writer lives.
    dead_writer = run / "checkpoints" / ".epoch00-step2.ckpt.999999999.x1.tmp"  # above any pid_max
    live_writer = run / "checkpoints" / f".epoch00-step2.ckpt.{os.getpid()}.x2.tmp"
    dead_writer.write_bytes(b"half a checkpoint")
    live_writer.write_bytes(b"half a checkpoint")
    resume = [*TRAIN, "logger=none", "+trainer.limit_train_batches=2", "trainer.max_epochs=2", "optim.lr=0.001"]
    code, _, err = _run(workdir, *resume, f"ckpt_path={last}", "hydra.run.dir=run")
    assert code == 0, err[-3000:]
    assert not dead_writer.exists() and live_writer.exists()
    assert "Resuming with optim.lr=0.001 (the checkpoint trained with 0.0004)" in (run / "run.log").read_text()
    resumed = torch.load(_results(run)["checkpoint"], weights_only=True)
    assert resumed["epoch"] == 1 and resumed["hyper_parameters"]["lr"] == 0.001
    assert [g["lr"] for g in resumed["optimizer_states"][0]["param_groups"]] == [0.001]


# ---------------------------------------------------------------------------------------------
# Signals


def test_signals_during_training_leave_an_honest_record(workdir: Path) -> None:
    endless = [*TRAIN, "logger=none", "trainer.max_epochs=1000"]
    runs = {name: _start(workdir, *endless, f"hydra.run.dir={name}") for name in ("term", "int", "kill")}
    sweep = _start(workdir, "-m", *endless, "seed=1,2,3", "hydra.sweep.dir=sweep")
    for name, proc in runs.items():
        _wait_for(lambda name=name: [workdir / name / "run.log"], STARTED_TRAINING, proc)
    _wait_for(lambda: list((workdir / "sweep").glob("*/run.log")), STARTED_TRAINING, sweep)
    runs["term"].send_signal(signal.SIGTERM)
    runs["int"].send_signal(signal.SIGINT)
    runs["kill"].send_signal(signal.SIGKILL)
    sweep.send_signal(signal.SIGTERM)

    for name, signum in (("term", signal.SIGTERM), ("int", signal.SIGINT)):
        code, _, err = _finish(runs[name])
        assert code == 128 + signum, err[-3000:]
        results = _results(workdir / name)
        assert results["status"] == "interrupted" and results["signal"] == signum.name
        assert isinstance(results["step"], int) and results["step"] >= 0
        assert results["pid"] == runs[name].pid
    code, _, _ = _finish(runs["kill"])
    assert code == -signal.SIGKILL
    killed = _results(workdir / "kill")  # still complete JSON: nothing is written in place
    assert killed["status"] == "running" and killed["pid"] == runs["kill"].pid and killed["host"]

    code, _, err = _finish(sweep)
    assert code == 143, err[-3000:]
    summary = (workdir / "sweep" / "summary.md").read_text()
    assert "3 jobs, 0 completed. Interrupted by SIGTERM." in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "seed=" in line]
    assert [re.search(r"\| (interrupted|not run) \|", row).group(1) for row in rows] == [
        "interrupted",
        "not run",
        "not run",
    ]
    # SIGKILL can land while a checkpoint is being written: only that process may leave its temporary
    # file (never a partial real one), and the next run in its directory sweeps it away.
    leftovers = list(workdir.rglob(TEMP_FILES))
    assert all(workdir / "kill" in p.parents and f".{runs['kill'].pid}." in p.name for p in leftovers), leftovers
    assert sorted(remove_stale_temp_files(workdir / "kill")) == sorted(leftovers)


def test_sigterm_to_a_parallel_sweep_stops_each_job_with_its_checkpoint(workdir: Path) -> None:
    """Issue 21 case 8: the joblib launcher's jobs run in worker processes; the signal reaches the
    command line's process only, and the launcher, interrupted, kills its workers."""
    endless = [*TRAIN, "logger=none", "trainer.max_epochs=1000"]
    sweep = _start(
        workdir,
        "-m",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
        *endless,
        "seed=1,2,3",
        "hydra.sweep.dir=sweep",
    )
    # Job directories start with the job number (seed=1,2,3 are jobs 0, 1, 2; gpt_lab.run.sweep.job_dir_name).
    for seed in (1, 2):  # the two jobs running at once
        _wait_for(lambda seed=seed: list((workdir / "sweep").glob(f"{seed - 1}_*/run.log")), STARTED_TRAINING, sweep)
    sweep.send_signal(signal.SIGTERM)
    code, _, err = _finish(sweep)
    assert code == 143, err[-3000:]
    for seed in (1, 2):
        results = _results(next((workdir / "sweep").glob(f"{seed - 1}_*")))
        assert (results["status"], results["signal"]) == ("interrupted", "SIGTERM"), results
        assert torch.load(results["checkpoint"], weights_only=True)["global_step"] == results["step"]
    summary = (workdir / "sweep" / "summary.md").read_text()
    assert "3 jobs, 0 completed. Interrupted by SIGTERM." in summary
    assert not list(workdir.rglob(TEMP_FILES))


def test_a_live_run_holds_its_directory_and_a_reused_pid_does_not(workdir: Path) -> None:
    """Issue 21 case 11: the live-run guard is an advisory lock (flock) on <run dir>/.run.lock, which the
    operating system releases when the run's process ends; the pid in results.json is not trusted."""
    resume = [*TRAIN, "logger=none", "ckpt_path=last", "hydra.run.dir=run"]
    code, _, err = _run(workdir, *resume, "trainer.max_steps=2")
    assert code == 0, err[-3000:]
    # What a SIGKILLed run leaves: results.json "running", and its pid since taken by another process.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        results = _results(workdir / "run") | {"status": "running", "pid": stranger.pid, "host": socket.gethostname()}
        (workdir / "run" / "results.json").write_text(json.dumps(results))
        with open(workdir / "run" / ".run.lock", "a+") as lock:  # a live run holds the lock (here: this test)
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate(0)
            lock.write(f"{os.getpid()} {socket.gethostname()}\n")
            lock.flush()
            code, _, err = _run(workdir, *resume, "trainer.max_steps=4")
            assert code == 2
            assert f"belongs to a run that is still running (pid {os.getpid()} " in _one_paragraph_error(err)
        code, _, err = _run(workdir, *resume, "trainer.max_steps=4")  # the lock is free: the reused pid is no run
        assert code == 0, err[-3000:]
        assert _results(workdir / "run")["global_step"] == 4
    finally:
        stranger.kill()
        stranger.wait()

    # Two resumes at once: one runs, the other is refused (before, both passed and one crashed).
    both = [_start(workdir, *resume, "trainer.max_steps=40") for _ in range(2)]
    outcomes = sorted(_finish(proc)[::2] for proc in both)  # (status, stderr)
    assert [code for code, _ in outcomes] == [0, 2], outcomes[1][1][-3000:]
    assert "belongs to a run that is still running" in _one_paragraph_error(outcomes[1][1])
    assert _results(workdir / "run")["global_step"] == 40


# ---------------------------------------------------------------------------------------------
# A full disk


def test_full_disk_is_one_paragraph_and_leaves_no_partial_file(workdir: Path) -> None:
    # 10 MB: results.json, the log and the data fit; the first checkpoint (~19 MB: weights and AdamW state) does not.
    code, _, err = _run(
        workdir,
        *TRAIN,
        "logger=none",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "hydra.run.dir=run",
        fsize_limit=10_000_000,
    )
    assert code == 1
    checkpoints = workdir / "run" / "checkpoints"
    message = _one_paragraph_error(err)
    assert re.search(rf"cannot write epoch00-step\d+\.ckpt in {re.escape(str(checkpoints))}: the disk is full", message)
    assert not list(checkpoints.glob("*")) and not list(workdir.rglob(TEMP_FILES))
    results = _results(workdir / "run")  # rewritten completely, with the reason
    assert results["status"] == "failed" and "cannot write epoch00-step" in results["error"]


# ---------------------------------------------------------------------------------------------
# Bad inputs: one paragraph, exit status 2, the key named, before anything heavy


def _tiny_param_count(emb_dim: int, n_layers: int = 2, vocab: int = 50257, context: int = 64) -> int:
    """Chapter 4's parameter count, by hand: embeddings, blocks (attention, feed-forward, 2 norms), head."""
    block = 4 * emb_dim * emb_dim + emb_dim + (8 * emb_dim * emb_dim + 5 * emb_dim) + 4 * emb_dim
    return vocab * emb_dim + context * emb_dim + n_layers * block + 2 * emb_dim + vocab * emb_dim


def test_bad_inputs_are_one_paragraph_errors(workdir: Path) -> None:
    # Checkpoints to resume from: text, a truncated file, and one of another size (no stated config).
    # TINY_RUN's model but for its context: 8 positions where the run has 16 (its hyper-parameters say so).
    model_cfg = {**TINY, "vocab_size": 50257, "n_heads": 2, "n_layers": 1, "context_length": 8}
    state = {f"model.{k}": v for k, v in GPTModel(model_cfg).state_dict().items()}
    hparams = {"model_cfg": model_cfg, "lr": 0.0004, "weight_decay": 0.1}
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 0}, workdir / "other_size.ckpt")
    whole = (workdir / "other_size.ckpt").read_bytes()
    (workdir / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    (workdir / "text.ckpt").write_text("not a checkpoint\n")

    huge = _tiny_param_count(1048576)
    unreadable = "is not a readable Lightning checkpoint"
    # The schema's own messages (vocab_size, temperature, optim.lr, ckpt_path without task=train) are
    # checked in-process by test_config.py, and their path through the command line (one paragraph,
    # exit 2, results.json failed) by test_cli.py: here the checks that run after the schema's.
    cases = [
        (["model=tiny", "model.emb_dim=1048576"], [f"has {huge:,} parameters and needs {huge * 4 / 2**30:,.1f} GiB"]),
        (
            [*TRAIN_WITH_SAMPLES, "trainer.max_epochs=abc", "callbacks.sample_text.max_new_tokens=-1"],
            ["trainer.max_epochs='abc' is not an integer or null", "sample_text.max_new_tokens=-1 must be >= 0"],
        ),
        ([*TRAIN, "ckpt_path=text.ckpt"], [f"text.ckpt {unreadable}"]),
        ([*TRAIN, "ckpt_path=truncated.ckpt"], [f"truncated.ckpt {unreadable}"]),
        ([*TRAIN, "ckpt_path=other_size.ckpt"], ["of another shape", "model.context_length=16 (checkpoint: 8)"]),
    ]

    def attempt(i: int) -> tuple[int, str]:
        code, _, err = _run(workdir, *cases[i][0], f"hydra.run.dir=bad{i}")
        return code, err

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(attempt, range(len(cases))))
    for i, ((overrides, expected), (code, err)) in enumerate(zip(cases, outcomes, strict=True)):
        assert code == 2, (overrides, err[-3000:])
        message = _one_paragraph_error(err)
        for text in expected:
            assert text in message, (overrides, message)
        results = _results(workdir / f"bad{i}")
        assert results["status"] == "failed" and results["error"] == message.removeprefix("gpt_lab: error: ")
        assert not (workdir / f"bad{i}" / "checkpoints").exists()  # stopped before training
    assert re.search(r"this machine has [\d,.]+ GiB", _one_paragraph_error(outcomes[0][1]))
