"""Config group options on the command line: a name no group has is a user error that lists the options.

Hydra fails a missing option of a group with status 1 and a page of search paths, and an
``optional`` default (``optional experiment``) hides a typo completely. ``check_group_options``
looks at the command line's overrides before Hydra composes anything: every ``group=option``
(also ``+group=``, ``++group=``, and each value of a sweep ``group=a,b``) must name a YAML file of
``conf/<group>/`` (``~group`` deselects one). Hydra's own groups (``hydra/launcher=...``, which plugins extend)
are left to Hydra, and so is a command line that adds config directories (``--config-dir``,
``hydra.searchpath``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from gpt_lab.errors import ConfigError
from gpt_lab.run.status import USER_ERROR_EXIT_CODE

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_options(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for every group folder under ``conf_dir`` (``a/b`` for nested ones)."""
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(conf_dir).as_posix()] = options
    return groups


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


def check_group_options(args: list[str] | None = None, conf_dir: Path = CONF_DIR) -> None:
    """Refuse (one paragraph on stderr, exit status 2) a command line naming an option no group has."""
    problems = unknown_group_options(sys.argv[1:] if args is None else args, conf_dir)
    if problems:
        print(f"gpt_lab: error: {ConfigError('; '.join(problems))}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE)
