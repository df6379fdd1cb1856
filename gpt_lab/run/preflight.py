"""Checks a validated config against the machine and the libraries before any work starts.

``check_resources`` runs after ``validate_config`` and before the task builds anything:
- the model must fit in memory: its parameter count, taken from the model built on the ``meta``
  device (no memory), times 4 bytes (float32 weights), or 16 bytes when training (weights,
  gradients and AdamW's two moments), against the machine's memory (and the GPU's, when training
  on one) — "needs 196.0 GiB, this machine has 23.0 GiB";
- ``check_components`` (called by the train task as it builds its Trainer, loggers and callbacks,
  before the model) finds what building them does not: values of a type other than the one their
  signature declares, which the constructors accept (Lightning's Trainer takes
  ``trainer.max_epochs=abc`` and fails mid-fit), and trainer=cpu_bf16's conflicts. Unknown keys,
  targets that do not import and settings out of range (the callbacks' constructors check them)
  are the constructors' own errors (``gpt_lab.tasks.train.build_trainer``).
Problems are ``ConfigError``s naming the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt_lab.errors import ConfigError, describe_type

log = logging.getLogger(__name__)

GIB = 1024**3
# Bytes per parameter: float32 weights; training adds the gradient and AdamW's two moments.
BYTES_PER_PARAM = {"inference": 4, "training": 16}
COMPONENT_GROUPS = ("trainer", "callbacks", "logger")
MODEL_TASKS = ("generate", "train", "evaluate")  # the tasks that build the model (task=prepare does not)


def check_resources(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` when ``cfg`` cannot run here (see the module's docstring)."""
    if cfg.task.name in MODEL_TASKS:
        check_memory(cfg)


def _family_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The architecture of ``init_from`` when it is a Llama 3 / Qwen3 / Gemma 3 directory (its config.json)."""
    from gpt_lab.config import input_path
    from gpt_lab.model.hf_families import family_config
    from gpt_lab.model.hf_files import family_directory, read_config

    init_from = input_path(cfg, cfg.get("init_from"))
    directory = family_directory(init_from) if init_from is not None and init_from.exists() else None
    if directory is None:
        return None
    return family_config(read_config(directory) or {}, str(directory))


# ---------------------------------------------------------------------------------------------
# Memory


def count_params_on_meta(model_cfg: Mapping[str, Any]) -> int:
    """The parameter count of ``GPTModel(model_cfg)``, built on the meta device (no memory used)."""
    import torch

    from gpt_lab.model.gpt import GPTModel
    from gpt_lab.model.stats import count_params

    with torch.device("meta"):
        return count_params(GPTModel(dict(model_cfg)))


def machine_memory_bytes() -> int | None:
    """Physical memory, or the container's limit (cgroup v2 / v1) when it is lower; None if unknown."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not every OS names these
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for cgroup_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            limits.append(int(text))
    return min(limits) if limits else None


def _gpu_memory_bytes(cfg: DictConfig) -> int | None:
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator not in ("gpu", "cuda", "auto"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory


def _lora_params_on_meta(cfg: DictConfig, model_cfg: Mapping[str, Any]) -> int:
    """The adapters' parameters that ``finetune=lora`` adds (``lora.rank`` x (in + out) per target Linear)."""
    import torch

    from gpt_lab.model.gpt import GPTModel
    from gpt_lab.model.lora import apply_lora

    lora = cfg.lora
    with torch.device("meta"):
        model = GPTModel(dict(model_cfg))
        return apply_lora(model, int(lora.rank), float(lora.alpha), list(lora.targets), str(lora.scaling))


def check_memory(cfg: DictConfig) -> None:
    """Refuse a model whose weights (plus optimizer state when training) exceed the memory that holds them.

    Training on a GPU holds gradients and AdamW state there (not checked under FSDP, which shards
    them across devices); the machine then needs the weights only, to build the model.
    """
    training = cfg.task.name == "train"
    # init_from=<family directory>: its config.json is the architecture, whatever cfg.model says.
    model_cfg = _family_config(cfg) or OmegaConf.to_container(cfg.model)
    n_params = base = count_params_on_meta(model_cfg)
    if training and OmegaConf.select(cfg, "finetune.name", default=None) == "lora":
        n_params += _lora_params_on_meta(cfg, model_cfg)
    gpu = _gpu_memory_bytes(cfg) if training else None
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="") or "")
    checks = [("this machine", machine_memory_bytes(), "training" if training and gpu is None else "inference")]
    if gpu is not None and "fsdp" not in strategy:
        checks.append(("the GPU", gpu, "training"))
    lora_note = f" (LoRA adapters of lora.rank={cfg.lora.rank} included)" if n_params != base else ""
    for place, available, use in checks:
        needed = n_params * BYTES_PER_PARAM[use]
        what = "float32 weights, gradients and AdamW state" if use == "training" else "float32 weights"
        if available is not None and needed > available:
            raise ConfigError(
                f"model={cfg.model.name} (emb_dim={cfg.model.emb_dim}, n_layers={cfg.model.n_layers}, "
                f"vocab_size={cfg.model.vocab_size}) has {n_params:,} parameters and needs {needed / GIB:,.1f} GiB "
                f"for its {what}{lora_note}; {place} has {available / GIB:,.1f} GiB: choose a smaller model or "
                f"smaller model.emb_dim / model.n_layers{' or a smaller lora.rank' if lora_note else ''}"
            )


