"""The run configuration's schema, and the one function that validates it.

YAML under ``conf/`` holds the values; the dataclasses here are the schema. ``validate_config``
merges a composed Hydra config into the schema (unknown keys, wrong types, missing values) and
then checks ranges and cross-field rules in ``check_config``. Every task calls it before doing any
work, and every problem is reported as a ``ConfigError`` whose message names the key and the
values it accepts, e.g. ``model.n_heads=5 must divide model.emb_dim=768``.

To add a key: add a field (with its type and default) to the dataclass of its group, and a range
check to ``check_config`` if it needs one.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

TASK_NAMES = ("generate", "train", "evaluate")
DROPOUT_KEYS = ("drop_rate", "drop_rate_emb", "drop_rate_attn", "drop_rate_shortcut")
MAX_SEED = 2**32 - 1


class UserError(Exception):
    """A mistake the user can fix: a bad config value, an empty prompt, a missing input file.

    scripts/run.py prints the message as one paragraph on stderr, without a traceback, and exits
    with status 2. Any task may raise it (or a subclass) for problems with its inputs.
    """


class ConfigError(UserError):
    """The composed configuration does not fit the schema or its ranges."""


@dataclass
class ModelConfig:
    """``cfg.model``: the book's GPT_CONFIG keys plus the variants of DESIGN.md."""

    name: str = MISSING  # the model group's option (gpt2_small, ..., tiny)
    vocab_size: int = MISSING
    context_length: int = MISSING
    emb_dim: int = MISSING
    n_heads: int = MISSING
    n_layers: int = MISSING
    drop_rate: float = MISSING
    # Exercise 4.3: separate rates; None means "same as drop_rate".
    drop_rate_emb: float | None = None
    drop_rate_attn: float | None = None
    drop_rate_shortcut: float | None = None
    qkv_bias: bool = False
    tie_weights: bool = False


@dataclass
class TaskConfig:
    name: str = "generate"


@dataclass
class DataConfig:
    path: str | None = None  # a UTF-8 text file, relative to the directory the user ran from
    batch_size: int = 2
    stride: int | None = None  # None: the context length
    train_ratio: float = 0.9
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 0.0004
    weight_decay: float = 0.1


@dataclass
class PathsConfig:
    root_dir: str = MISSING  # the directory the user ran from: relative inputs resolve here
    project_dir: str = MISSING  # the project (holds conf/ and outputs/)
    output_dir: str = MISSING  # this run's Hydra directory: everything the run writes goes here


@dataclass
class Config:
    """The whole run. Trainer, logger and callbacks are free-form ``_target_`` dicts (Lightning's)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 123
    prompt: str = "Hello, I am"
    prompts: list[str] = field(default_factory=list)  # several prompts in one run (replaces prompt)
    max_new_tokens: int = 10
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    stop_at_eos: bool = False  # stop a continuation at <|endoftext|>
    stream: bool | None = None  # print tokens as they come; None: when stdout is a terminal
    init_from: str | None = None
    ckpt_path: str | None = None
    compile: bool = False  # torch.compile the model for training (task=train); generation stays eager


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """Check a composed config against the schema and its ranges; return it resolved and typed.

    ``cfg`` is what Hydra hands the task (a ``hydra`` node, if present, is ignored). The result is
    a structured ``DictConfig`` (assigning a wrong type to it fails) with every interpolation
    resolved. Raises ``ConfigError`` naming every problem found.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve {err.full_key or 'the config'}: {_first_line(err)}") from None
    plain.pop("hydra", None)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), plain)
    except ConfigKeyError as err:
        raise ConfigError(_unknown_key_message(err)) from None
    except ValidationError as err:
        raise ConfigError(_wrong_type_message(err, plain)) from None
    assert isinstance(typed, DictConfig)
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set (no value was given for them)")
    problems = check_config(typed)
    if problems:
        raise ConfigError("; ".join(problems))
    return typed


