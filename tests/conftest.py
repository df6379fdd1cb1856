"""Shared fixtures: compose the project's Hydra config in-process, run the CLI in a subprocess, the
book's seed-123 gpt2_small (built once per worker); tests marked ``gpu`` are skipped where no CUDA
device is present.

The suite runs in parallel (pytest-xdist, ``-n auto`` in pyproject.toml): at most ``MAX_WORKERS``
workers, each with its share of the cores for PyTorch's threads and for the runs it starts in
subprocesses (``OMP_NUM_THREADS``), so two workers on two cores do not fight over four threads.
Tests that need a thread count set it themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import quiet_known_warnings

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_DIR / "conf"
RUN_SCRIPT = PROJECT_DIR / "scripts" / "run.py"
MAX_WORKERS = 4  # each worker holds its own models (the book's gpt2_small: 0.5 GB) and imports


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most ``MAX_WORKERS``."""
    return min(MAX_WORKERS, _cores())


def pytest_configure(config: pytest.Config) -> None:
    """In a worker: its share of the cores, for PyTorch here and for the processes its tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, _cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests without a CUDA device (they run where one is present)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_known_warnings() -> None:
    """The warnings a run silences at start-up, silenced in every test too (pytest resets filters per test)."""
    quiet_known_warnings()


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Two PyTorch threads for one test, whatever its worker was given (``pytest_configure``): the paths
    that split work between threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def native_kernel() -> Callable[..., None]:
    """gpt_lab's float32 kernel (gpt_lab/model/native.py); the test is skipped where it cannot be built."""
    from gpt_lab.model import native

    kernel = native.f32_kernel()
    if kernel is None:
        pytest.skip("the native kernels cannot be built here (no C compiler or no libgomp in torch/lib)")
    return kernel


@pytest.fixture(scope="session")
def book_model() -> GPTModel:
    """Chapter 4's gpt2_small as the book builds it (``torch.manual_seed(123)``, then the model, in
    eval mode): the golden output's model, built once per suite. Tests only read it (generation
    restores the mode it found); a test that changes weights builds its own."""
    import torch

    from scripts.book_reference import GPT_CONFIG_124M

    torch.manual_seed(123)
    return GPTModel(GPT_CONFIG_124M).eval()


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_config("model=tiny", ...)``: the project's composed config, as a run would get it.

    Hydra's runtime paths (``paths.*``) point at ``run_dir`` (default ``tmp_path``): relative
    inputs resolve there and the run writes there, as in a real run's directory.
    """

    def _compose(*overrides: str, run_dir: Path | None = None, return_hydra_config: bool = False) -> DictConfig:
        where = run_dir or tmp_path
        paths = [f"paths.root_dir={where}", f"paths.project_dir={where}", f"paths.output_dir={where}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
            return compose("config", overrides=[*overrides, *paths], return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli("model=tiny", ...)``: ``python scripts/run.py ...`` run from ``tmp_path``."""

    def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "GPT_LAB_ROOT")}
        return subprocess.run(
            [sys.executable, str(RUN_SCRIPT), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run
