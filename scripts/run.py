"""gpt_lab's command line: ``python scripts/run.py [group=option ...] [key=value ...]``.

``--help`` lists the config groups and examples; ``-m`` runs a sweep. Works from any directory:
runs land in the project's outputs/ (``GPT_LAB_ROOT``, set here, names the project).
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gpt_lab.run.job import run_command_line, run_job
from gpt_lab.run.options import check_group_options

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
os.environ.setdefault("GPT_LAB_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    results = run_job(cfg)
    # What a Hydra sweeper (hydra/sweeper=optuna_lr_dropout) minimises: a training run's val_loss.
    return results.get("val_loss") if results else None


if __name__ == "__main__":
    check_group_options(conf_dir=CONF_DIR)  # experiment=ch5: one paragraph listing the options, exit 2
    run_command_line(main)  # SIGINT / SIGTERM: exit 130 / 143, an interrupted sweep's summary written
