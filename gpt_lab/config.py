"""The run configuration's schema, and the one function that validates it.

YAML under ``conf/`` holds the values; the dataclasses here are the schema. ``validate_config``
merges a composed Hydra config into the schema (unknown keys, wrong types, missing values) and
then checks ranges and cross-field rules in ``check_config``. Every task calls it before doing any
work, and every problem is reported as a ``ConfigError`` whose message names the key and the
values it accepts, e.g. ``model.n_heads=5 must divide model.emb_dim=768``.

To add a key: give it a value in the YAML of its group, a field (its type; ``MISSING`` as the
default, since the YAML holds the value) in the dataclass of that group, and a range check in
``check_config`` if it needs one.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gpt_lab.errors import ConfigError, describe_type, first_line
from gpt_lab.tokenizer import N_VOCAB

MIN_TEMPERATURE = 1e-3  # below it logits / temperature overflow float32 (1e-45: inf, then NaN probabilities)
MAX_TEMPERATURE = 1e3
MAX_LR = 1.0  # AdamW steps of about lr per weight: beyond 1 no run learns anything
SCHEDULER_NAMES = ("constant", "warmup_cosine")
DROPOUT_KEYS = ("drop_rate", "drop_rate_emb", "drop_rate_attn", "drop_rate_shortcut")
MAX_SEED = 2**32 - 1
DATA_NAMES = ("text", "corpus", "classification", "instructions", "preferences")
DPO_LOGPROBS = ("mean", "sum")  # issue 20: per response token as the book, or summed as TRL


# OpenAI's four GPT-2 sizes (the book's GPT_CONFIG_124M and exercise 4.2), by model group option.
# conf/model/<option>.yaml carries the same numbers for the command line; a test keeps them in step.
GPT2_SIZES: dict[str, dict[str, int]] = {
    "gpt2_small": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2_medium": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2_large": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2_xl": {"vocab_size": 50257, "context_length": 1024, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}

# The schema holds types, not values: every value comes from the YAML under conf/ (MISSING here
# means "the composed config must supply it"). None is a value of its own ("not set").


@dataclass
class ModelConfig:
    """``cfg.model``: the book's GPT_CONFIG keys plus exercise 4.3's rates and weight tying."""

    name: str = MISSING  # the model group's option (gpt2_small, ..., tiny)
    vocab_size: int = MISSING
    context_length: int = MISSING
    emb_dim: int = MISSING
    n_heads: int = MISSING
    n_layers: int = MISSING
    drop_rate: float = MISSING
    # Exercise 4.3: separate rates; null means "same as drop_rate".
    drop_rate_emb: float | None = MISSING
    drop_rate_attn: float | None = MISSING
    drop_rate_shortcut: float | None = MISSING
    qkv_bias: bool = MISSING
    tie_weights: bool = MISSING
    causal_mask: bool = MISSING  # false: no causal mask (chapter 6's bonus table; conf/causal_mask)


@dataclass
class TaskConfig:
    """``cfg.task``: the function that runs (``conf/task/<name>.yaml`` names it) and its name."""

    _target_: str = MISSING  # e.g. gpt_lab.tasks.train.run: a function taking the validated config
    name: str = MISSING  # the task group's option, recorded in results.json


@dataclass
class DataConfig:
    name: str = MISSING  # the data group's option: text (data.path) or corpus (task=prepare's data.dir)
    _target_: str = MISSING  # the LightningDataModule's from_config(cfg, context_length)
    lit_module: str = MISSING  # the LightningModule class that trains on it (task=train)
    path: str | None = MISSING  # a UTF-8 text file, relative to the directory the user ran from
    batch_size: int = MISSING
    stride: int | None = MISSING  # null: the context length
    train_ratio: float = MISSING
    num_workers: int | None = MISSING  # loader processes (text); task=prepare's processes (null: all cores)
    # data=corpus only (conf/data/corpus.yaml sets them; None: not used by this data option).
    source: str | None = None  # a file, a directory or a glob that task=prepare tokenizes
    dir: str | None = None  # the prepared directory (a local path, or a URL litdata reads)
    val_fraction: float | None = None  # the share of documents that validates
    overwrite: bool | None = None  # task=prepare may replace another corpus in data.dir
    loader_workers: int | None = None  # litdata StreamingDataLoader worker processes (0: the main process)
    eval_max_batches: int | None = None  # batches of the initial/final losses and task=evaluate (None: all)
    # Fine-tuning data (issues 18, 19, 20; conf/data/<option>.yaml sets those it uses).
    train_path: str | None = None  # one file per split instead of data.path
    val_path: str | None = None
    test_path: str | None = None
    # The padded / allowed length: null = the longest training text (classification) or the context
    # length (instructions), an integer, or "context" (classification: the bonus table's "pad to 1024").
    max_length: int | str | None = None
    # data=classification only.
    val_ratio: float | None = None  # the book's 0.1 (train_ratio 0.7; the test split is the rest)
    balance: bool | None = None  # undersample every class to the smallest one's size (the book's SMS data)
    label_column: str | None = None  # column names of files with a header
    text_column: str | None = None
    header: bool | None = None  # null: a header when the first row names both columns; false: label<TAB>text
    class_names: list[str] | None = None  # the classes in index order (null: the training labels, sorted)
    pad: bool | None = None  # false: pad each batch to its longest text only (batch 1: no padding)
    # data=instructions and data=preferences.
    prompt_style: str | None = None  # alpaca | phi3 (generation/prompt_styles.py); preferences: null = init_from's
    mask_prompt: bool | None = None  # exercise 7.2: only the response tokens are targets
    fields: dict[str, str] | None = None  # the file's names for instruction / input / output
    test_ratio: float | None = None  # after the train_ratio share, this share tests; the rest validates
    shuffle: bool | None = None  # shuffle the entries (seeded by `seed`) before splitting; the book does not
    # data=preferences only.
    chosen_key: str | None = None  # the file's field holding the preferred response
    rejected_key: str | None = None  # the file's field holding the other response


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    clip_grad_norm: float | None = MISSING  # max global L2 norm of the gradients, from the end of warmup; null: off


@dataclass
class SchedulerConfig:
    """``cfg.scheduler``: the learning rate per optimizer step (gpt_lab/training/schedule.py); peak is ``optim.lr``."""

    name: str = MISSING  # constant | warmup_cosine (appendix D)
    warmup_steps: int | None = MISSING  # wins over warmup_ratio when set
    warmup_ratio: float | None = MISSING  # fraction of the run's optimizer steps (the book's 0.2)
    initial_lr: float | None = MISSING  # null: 0
    min_lr: float | None = MISSING  # null: 0


# --- Issue 18: fine-tuning (what trains) and appendix E's LoRA ---------------------------------
FINETUNE_NAMES = ("all", "last_block", "last_two_blocks", "head", "lora")  # gpt_lab.model.finetune's
LORA_SCALINGS = ("rank", "alpha")


@dataclass
class FinetuneConfig:
    """``cfg.finetune``: what trains (``conf/finetune/<name>.yaml``; gpt_lab/model/finetune.py)."""

    name: str = MISSING  # all | last_block | last_two_blocks | head | lora


@dataclass
class LoRAConfig:
    """``cfg.lora``: appendix E's adapters, used by ``finetune=lora``."""

    rank: int = MISSING
    alpha: float = MISSING
    targets: list[str] = MISSING  # all | attention | feedforward | head | Linear names or globs
    scaling: str = MISSING  # rank: alpha / rank (appendix E); alpha: alpha alone (the bonus script)


