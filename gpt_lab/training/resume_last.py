"""Which checkpoint a training run resumes from (``ckpt_path``), and which one a run wrote.

``newest_checkpoint(directory)`` is the one rule for "the run's checkpoint": the newest complete
checkpoint of the directory, read from the files themselves, whatever state ``last.ckpt`` is in.
Lightning re-points its ``last.ckpt`` link by removing it and linking again, after removing the
older numbered checkpoint: a kill in between leaves the link dangling or missing, and a run
directory moved or copied elsewhere gets ``last-v1.ckpt`` beside it. The numbered files are written
atomically (``AtomicCheckpointIO``), so every ``*.ckpt`` that loads is complete; the newest is the
one with the most optimizer steps (``global_step``), the later-modified on a tie. ``last.ckpt`` is
named instead when it points at that same file (it is what a user resumes by hand).

``ckpt_path=last`` resumes that checkpoint of this run's own ``checkpoints/`` directory: re-running a
command with the same ``hydra.run.dir`` continues it, and starts it when there is nothing yet. Any
other value is a Lightning checkpoint file, relative to the directory the user ran from. The train
task's results and ``StopOnSignal`` report the same function's answer after their save.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError

log = logging.getLogger(__name__)

LAST = "last"
LAST_FILE = "last.ckpt"


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint, or None when it does not load (not complete)."""
    import torch

    try:
        # Memory-mapped: only the pickled structure is read, not the weights.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(checkpoint["global_step"])
    except Exception as err:  # truncated, not a checkpoint, a directory: not a checkpoint to resume
        log.warning("Skipping %s: not a complete Lightning checkpoint (%s: %s)", path, type(err).__name__, err)
        return None


def newest_checkpoint(directory: str | Path | None) -> Path | None:
    """The newest complete checkpoint in ``directory`` (see the module's docstring), or None if it holds none."""
    if directory is None or not Path(directory).is_dir():
        return None
    best: tuple[int, float, str] | None = None
    for path in Path(directory).glob("*.ckpt"):
        try:
            target = path.resolve(strict=True)  # a dangling link fails here
            mtime = target.stat().st_mtime
        except OSError:
            continue
        if path.is_symlink() or not target.is_file():
            continue  # links are compared through the file they point at
        step = checkpoint_step(target)
        if step is not None and (best is None or (step, mtime) > best[:2]):
            best = (step, mtime, str(target))
    if best is None:
        return None
    last = Path(directory, LAST_FILE)
    if os.path.realpath(last) == best[2] and last.exists():
        return last
    return Path(best[2])


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
        newest = newest_checkpoint(checkpoint_dir)
        if newest is not None:
            log.info("ckpt_path=last: resuming from %s (%s)", newest, newest.resolve().name)
            return newest
        unreadable = sorted(p.name for p in Path(checkpoint_dir).glob("*.ckpt") if p.is_file())
        if unreadable:  # never a silent fresh start over a run's checkpoints
            raise UserError(
                f"ckpt_path=last: {checkpoint_dir} holds checkpoints, but none loads ({', '.join(unreadable)}); "
                "resume one by hand with ckpt_path=<file.ckpt>, or move them away to start afresh"
            )
        log.warning("ckpt_path=last: no checkpoint in %s yet; starting a fresh run", checkpoint_dir)
        return None
    path = input_path(cfg, ckpt_path)
    if path is None or not path.is_file():
        raise UserError(
            f"ckpt_path={ckpt_path} is not a file ({path}); give a Lightning .ckpt to resume, or ckpt_path=last "
            "for the newest checkpoint of this run directory (hydra.run.dir=<the run>)"
        )
    return path
