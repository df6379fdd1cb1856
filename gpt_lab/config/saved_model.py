"""The model a fine-tuning run saved (its ``model.json``), taken as the run's model by ``init_from``.

A run directory that ``init_from`` names carries its model: ``model.pth`` and, beside it,
``model.json`` (gpt_lab/model/finetune.py writes both) whose ``model`` entry is the config the
weights were made with. ``adopt_saved_model`` puts that architecture into the composed config
before it is validated, so every task (train, DPO, evaluate, generate, classify, respond) builds
the model the weights fit, whatever the ``model`` group's default is. Dropout rates are training
settings, not architecture: they stay the run's own. A ``model=...`` or ``model.<key>=...`` given
on the command line that disagrees with the saved model is one paragraph (a ``ConfigError``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpt_lab.config.architecture import ARCH_DEFAULTS, ARCH_GROUPS
from gpt_lab.config.schema import DROPOUT_KEYS, GPT2_SIZES, ModelConfig
from gpt_lab.errors import ConfigError

META_FILE = "model.json"
MODEL_FILE = "model.pth"
# The keys a model group option sets (conf/model/<option>.yaml): what model=<option> states.
SIZE_KEYS = tuple(next(iter(GPT2_SIZES.values())))
_SCHEMA_KEYS = tuple(ModelConfig.__dataclass_fields__)
# The model options of the families (conf/model/<family>_*.yaml): named beside a family directory, they keep their name.
FAMILY_PRESETS = ("llama", "qwen", "gemma")


def saved_model_file(init_from: str | Path) -> Path | None:
    """The ``model.json`` that ``init_from`` (a run directory, its ``model.pth`` or the json) carries; None if none."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        path = path / META_FILE
    elif path.name != META_FILE:
        path = path.with_name(META_FILE) if path.name == MODEL_FILE else path.parent / "_none_"
    return path if path.is_file() else None


def saved_model_config(init_from: str | Path) -> dict[str, Any] | None:
    """The ``model`` entry of the ``model.json`` that ``init_from`` carries; None when it carries none."""
    meta_path = saved_model_file(init_from)
    if meta_path is None:
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"init_from={init_from}: {meta_path} is not readable JSON ({err})") from None
    model = meta.get("model") if isinstance(meta, Mapping) else None
    return dict(model) if isinstance(model, Mapping) else None


def family_directory_name(init_from: str | Path) -> str | None:
    """The name of a Hugging Face family directory that ``init_from`` names (``checkpoints/Qwen3-0.6B``:
    ``Qwen3-0.6B``): a directory with a ``config.json`` and no ``model.json``. None for anything else."""
    path = Path(init_from).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file() or saved_model_file(path) is not None:
        return None
    return path.resolve().name or None


def explicit_model_overrides(overrides: Sequence[str]) -> tuple[bool, set[str]]:
    """From Hydra's task overrides: whether ``model=<option>`` was given, and the ``model.<key>`` keys set."""
    group = False
    keys: set[str] = set()
    for item in overrides:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if key == "model":
            group = True
        elif key.startswith("model."):
            keys.add(key.removeprefix("model.").split(".", 1)[0])
    return group, keys


def adopt_saved_model(plain: dict[str, Any], init_from: Path | None, overrides: Sequence[str]) -> None:
    """Set ``plain["model"]`` (a plain config dict) to the architecture ``init_from`` carries, in place.

    ``overrides``: the command line's (Hydra's task overrides). A ``model=<option>`` whose sizes, or
    a ``model.<key>=...`` whose value, differ from the saved model's is a ``ConfigError``.
    """
    if init_from is None or not isinstance(plain.get("model"), dict):
        return
    saved = saved_model_config(init_from)
    model = plain["model"]
    if saved is None:
        # A family directory's config.json replaces a GPT-2 preset's architecture when the weights are read
        # (a family preset named beside it is checked instead): the run is named after the directory.
        family = family_directory_name(init_from)
        if family is not None and not str(model.get("name")).startswith(FAMILY_PRESETS):
            model["name"] = family
        return
    group, keys = explicit_model_overrides(overrides)
    stated = set(keys) | (set(SIZE_KEYS) if group else set())
    # An architecture group named on the command line (attention=mla, ...) is the user's choice: the
    # architecture keys stay as composed, and the weights' own check refuses a variant they cannot fill.
    chosen_parts = any(str(item).split("=", 1)[0].lstrip("+~") in ARCH_GROUPS for item in overrides)
    if chosen_parts:
        stated -= set(ARCH_DEFAULTS)
    clashes = [
        f"model.{k}={model[k]} (saved: {saved[k]})"
        for k in sorted(stated - set(DROPOUT_KEYS) - {"name"})
        if k in saved and k in model and model[k] != saved[k]
    ]
    if clashes:
        sizes = ", ".join(f"{k}={saved[k]}" for k in SIZE_KEYS if k in saved)
        chosen = f"model={model.get('name')}" if group else "the command line"
        raise ConfigError(
            f"init_from={init_from} carries its model ({saved.get('name', 'unnamed')}: {sizes}) but {chosen} "
            f"sets {', '.join(clashes)}: these weights cannot be built that way; leave model=... out to use the "
            "saved model, or start from weights of the model you name"
        )
    for key in _SCHEMA_KEYS:
        if key in saved and key not in DROPOUT_KEYS and not (chosen_parts and key in ARCH_DEFAULTS):
            model[key] = saved[key]


def run_model_name(choice: Any, task: Any = None, init_from: Any = None, judge_model: Any = None) -> str:
    """The model a run is named after (``${run_model:...}`` in conf/hydra/default.yaml's run directory):
    the judging model for ``task=judge``, the saved model's name when ``init_from`` carries one, else the
    ``model`` group's option. Never fails: a name is not worth stopping a run for."""
    name: Any = choice
    try:
        if str(task) == "judge" and judge_model:
            name = judge_model
        elif init_from:
            saved = saved_model_config(init_from)
            if saved and saved.get("name"):
                name = saved["name"]
            elif saved is None and not str(choice).startswith(FAMILY_PRESETS):
                name = family_directory_name(init_from) or name
    except Exception:  # an unreadable model.json is reported by validation, by name
        name = choice
    return str(name).replace("/", "-").replace(":", "-")
