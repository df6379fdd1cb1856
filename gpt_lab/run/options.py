"""Config group options on the command line: a name no group has is a user error that lists the options.

Hydra fails a missing option of a group with status 1 and a page of search paths, and an
``optional`` default (``optional experiment``) hides a typo completely. ``check_group_options``
looks at the command line's overrides before Hydra composes anything: every ``group=option``
(also ``+group=``, ``++group=``, and each value of a sweep ``group=a,b``) must name a YAML file of
``conf/<group>/`` (``~group`` deselects one). Hydra's own groups (``hydra/launcher=...``, which plugins extend)
are left to Hydra, and so is a command line that adds config directories (``--config-dir``,
``hydra.searchpath``). A key that only another option of a group has (``task=prepare
data.source=books/`` without ``data=corpus``) is refused the same way, naming that option.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from gpt_lab.errors import ConfigError, first_line
from gpt_lab.run.error_exit import exit_with_error  # the one printer of a user error (exit status 2)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_options(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every group folder under ``conf_dir`` (``a/b`` for nested ones)."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf_dir).as_posix()] = options
    return groups


def _option_keys(conf_dir: Path, group: str, option: str, seen: frozenset[str] = frozenset()) -> set[str] | None:
    """The keys ``group=option`` gives its group's node (with those of the options its defaults list
    pulls in, e.g. data=corpus's ``text@data``); None when that cannot be told from its YAML alone."""
    from omegaconf import OmegaConf

    path = conf_dir / group / f"{option}.yaml"
    if not path.is_file() or option in seen:
        return None
    node = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(node, dict):
        return None
    if path.read_text(encoding="utf-8").lstrip().startswith("# @package _global_"):
        own = node.get(group.split("/")[-1])
        keys = set(own) if isinstance(own, dict) else set()
    else:
        keys = {k for k in node if k != "defaults"}
    for entry in node.get("defaults") or []:
        name = entry if isinstance(entry, str) else None
        if name is None or name == "_self_":
            continue
        other, _, package = name.partition("@")
        if package in ("", group.split("/")[-1], "_group_"):
            more = _option_keys(conf_dir, group, other.strip(), seen | {option})
            if more is None:
                return None
            keys |= more
    return keys


def _default_option(conf_dir: Path, group: str) -> str | None:
    """The option conf/config.yaml's defaults list picks for ``group`` (None: none, or not a plain name)."""
    from omegaconf import OmegaConf

    for entry in OmegaConf.to_container(OmegaConf.load(conf_dir / "config.yaml")).get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if key.removeprefix("optional ").strip() == group and isinstance(value, str):
                    return value
    return None