# ---------------------------------------------------------------------------------------------
# Trainer, callbacks and loggers


def check_components(cfg: DictConfig) -> list[str]:
    """Values of trainer, callbacks and logger entries whose type their ``_target_``'s signature does not
    declare, and trainer=cpu_bf16's conflicts (see the module's docstring)."""
    problems: list[str] = []
    for key, node in _components(cfg):
        problems += _check_types(key, node)
    return problems + _check_cpu_bf16(cfg)


CPU_BF16_PLUGIN = "gpt_lab.training.precision.CPUBf16Mixed"


def _check_cpu_bf16(cfg: DictConfig) -> list[str]:
    """trainer=cpu_bf16 sets its precision with a plugin: Lightning refuses a precision beside it,
    and the plugin's autocast is the CPU's."""
    trainer = cfg.get("trainer")
    plugins = OmegaConf.to_container(trainer.get("plugins") or [], resolve=True) if trainer is not None else []
    if not any(isinstance(p, dict) and p.get("_target_") == CPU_BF16_PLUGIN for p in plugins or []):
        return []
    problems = []
    if trainer.get("precision") is not None:
        problems.append(
            f"trainer.precision={trainer.precision} cannot be combined with trainer=cpu_bf16, whose precision is its "
            f"plugin {CPU_BF16_PLUGIN} (bf16-mixed); for another precision use trainer=cpu "
            f"trainer.precision={trainer.precision}"
        )
    if str(trainer.get("accelerator", "cpu")) != "cpu":
        problems.append(
            f"trainer.accelerator={trainer.accelerator} does not go with trainer=cpu_bf16, which is for the CPU; "
            "on a GPU use trainer=gpu (bf16-mixed)"
        )
    return problems


def _components(cfg: DictConfig) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for group in COMPONENT_GROUPS:
        tree = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else None
        if not isinstance(tree, dict):
            continue
        if "_target_" in tree:
            found.append((group, tree))
        else:
            found += [(f"{group}.{name}", node) for name, node in tree.items() if isinstance(node, dict)]
    return found


def _check_types(key: str, node: dict[str, Any]) -> list[str]:
    """Does each key of ``node`` hold a value of the type ``node['_target_']`` declares for it?"""
    from hydra.utils import get_object

    try:
        target = get_object(str(node.get("_target_")))
        signature = inspect.signature(target)
    except Exception:  # building it will say why (gpt_lab.tasks.train.build_trainer)
        return []
    hints = _type_hints(target)
    problems = []
    for name, value in node.items():
        hint_type = hints.get(name) if name in signature.parameters else None
        if hint_type is not None and not _matches(value, hint_type):
            problems.append(f"{key}.{name}={value!r} is not {describe_type(hint_type)} ({node['_target_']}'s {name})")
    return problems


def _type_hints(target: Any) -> dict[str, Any]:
    function = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # annotations that only resolve under TYPE_CHECKING: check the keys, not the types
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain Python, from YAML or the command line) fits the annotation ``hint``."""
    if hint is Any or isinstance(hint, typing.TypeVar):
        return True
    if isinstance(value, dict) and "_target_" in value:
        return True  # an object Hydra builds: its own checks apply
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(type(arg) is type(value) and arg == value for arg in args)  # 1 is not True here
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence, typing.Iterable) or hint in (list, tuple):
        return isinstance(value, list | tuple)
    if origin in (dict, typing.Mapping) or hint is dict:
        return isinstance(value, dict)
    if inspect.isclass(hint) and hint.__module__ == "builtins":
        return isinstance(value, hint)
    if inspect.isclass(hint) and issubclass(hint, os.PathLike):
        return isinstance(value, str)
    return True  # a library type (Accelerator, timedelta, ...) a config cannot hold directly: not ours to judge
