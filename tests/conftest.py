"""Shared fixtures: compose the project's Hydra config in-process, run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

PROJECT_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_DIR / "conf"
RUN_SCRIPT = PROJECT_DIR / "scripts" / "run.py"


@pytest.fixture
def compose_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``compose_config("model=tiny", ...)``: the composed config, writing to ``tmp_path``.

    Hydra's runtime paths (``paths.*``) point at ``tmp_path``, as in a real run's directory.
    """

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        paths = [f"paths.root_dir={tmp_path}", f"paths.project_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
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