def misplaced_group_keys(args: Iterable[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One message per ``group.key=value`` whose key the chosen option of ``group`` lacks but another has."""
    overrides = _overrides(args)
    groups = group_options(conf_dir)
    chosen: dict[str, str | None] = {}
    for text in overrides:
        key, _, value = text.lstrip("+").partition("=")
        if key in groups and "," not in value:
            chosen[key] = value
    # A preset chooses options too (experiment=ch06: data=classification); the command line wins.
    for group, option in list(chosen.items()):
        for other, picked in _preset_choices(conf_dir, group, option).items():
            chosen.setdefault(other, picked)
    problems = []
    for text in overrides:
        if text.startswith(("+", "~")):
            continue  # an explicit addition: the schema says whether the key exists
        group, _, key = text.partition("=")[0].partition(".")
        key = key.split(".")[0]
        if group not in groups or not key or group.startswith("hydra"):
            continue
        option = chosen.get(group, _default_option(conf_dir, group))
        keys = _option_keys(conf_dir, group, option) if option else None
        if keys is None or key in keys:
            continue
        owners = [o for o in groups[group] if key in (_option_keys(conf_dir, group, o) or ())]
        if owners and key not in _keys_from_other_groups(conf_dir, group):
            problems.append(
                f"{group}.{key} is a key of {' and '.join(f'{group}={o}' for o in owners)}, not of "
                f"{group}={option}: add {group}={owners[0]}"
            )
    return problems


def _keys_from_other_groups(conf_dir: Path, package: str) -> set[str]:
    """Keys that options of other groups write into ``package`` (``# @package model``: the lab's
    ``ffn=moe`` sets ``model.num_experts``, which a family preset of ``model`` also sets)."""
    from omegaconf import OmegaConf

    keys: set[str] = set()
    for path in conf_dir.glob("*/*.yaml"):
        if path.parent.name != package and path.read_text(encoding="utf-8").startswith(f"# @package {package}\n"):
            node = OmegaConf.to_container(OmegaConf.load(path))
            keys |= {str(k) for k in node if k != "defaults"} if isinstance(node, dict) else set()
    return keys


def _preset_choices(
    conf_dir: Path, group: str, option: str | None, seen: frozenset[str] = frozenset()
) -> dict[str, str]:
    """``{group: option}`` that ``conf/<group>/<option>.yaml`` picks with ``override /group: option``
    in its defaults list, following the presets it includes (``ch06_lora`` includes ``ch06``)."""
    from omegaconf import OmegaConf

    path = conf_dir / group / f"{option}.yaml"
    if not option or option in seen or not path.is_file():
        return {}
    node = OmegaConf.to_container(OmegaConf.load(path))
    picks: dict[str, str] = {}
    included: list[str] = []
    for entry in (node.get("defaults") or []) if isinstance(node, dict) else []:
        if isinstance(entry, str) and entry != "_self_":
            included.append(entry.strip())
        elif isinstance(entry, dict):
            for key, value in entry.items():
                name = str(key).removeprefix("override").strip().lstrip("/")
                if isinstance(value, str):
                    picks[name] = value
    for other in included:  # the preset's own overrides win over those it includes
        for key, value in _preset_choices(conf_dir, group, other, seen | {option}).items():
            picks.setdefault(key, value)
    return picks


MULTIRUN_FLAGS = ("-m", "--multirun")


def _quoted(key: str, value: str) -> tuple[str, str]:
    """``key=value`` with the value quoted for Hydra, and that word quoted for a POSIX shell."""
    inner = value.replace("\\", "\\\\")
    hydra = f"{key}='{inner}'" if "'" not in value else f'{key}="{inner}"' if '"' not in value else None
    if hydra is None:
        hydra = f"{key}='" + inner.replace("'", "\\'") + "'"
    shell = f'"{hydra}"' if not any(c in hydra for c in '"$`\\!') else shlex.quote(hydra)
    return hydra, shell


def grammar_problems(args: Iterable[str]) -> list[str]:
    """One message per override Hydra's grammar cannot read, or that it would read as a sweep outside
    ``-m``: saying how to quote the value (Hydra fails both with exit status 1 and a page of its own)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = list(args)
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    parser = OverridesParser.create()
    problems = []
    for text in _overrides(args):
        key, _, value = text.partition("=")
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as err:
            hydra, shell = _quoted(key, value)
            reason = first_line(err)
            problems.append(
                f"{text} is not a value Hydra can read ({reason}): quotes and = : , [ ] {{ }} ( ) are "
                f"Hydra's syntax inside a value, so quote the value for Hydra and the whole word for the shell: "
                f"{shell} (Hydra then reads {hydra})"
            )
            continue
        if override.is_sweep_override() and not multirun and not key.startswith("hydra."):
            hydra, shell = _quoted(key, value)
            problems.append(
                f"{text} is a sweep over several values (a comma separates them), which runs only with -m: for "
                f"one value holding a comma write {shell} (Hydra then reads {hydra}), for a list {key}=[...], "
                "for a sweep add -m"
            )
    return problems


def _overrides(args: Iterable[str]) -> list[str]:
    """The overrides among ``args``: ``key=value`` words (Hydra's own flags start with ``-``)."""
    return [a for a in args if "=" in a and not a.startswith("-")]


def unknown_group_options(args: Iterable[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One message per ``group=option`` in ``args`` (a command line) that names no option of ``group``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = list(args)
    overrides = _overrides(args)
    if any(a.startswith(("--config-dir", "-cd", "--config-path", "-cp")) for a in args) or any(
        o.lstrip("+~").startswith("hydra.searchpath") for o in overrides
    ):
        return []  # options may come from another directory: Hydra decides
    groups = group_options(conf_dir)
    problems = []
    for text in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except Exception:
            continue  # not valid override syntax: Hydra's own message says why
        group = override.key_or_group.split("@")[0]
        if group not in groups or group.startswith("hydra") or override.is_delete():
            continue
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:
                continue  # glob() / range(): Hydra expands them against the options itself
        else:
            value = override.value()
            if not isinstance(value, str | None):
                continue  # a list of options (a multi-select default): Hydra checks it
            values = [override.get_value_element_as_str()]
        for value in values:
            if value not in groups[group]:  # null too: ~group deselects a group
                problems.append(
                    f"{group}={value} is not an option of the {group} group; choose one of "
                    f"{', '.join(groups[group])} (conf/{group}/)"
                )
    return problems


def schema_keys(schema: type | None = None, prefix: str = "") -> dict[str, bool]:
    """``{dotted key: takes free-form sub-keys}`` for every key of the run's schema (gpt_lab/config/schema.py).

    A dataclass field is followed into its fields; a ``dict`` field (``trainer``, ``logger``,
    ``callbacks``) is free-form: Lightning's arguments, checked when they are built.
    """
    import dataclasses
    import types
    import typing

    from gpt_lab.config import Config

    keys: dict[str, bool] = {}
    hints = typing.get_type_hints(schema or Config)
    for f in dataclasses.fields(schema or Config):
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else []
        target = inner[0] if len(inner) == 1 else hint
        name = prefix + f.name
        if dataclasses.is_dataclass(target):
            keys[name] = False
            keys.update(schema_keys(target, name + "."))
        else:
            keys[name] = typing.get_origin(target) is dict or target is dict
    return keys


def unknown_keys(args: Iterable[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """One message per ``key=value`` whose key the run's schema does not have, naming the nearest keys.

    Hydra would say "Could not override ... use +key=value" (exit 1), and following that advice gets
    the schema's refusal; this says it once. Group choices, Hydra's keys, ``+`` / ``~`` overrides and
    the free-form nodes' sub-keys (``trainer.max_steps``) are left to Hydra and to validation.
    """
    import difflib

    known = schema_keys()
    groups = group_options(conf_dir)
    problems = []
    for text in _overrides(args):
        if text.startswith(("+", "~")):
            continue
        key = text.partition("=")[0]
        if key in groups or key.startswith("hydra") or "/" in key or "@" in key:
            continue
        parts = key.split(".")
        if any(known.get(".".join(parts[:i])) for i in range(1, len(parts))):
            continue  # inside a free-form node
        if key in known:
            continue
        near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        parent = ".".join(parts[:-1])
        siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
        where = parent or "the top level"
        hint = f"did you mean {' or '.join(near)}?" if near else f"{where} has {', '.join(siblings)}"
        problems.append(
            f"{key} is not a key of the config ({hint}); the keys and their types: python scripts/run.py --help "
            "and gpt_lab/config/schema.py"
        )
    return problems


def check_group_options(args: list[str] | None = None, conf_dir: Path = CONF_DIR) -> None:
    """Refuse (one paragraph on stderr, exit status 2) a command line naming an option no group has,
    a key of a group option it did not choose, or a key the config does not have."""
    args = sys.argv[1:] if args is None else args
    problems = (
        grammar_problems(args)
        or unknown_group_options(args, conf_dir)
        or misplaced_group_keys(args, conf_dir)
        or unknown_keys(args)
    )
    if problems:
        raise exit_with_error(ConfigError("; ".join(problems)))
