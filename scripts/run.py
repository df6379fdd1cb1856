"""gpt_lab's command line: ``python scripts/run.py [group=option ...] [key=value ...]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from gpt_lab.tasks import run_task


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_task(cfg)


if __name__ == "__main__":
    main()