def check_config(cfg: DictConfig) -> list[str]:
    """Range and cross-field checks on a typed config; one message per problem."""
    problems = []
    m = cfg.model
    for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        if m[key] <= 0:
            problems.append(f"model.{key}={m[key]} must be a positive integer")
    if m.emb_dim > 0 and m.n_heads > 0 and m.emb_dim % m.n_heads:
        divisors = [d for d in range(1, m.emb_dim + 1) if m.emb_dim % d == 0]
        shown = ", ".join(map(str, divisors[:16])) + (", ..." if len(divisors) > 16 else "")
        problems.append(f"model.n_heads={m.n_heads} must divide model.emb_dim={m.emb_dim} (choose one of {shown})")
    for key in DROPOUT_KEYS:
        rate = m[key]
        if rate is not None and not 0.0 <= rate < 1.0:
            allowed = "a rate in [0, 1)" if key == "drop_rate" else "a rate in [0, 1), or null for drop_rate's"
            problems.append(f"model.{key}={rate} must be {allowed}")
    if cfg.task.name not in TASK_NAMES:
        problems.append(f"task.name={cfg.task.name} is not a task; choose one of {', '.join(TASK_NAMES)}")
    if not 0 <= cfg.seed <= MAX_SEED:
        problems.append(f"seed={cfg.seed} must be in [0, {MAX_SEED}]")
    if cfg.prompt == "":
        problems.append("prompt='' is empty; give some text, e.g. prompt='Hello, I am'")
    for i, text in enumerate(cfg.prompts):
        if text == "":
            problems.append(f"prompts[{i}]='' is empty; give some text, e.g. prompts='[Hello, Every effort]'")
    if cfg.max_new_tokens < 0:
        problems.append(f"max_new_tokens={cfg.max_new_tokens} must be >= 0")
    if cfg.temperature < 0:
        problems.append(f"temperature={cfg.temperature} must be >= 0 (0 means greedy)")
    if cfg.top_k is not None and cfg.top_k < 1:
        problems.append(f"top_k={cfg.top_k} must be >= 1, or null for no top-k filter")
    d = cfg.data
    if d.batch_size <= 0:
        problems.append(f"data.batch_size={d.batch_size} must be a positive integer")
    if d.stride is not None and d.stride <= 0:
        problems.append(f"data.stride={d.stride} must be a positive integer, or null for the context length")
    if not 0.0 < d.train_ratio < 1.0:
        problems.append(f"data.train_ratio={d.train_ratio} must be in (0, 1)")
    if d.num_workers < 0:
        problems.append(f"data.num_workers={d.num_workers} must be >= 0")
    if cfg.optim.lr <= 0:
        problems.append(f"optim.lr={cfg.optim.lr} must be > 0")
    if cfg.optim.weight_decay < 0:
        problems.append(f"optim.weight_decay={cfg.optim.weight_decay} must be >= 0")
    return problems


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _unknown_key_message(err: ConfigKeyError) -> str:
    accepted = ""
    if dataclasses.is_dataclass(err.object_type):
        names = [f.name for f in dataclasses.fields(err.object_type)]
        parent = str(err.full_key).rpartition(".")[0]
        accepted = f"; {parent or 'the top level'} accepts {', '.join(names)}"
    return f"unknown key {err.full_key}{accepted} (check the spelling, or add the key to gpt_lab/config.py)"


def _wrong_type_message(err: ValidationError, plain: dict[str, Any]) -> str:
    value: Any = plain
    for part in str(err.full_key).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    expected = "a value of another type"
    if dataclasses.is_dataclass(err.object_type):
        hints = typing.get_type_hints(err.object_type)
        hint = hints.get(str(err.key))
        if hint is not None:
            expected = _describe_type(hint)
    return f"{err.full_key}={value!r} is not {expected}"


def _describe_type(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = len(args) < len(typing.get_args(hint))
    base = args[0] if optional and len(args) == 1 else hint
    words = {int: "an integer", float: "a number", bool: "a boolean (true or false)", str: "a string"}
    text = words.get(base, "a mapping" if typing.get_origin(base) is dict else str(base))
    return f"{text} or null" if optional else text
