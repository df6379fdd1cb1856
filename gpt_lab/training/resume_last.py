"""Which checkpoint a training run resumes from (``ckpt_path``); ``gpt_lab.training.resume`` checks it.

``ckpt_path=last`` is the newest checkpoint of this run's own directory (``checkpoints/last.ckpt``,
which ModelCheckpoint keeps pointing at the newest): re-running a command with the same
``hydra.run.dir`` continues it, and starts it when there is nothing yet. Any other value is a
Lightning checkpoint file, relative to the directory the user ran from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError

log = logging.getLogger(__name__)

LAST = "last"


def resolve_ckpt_path(cfg: DictConfig, checkpoint_dir: str | Path | None) -> Path | None:
    """The checkpoint file to resume, or None to start fresh (``ckpt_path=last`` with none saved yet)."""
    ckpt_path = cfg.ckpt_path
    if not ckpt_path:
        return None
    if ckpt_path == LAST:
        if checkpoint_dir is None:
            raise UserError(
                "ckpt_path=last resumes the newest checkpoint of the model_checkpoint callback, which is switched "
                "off (callbacks.model_checkpoint=null): switch it on, or give ckpt_path=<file.ckpt>"
            )
        last = Path(checkpoint_dir, "last.ckpt")
        if last.exists():
            log.info("ckpt_path=last: resuming from %s (%s)", last, last.resolve().name)
            return last
        log.warning("ckpt_path=last: no checkpoint in %s yet; starting a fresh run", checkpoint_dir)
        return None
    path = input_path(cfg, ckpt_path)
    if path is None or not path.is_file():
        raise UserError(
            f"ckpt_path={ckpt_path} is not a file ({path}); give a Lightning .ckpt to resume, or ckpt_path=last "
            "for the newest checkpoint of this run directory (hydra.run.dir=<the run>)"
        )
    return path
