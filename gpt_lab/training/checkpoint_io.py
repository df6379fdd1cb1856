"""Lightning checkpoints written atomically on local disks (``trainer.plugins``).

Lightning's own ``TorchCheckpointIO`` serialises the checkpoint into memory, then lets fsspec
write it through a temporary file in the system's temp directory that is moved into place; when
the run directory is on another filesystem that move is a copy, so a full disk leaves a truncated
checkpoint under its final name, and a kill leaves the temporary file behind in /tmp. Here
``torch.save`` streams into a temporary file beside the checkpoint, which is renamed into place
once complete (``gpt_lab.storage.atomic_write``). Remote URLs keep Lightning's path.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gpt_lab.storage import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves appear complete under their final name or not at all."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path) as f:
            torch.save(checkpoint, f)