POOLINGS = ("last", "last_nonpad", "first", "mean")


@dataclass
class ClassifierConfig:
    """``cfg.classifier``: chapter 6's classification head (conf/classifier/default.yaml)."""

    pooling: str = MISSING  # last (the book) | last_nonpad | first | mean
    initial_eval_batches: int | None = MISSING  # batches behind the accuracy and loss before training (book: 10)
    epoch_eval_batches: int | None = MISSING  # batches behind each epoch's accuracy (book: 5)


def _check_classification(cfg: DictConfig) -> list[str]:
    problems = []
    c, d = cfg.classifier, cfg.data
    if c.pooling not in POOLINGS:
        problems.append(f"classifier.pooling={c.pooling} is not a pooling; choose one of {', '.join(POOLINGS)}")
    for key in ("initial_eval_batches", "epoch_eval_batches"):
        if c[key] is not None and c[key] < 1:
            problems.append(f"classifier.{key}={c[key]} must be >= 1, or null for the whole split")
    if d.val_ratio is not None and not (0.0 < d.val_ratio < 1.0 and d.train_ratio + d.val_ratio < 1.0):
        problems.append(
            f"data.val_ratio={d.val_ratio} must be in (0, 1) and leave a test split: data.train_ratio + "
            f"data.val_ratio = {d.train_ratio + d.val_ratio:g} must be below 1"
        )
    m = d.max_length
    if d.name == "classification" and m is not None and not (m == "context" or (isinstance(m, int) and m > 0)):
        problems.append(f"data.max_length={m} must be a positive integer, context, or null (the longest training text)")
    return problems


