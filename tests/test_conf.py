"""Every option of every config group in ``conf/`` composes and validates, and every ``_target_``
(and ``objective.lit_module``) it holds names a class or function that exists, so a module moved or
renamed without its YAML fails here and not in the middle of a sweep. Nothing is instantiated or run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, ListConfig, OmegaConf

from gpt_lab.config import validate_config
from gpt_lab.run.job import task_function

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Keys whose value names a Python object by its dotted path.
TARGET_KEYS = ("_target_", "lit_module")


def group_options() -> list[str]:
    """``group=option`` for every YAML file below conf/ except the root config (``hydra/launcher=slurm`` ...)."""
    return sorted(
        f"{path.parent.relative_to(CONF_DIR).as_posix()}={path.stem}"
        for path in CONF_DIR.rglob("*.yaml")
        if path.parent != CONF_DIR
    )


def targets(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every target key in ``node`` (unresolved: interpolations stay as text)."""
    if isinstance(node, DictConfig):
        for key in node:
            child_where = f"{where}.{key}" if where else str(key)
            if key in TARGET_KEYS:
                yield child_where, OmegaConf.to_container(node, resolve=False)[key]
            else:
                yield from targets(node._get_node(key), child_where)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from targets(node._get_node(i), f"{where}[{i}]")


def locate(dotted: str) -> object:
    """The class or function ``dotted`` names (a classmethod such as ``X.from_config`` included)."""
    try:
        return get_class(dotted)
    except ValueError:  # exists, but is not a class
        return get_method(dotted)


def test_every_group_has_options() -> None:
    options = group_options()
    groups = {option.split("=")[0] for option in options}
    # The groups conf/config.yaml composes, and Hydra's launchers and sweepers.
    assert {"model", "dropout", "task", "data", "trainer", "logger", "callbacks", "experiment"} <= groups
    assert {"hydra/launcher", "hydra/sweeper"} <= groups


# Options that are only valid with an input the user must name (DPO starts from a tuned model).
REQUIRED_INPUTS = {
    "experiment=dpo": ["init_from=outputs/ch07-run"],
    "task=respond": ["init_from=outputs/ch07-run", "instruction=Rewrite the sentence using a simile."],
    # The full-size family presets' vocabularies need the family's tokenizer (init_from=<its directory>);
    # task=estimate sizes them without one (docs/families.md).
    **{f"model={name}": ["task=estimate"] for name in ("gemma3_270m", "llama3_2_1b", "qwen3_0_6b", "qwen3_30b_a3b")},
}


@pytest.mark.parametrize("option", group_options())
def test_option_composes_and_its_targets_exist(option: str, compose_config: Callable[..., DictConfig]) -> None:
    cfg = compose_config(option, return_hydra_config=True)
    group, name = option.split("=")
    if not group.startswith("hydra/"):
        assert cfg.hydra.runtime.choices[group] == name
        validated = validate_config(
            compose_config(option, *REQUIRED_INPUTS.get(option, []))
        )  # the schema and its ranges accept the option
        if group == "model":
            assert validated.model.name == name
        if group == "task":
            assert validated.task.name == name and callable(task_function(validated))
    found = dict(targets(cfg))
    assert found, "the composed config names Python objects (the task, the trainer, ...)"
    for key, dotted in found.items():
        assert isinstance(dotted, str) and "${" not in dotted, f"{option}: {key}={dotted!r} is not a dotted path"
        try:
            located = locate(dotted)
        except Exception as err:  # whatever the import raised: the message says it
            pytest.fail(f"{option}: {key}={dotted} cannot be located: {err}")
        if key == "hydra.launcher._target_":
            assert issubclass(located, Launcher), f"{option}: {dotted} is not a Hydra launcher"
        if key == "hydra.sweeper._target_":
            assert issubclass(located, Sweeper), f"{option}: {dotted} is not a Hydra sweeper"
    if group == "hydra/launcher":  # the plugin each option is for (joblib, submitit's SLURM and local executors)
        expected = {"parallel": "JoblibLauncher", "slurm": "SlurmLauncher", "slurm_local": "LocalLauncher"}
        assert found["hydra.launcher._target_"].endswith(expected[name])


def test_locate_refuses_a_stale_target() -> None:
    """The check above fails for a target that moved (the old flat layout's module)."""
    with pytest.raises(Exception, match="gpt_lab"):
        locate("gpt_lab.lit_module.GPTLitModule")
    assert locate("gpt_lab.training.lit_module.GPTLitModule").__name__ == "GPTLitModule"
    assert callable(locate("gpt_lab.data.text.TextDataModule.from_config"))
