"""The fine-tuned model file's names and the settings file beside it.

A fine-tuning run leaves ``model.pth`` (a state dict in the book's layout, which ``init_from=<run
dir>`` and the book's own code read) and ``model.json`` beside it: what using the model needs
(``kind``, the model config, ``class_names``, ``pooling``, ``prompt_style``, ``finetune``,
``lora``). ``gpt_lab.model.finetuned`` writes and reads both; ``gpt_lab.model.weights`` reads
``model.json`` wherever an ``init_from`` file has one beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# model.pth (the trained weights in the book's format, in a run directory) and model.json are named in
# the config layer, which reads model.json to give init_from's run its model (gpt_lab/config/saved_model.py).
from gpt_lab.config.saved_model import META_FILE, MODEL_FILE
from gpt_lab.errors import InitFromError

__all__ = ["META_FILE", "META_VERSION", "MODEL_FILE", "plain_settings", "read_meta"]
META_VERSION = 1


def plain_settings(value: Any) -> Any:
    """``value`` as JSON-ready Python (mappings, lists, scalars; anything else as its string)."""
    if isinstance(value, Mapping):
        return {str(k): plain_settings(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_settings(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def read_meta(weights_file: str | Path) -> dict[str, Any] | None:
    """The ``model.json`` beside ``weights_file`` (a ``model.pth``), or None when there is none."""
    meta_path = Path(weights_file).with_name(META_FILE)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InitFromError(
            f"init_from={weights_file}: {meta_path.name} beside it is not readable JSON ({err})"
        ) from None
    if not isinstance(meta, dict):
        raise InitFromError(f"init_from={weights_file}: {meta_path} does not hold a JSON object")
    return meta