def _check_finetune(cfg: DictConfig) -> list[str]:
    problems = []
    if cfg.finetune.name not in FINETUNE_NAMES:
        problems.append(f"finetune={cfg.finetune.name} is not a choice; choose one of {', '.join(FINETUNE_NAMES)}")
    lora = cfg.lora
    if lora.rank <= 0:
        problems.append(f"lora.rank={lora.rank} must be a positive integer")
    if not lora.alpha > 0:
        problems.append(f"lora.alpha={lora.alpha} must be a positive number")
    if lora.scaling not in LORA_SCALINGS:
        problems.append(f"lora.scaling={lora.scaling} is not a scaling; choose one of {', '.join(LORA_SCALINGS)}")
    if not lora.targets or any(not t for t in lora.targets):
        problems.append(f"lora.targets={list(lora.targets)} must name Linear layers, e.g. [all] or [W_query,W_value]")
    return problems


@dataclass
class PathsConfig:
    root_dir: str = MISSING  # the directory the user ran from: relative inputs resolve here
    project_dir: str = MISSING  # the project (holds conf/ and outputs/)
    output_dir: str = MISSING  # this run's Hydra directory: everything the run writes goes here


@dataclass
class JudgeConfig:
    """Issue 19, ``task=judge``: an Ollama-compatible server scores responses from 0 to 100 (the book's prompt)."""

    url: str = MISSING  # the server, e.g. http://localhost:11434 (its /api/chat endpoint is used)
    model: str = MISSING  # the judging model the server runs (the book: llama3)
    responses: str | None = MISSING  # a responses file (test-responses.json) or the run directory holding one
    response_key: str = MISSING  # the entry key holding the response to score (the book: model_response)
    prompt_style: str = MISSING  # how the entry's instruction and input are shown to the judge
    seed: int = MISSING
    temperature: float = MISSING
    num_ctx: int = MISSING  # the judging model's context window (Ollama's option)
    timeout: float = MISSING  # seconds to wait for one reply


@dataclass
class DPOConfig:
    """Issue 20: ``cfg.dpo``, the preference objective (set by conf/data/preferences.yaml)."""

    beta: float = MISSING  # the book's 0.1
    logprob: str = MISSING  # mean (the book) | sum (TRL): how a response's token log-probabilities combine
    test_responses: int | None = MISSING  # test entries answered by policy and reference after training; null: all


@dataclass
class Config:
    """The whole run. Trainer, logger and callbacks are free-form ``_target_`` dicts (Lightning's)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # issue 18
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # issue 18
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # issue 18
    text: str | None = MISSING  # task=classify: one text to classify (issue 18)
    text_file: str | None = MISSING  # task=classify: a UTF-8 file, one text per line (issue 18)
    seed: int = MISSING
    prompt: str = MISSING
    prompts: list[str] = MISSING  # several prompts in one run (replaces prompt)
    max_new_tokens: int = MISSING
    temperature: float = MISSING  # 0: greedy
    top_k: int | None = MISSING
    stop_at_eos: bool = MISSING  # stop a continuation at <|endoftext|>
    stream: bool | None = MISSING  # print tokens as they come; null: when stdout is a terminal
    init_from: str | None = MISSING
    ckpt_path: str | None = MISSING
    compile: bool = MISSING  # torch.compile the model for training (task=train); generation stays eager
    # Issue 19: task=respond's instruction and input (conf/task/respond.yaml), the prompt style of weights
    # that carry none, and task=judge's settings (conf/task/judge.yaml). None: not used by this task.
    instruction: str | None = None
    input: str | None = None
    prompt_style: str | None = None
    max_response_tokens: int | None = None  # new tokens of an answer (test responses, task=respond); None: 256
    judge: JudgeConfig | None = None
    dpo: DPOConfig | None = None  # issue 20: data=preferences only


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """Check a composed config against the schema and its ranges; return it resolved and typed.

    ``cfg`` is what Hydra hands the task (a ``hydra`` node, if present, is ignored). The result is
    a structured ``DictConfig`` (assigning a wrong type to it fails) with every interpolation
    resolved. Raises ``ConfigError`` naming every problem found.
    """
    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve {err.full_key or 'the config'}: {first_line(err)}") from None
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
    if m.vocab_size != N_VOCAB:
        why = (
            f"a smaller one has no embedding for the ids up to {N_VOCAB - 1}"
            if m.vocab_size < N_VOCAB
            else f"a larger one generates ids from {N_VOCAB} on, which the tokenizer cannot decode"
        )
        problems.append(f"model.vocab_size={m.vocab_size} must be {N_VOCAB}, GPT-2's vocabulary ({why})")
    if m.emb_dim > 0 and m.n_heads > 0 and m.emb_dim % m.n_heads:
        divisors = [d for d in range(1, m.emb_dim + 1) if m.emb_dim % d == 0]
        shown = ", ".join(map(str, divisors[:16])) + (", ..." if len(divisors) > 16 else "")
        problems.append(f"model.n_heads={m.n_heads} must divide model.emb_dim={m.emb_dim} (choose one of {shown})")
    for key in DROPOUT_KEYS:
        rate = m[key]
        if rate is not None and not 0.0 <= rate < 1.0:
            allowed = "a rate in [0, 1)" if key == "drop_rate" else "a rate in [0, 1), or null for drop_rate's"
            problems.append(f"model.{key}={rate} must be {allowed}")
    if not 0 <= cfg.seed <= MAX_SEED:
        problems.append(f"seed={cfg.seed} must be in [0, {MAX_SEED}]")
    if cfg.prompt == "":
        problems.append("prompt='' is empty; give some text, e.g. prompt='Hello, I am'")
    for i, text in enumerate(cfg.prompts):
        if text == "":
            problems.append(f"prompts[{i}]='' is empty; give some text, e.g. prompts='[Hello, Every effort]'")
    if cfg.max_new_tokens < 0:
        problems.append(f"max_new_tokens={cfg.max_new_tokens} must be >= 0")
    if not (cfg.temperature == 0 or MIN_TEMPERATURE <= cfg.temperature <= MAX_TEMPERATURE):  # NaN fails both
        problems.append(
            f"temperature={cfg.temperature} must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}"
        )
    if cfg.top_k is not None and cfg.top_k < 1:
        problems.append(f"top_k={cfg.top_k} must be >= 1, or null for no top-k filter")
    d = cfg.data
    if d.batch_size <= 0:
        problems.append(f"data.batch_size={d.batch_size} must be a positive integer")
    if d.stride is not None and d.stride <= 0:
        problems.append(f"data.stride={d.stride} must be a positive integer, or null for the context length")
    if not 0.0 < d.train_ratio < 1.0:
        problems.append(f"data.train_ratio={d.train_ratio} must be in (0, 1)")
    if d.num_workers is not None and d.num_workers < 0:
        problems.append(f"data.num_workers={d.num_workers} must be >= 0")
    if d.name not in DATA_NAMES:
        problems.append(f"data.name={d.name} is not a data option; choose one of {', '.join(DATA_NAMES)}")
    if d.val_fraction is not None and not 0.0 < d.val_fraction < 1.0:
        problems.append(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    if d.loader_workers is not None and d.loader_workers < 0:
        problems.append(f"data.loader_workers={d.loader_workers} must be >= 0")
    if d.eval_max_batches is not None and d.eval_max_batches < 1:
        problems.append(f"data.eval_max_batches={d.eval_max_batches} must be >= 1, or null for the whole split")
    if not 0 < cfg.optim.lr <= MAX_LR:  # NaN fails too
        problems.append(f"optim.lr={cfg.optim.lr} must be a number in (0, {MAX_LR:g}], e.g. 0.0004")
    if not 0 <= cfg.optim.weight_decay < math.inf:
        problems.append(f"optim.weight_decay={cfg.optim.weight_decay} must be a finite number >= 0")
    if cfg.ckpt_path and cfg.task.name != "train":
        problems.append(
            f"ckpt_path={cfg.ckpt_path} resumes training and only task=train uses it; to {cfg.task.name} with "
            f"a checkpoint's weights give init_from={cfg.ckpt_path}"
        )
    problems += _check_long_run(cfg)
    problems += _check_finetune(cfg)
    problems += _check_classification(cfg)
    problems += _check_instructions(cfg)
    problems += _check_trainer_lengths(cfg)
    problems += _check_preferences(cfg)
    return problems


def _check_preferences(cfg: DictConfig) -> list[str]:
    """Issue 20: data=preferences and the dpo.* keys."""
    problems = []
    d, dpo = cfg.data, cfg.dpo
    if d.name != "preferences":
        return problems
    if isinstance(d.max_length, str) or (d.max_length is not None and d.max_length < 2):
        problems.append(f"data.max_length={d.max_length} must be an integer >= 2 (prompt and response tokens), or null")
    if dpo is None:
        return [*problems, "data=preferences needs the dpo.* keys (conf/data/preferences.yaml sets them)"]
    if not dpo.beta > 0 or not math.isfinite(dpo.beta):
        problems.append(f"dpo.beta={dpo.beta} must be a number > 0 (the book's 0.1)")
    if dpo.logprob not in DPO_LOGPROBS:
        problems.append(f"dpo.logprob={dpo.logprob} must be one of {', '.join(DPO_LOGPROBS)}")
    if dpo.test_responses is not None and dpo.test_responses < 0:
        problems.append(f"dpo.test_responses={dpo.test_responses} must be >= 0, or null for the whole test split")
    if cfg.task.name == "train" and not cfg.init_from:
        problems.append(
            "data=preferences (DPO) needs a starting model: init_from=<instruction-tuned run directory or weights> "
            "(the policy starts from it and a frozen copy of it is the reference)"
        )
    return problems


# Issue 21: the run's length, checked before anything is built (Lightning would refuse it after the model).
TRAINER_LENGTH_KEYS = ("max_steps", "max_epochs")


def _check_trainer_lengths(cfg: DictConfig) -> list[str]:
    """``trainer.max_steps`` / ``max_epochs``: an integer >= 0, or -1 (no limit); null where Lightning allows it."""
    problems = []
    for key in TRAINER_LENGTH_KEYS:
        value = (cfg.trainer or {}).get(key)
        # Types are the pre-flight's (gpt_lab/run/preflight.py, from the Trainer's signature).
        if isinstance(value, int) and not isinstance(value, bool) and value < -1:
            problems.append(f"trainer.{key}={value} must be >= 0, or -1 for no limit")
    return problems


def _check_instructions(cfg: DictConfig) -> list[str]:
    """Issue 19: data=instructions, task=respond and task=judge."""
    # Prompt style names are checked against their registry (gpt_lab/generation/prompt_styles.py, a later
    # layer) where they are used, before any model is built.
    problems = []
    d = cfg.data
    m = d.max_length
    if d.name != "classification" and m is not None and not (isinstance(m, int) and m > 0):
        problems.append(f"data.max_length={m} must be a positive integer, or null for the context length")
    if d.test_ratio is not None:
        if not 0.0 < d.test_ratio < 1.0:
            problems.append(f"data.test_ratio={d.test_ratio} must be in (0, 1)")
        elif d.train_ratio + d.test_ratio >= 1.0:
            problems.append(
                f"data.train_ratio={d.train_ratio} plus data.test_ratio={d.test_ratio} must be below 1, leaving "
                "entries to validate"
            )
    for name, value in (d.fields or {}).items():
        if name not in ("instruction", "input", "output"):
            problems.append(f"data.fields.{name} is not a field; map instruction, input or output")
        elif not value:
            problems.append(f"data.fields.{name} is empty; give the file's name for {name}")
    if cfg.max_response_tokens is not None and cfg.max_response_tokens < 1:
        problems.append(f"max_response_tokens={cfg.max_response_tokens} must be a positive integer (the book's 256)")
    j = cfg.judge
    if j is not None:
        if not j.url.startswith(("http://", "https://")):
            problems.append(f"judge.url={j.url} must be an http:// or https:// address, e.g. http://localhost:11434")
        if not j.model:
            problems.append("judge.model is empty; name the judging model, e.g. judge.model=llama3")
        if not 0 <= j.seed <= MAX_SEED:
            problems.append(f"judge.seed={j.seed} must be in [0, {MAX_SEED}]")
        if not 0 <= j.temperature < math.inf:
            problems.append(f"judge.temperature={j.temperature} must be >= 0 (the book's 0: the same score every time)")
        if j.num_ctx < 1:
            problems.append(f"judge.num_ctx={j.num_ctx} must be a positive integer (the book's 2048)")
        if not 0 < j.timeout < math.inf:
            problems.append(f"judge.timeout={j.timeout} must be a positive number of seconds")
    return problems


def _check_long_run(cfg: DictConfig) -> list[str]:
    """The schedule, clipping and step checkpoints (warmup against the run's length is checked at fit start)."""
    problems = []
    s, lr = cfg.scheduler, cfg.optim.lr
    if s.name not in SCHEDULER_NAMES:
        problems.append(f"scheduler.name={s.name} is not a schedule; choose one of {', '.join(SCHEDULER_NAMES)}")
    if s.warmup_steps is not None and s.warmup_steps < 0:
        problems.append(f"scheduler.warmup_steps={s.warmup_steps} must be >= 0 (or null to use warmup_ratio)")
    if s.warmup_ratio is not None and not 0.0 <= s.warmup_ratio < 1.0:
        problems.append(f"scheduler.warmup_ratio={s.warmup_ratio} must be in [0, 1) (the book's 0.2), or null")
    if s.name == "constant" and (s.warmup_steps or s.warmup_ratio):
        problems.append("scheduler=constant has no warmup; choose scheduler=warmup_cosine to warm up")
    for key in ("initial_lr", "min_lr"):
        if s[key] is None:
            continue
        if not 0 <= s[key] < math.inf:  # NaN fails too
            problems.append(f"scheduler.{key}={s[key]} must be a finite number >= 0, or null for 0")
        elif s.name != "constant" and s[key] > lr:
            problems.append(f"scheduler.{key}={s[key]} must not exceed the peak learning rate optim.lr={lr}")
    clip = cfg.optim.clip_grad_norm
    if clip is not None and not 0 < clip < math.inf:  # NaN fails too
        problems.append(f"optim.clip_grad_norm={clip} must be a finite number > 0 (or null: no clipping)")
    checkpoint = (cfg.callbacks or {}).get("model_checkpoint") or {}
    every = checkpoint.get("every_n_train_steps")
    if every is not None and (not isinstance(every, int) or every <= 0):
        problems.append(
            f"callbacks.model_checkpoint.every_n_train_steps={every} must be a positive integer "
            "(or null: checkpoints at epoch ends)"
        )
    return problems


def input_path(cfg: DictConfig, path: str | None) -> Path | None:
    """An input named in the config (``data.path``, ``init_from``, ``ckpt_path``) as an absolute path.

    Relative paths resolve against ``paths.root_dir``, the directory the user ran from; an
    absolute one stays as it is. None (or empty) stays None.
    """
    if not path:
        return None
    return Path(cfg.paths.root_dir, str(path)).resolve()


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
            expected = describe_type(hint)
    return f"{err.full_key}={value!r} is not {expected}"
