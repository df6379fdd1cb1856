"""Validation of a composed run configuration: ``validate_config`` merges it into the schema
(gpt_lab/config/schema.py: unknown keys, wrong types, missing values), then ``check_config`` checks
ranges and cross-field rules. Every problem is a ``ConfigError`` whose message names the key and the
values it accepts, e.g. ``model.n_heads=5 must divide model.emb_dim=768``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gpt_lab.config.architecture import check_architecture
from gpt_lab.config.saved_model import adopt_saved_model
from gpt_lab.config.schema import (
    DATA_NAMES,
    DPO_LOGPROBS,
    DPO_LOSSES,
    DROPOUT_KEYS,
    ESTIMATE_DTYPES,
    FINETUNE_NAMES,
    GENERATION_WEIGHTS,
    LORA_INITS,
    LORA_SCALINGS,
    MAX_LR,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    POOLINGS,
    SCHEDULER_NAMES,
    TRAINER_LENGTH_KEYS,
    Config,
)
from gpt_lab.errors import ConfigError, describe_type, first_line
from gpt_lab.tokenizer import N_VOCAB


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
    reads_padding = c.pooling in ("last", "mean") or not cfg.model.causal_mask
    if d.name == "classification" and d.pad is False and d.batch_size > 1 and reads_padding:
        what = f"classifier.pooling={c.pooling}" if c.pooling in ("last", "mean") else "model.causal_mask=false"
        problems.append(
            f"data.pad=false with {what} and data.batch_size={d.batch_size}: each batch is padded to its own "
            "longest text and that pooling reads the padding, so a text's class would depend on its batch "
            "neighbours (and task=classify, which runs texts unpadded, would read another position); use "
            "classifier.pooling=last_nonpad or first (with the causal mask), data.batch_size=1 (the bonus "
            "table's no-padding row), or data.pad=true"
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
    if not lora.alpha > 0 or not math.isfinite(lora.alpha):
        problems.append(f"lora.alpha={lora.alpha} must be a positive finite number (appendix E: 16, with lora.rank=16)")
    if lora.scaling not in LORA_SCALINGS:
        problems.append(f"lora.scaling={lora.scaling} is not a scaling; choose one of {', '.join(LORA_SCALINGS)}")
    if lora.init not in LORA_INITS:
        problems.append(f"lora.init={lora.init} is not an initialisation; choose one of {', '.join(LORA_INITS)}")
    if not 0.0 <= lora.dropout < 1.0:
        problems.append(f"lora.dropout={lora.dropout} must be a rate in [0, 1)")
    if any(not t for t in lora.train_also):
        problems.append(f"lora.train_also={list(lora.train_also)} must name modules, e.g. [out_head,final_norm]")
    if not lora.targets or any(not t for t in lora.targets):
        problems.append(f"lora.targets={list(lora.targets)} must name Linear layers, e.g. [all] or [W_query,W_value]")
    return problems


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> DictConfig:
    """Check a composed config against the schema and its ranges; return it resolved and typed.

    ``cfg`` is what Hydra hands the task (a ``hydra`` node, if present, is ignored). The result is
    a structured ``DictConfig`` (assigning a wrong type to it fails) with every interpolation
    resolved. Raises ``ConfigError`` naming every problem found.
    """
    overrides = command_line_overrides(cfg)
    if isinstance(cfg, DictConfig) and "hydra" in cfg:  # compose(..., return_hydra_config=True)
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"])
    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve {err.full_key or 'the config'}: {first_line(err)}") from None
    plain.pop("hydra", None)
    init_from = plain.get("init_from")
    if init_from and isinstance(plain.get("paths"), dict):
        root = plain["paths"].get("root_dir") or "."
        adopt_saved_model(plain, Path(root, str(init_from)).resolve(), overrides)
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


# Tasks that read no text: a vocabulary other than GPT-2's needs no tokenizer there (sizes, files).
TASKS_WITHOUT_TOKENIZER = ("estimate", "export", "prepare", "judge")


def _check_vocabulary(cfg: DictConfig) -> list[str]:
    """A vocabulary other than GPT-2's needs the tokenizer that fits it: ``init_from`` a Llama 3 / Qwen3 /
    Gemma 3 directory with its tokenizer.json, or a run trained from one (whose size is checked
    against the file when it is read, gpt_lab.hf_tokenizer.check_vocab). Without one the run reads
    GPT-2's tokenizer, which fits ``model.vocab_size=50257`` only."""
    from gpt_lab.hf_tokenizer import tokenizer_directory

    m = cfg.model
    if m.vocab_size == N_VOCAB or m.vocab_size <= 0 or cfg.task.name in TASKS_WITHOUT_TOKENIZER:
        return []
    init_from = cfg.get("init_from")
    if init_from and tokenizer_directory(Path(cfg.paths.root_dir or ".", str(init_from))) is not None:
        return []
    why = (
        f"a smaller one has no embedding for the ids up to {N_VOCAB - 1}"
        if m.vocab_size < N_VOCAB
        else f"a larger one generates ids from {N_VOCAB} on, which the tokenizer cannot decode"
    )
    return [
        f"model.vocab_size={m.vocab_size} must be {N_VOCAB}, GPT-2's vocabulary ({why}), unless the model comes "
        "with its own tokenizer: init_from=<a Llama 3 / Qwen3 / Gemma 3 directory with its tokenizer.json, or a "
        "run trained from one> (model=qwen3_0_6b and the other full-size presets need their files; task=estimate "
        "sizes them without)"
    ]


def check_config(cfg: DictConfig) -> list[str]:
    """Range and cross-field checks on a typed config; one message per problem."""
    problems = []
    m = cfg.model
    for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        if m[key] <= 0:
            problems.append(f"model.{key}={m[key]} must be a positive integer")
    problems += _check_vocabulary(cfg)
    if m.emb_dim > 0 and m.n_heads > 0 and m.emb_dim % m.n_heads and m.head_dim is None:
        divisors = [d for d in range(1, m.emb_dim + 1) if m.emb_dim % d == 0]
        shown = ", ".join(map(str, divisors[:16])) + (", ..." if len(divisors) > 16 else "")
        problems.append(f"model.n_heads={m.n_heads} must divide model.emb_dim={m.emb_dim} (choose one of {shown})")
    problems += check_architecture(m)
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
    if d.train_ratio is not None and not 0.0 < d.train_ratio < 1.0:
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
    if cfg.task.name == "judge" and cfg.ckpt_path and cfg.ckpt_path != "last":
        problems.append(
            f"ckpt_path={cfg.ckpt_path}: task=judge resumes with ckpt_path=last only (with the run's hydra.run.dir: "
            "the scores it holds are kept)"
        )
    elif cfg.ckpt_path and cfg.task.name not in ("train", "judge"):
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
    problems += _check_objective(cfg)
    problems += _check_estimate(cfg)
    problems += _check_generation_weights(cfg)
    return problems


MAX_DPO_BETA = 100.0  # beta multiplies log-probability margins of a few nats; past this it only scales the loss


def _check_estimate(cfg: DictConfig) -> list[str]:
    """Issue 25: task=estimate's ``estimate.*`` keys."""
    e = cfg.estimate
    if e is None:
        needed = cfg.task.name == "estimate"
        return ["task=estimate needs the estimate.* keys (conf/task/estimate.yaml sets them)"] if needed else []
    problems = []
    if e.batch_size <= 0:
        problems.append(f"estimate.batch_size={e.batch_size} must be a positive integer")
    if e.dtype not in ESTIMATE_DTYPES:
        problems.append(f"estimate.dtype={e.dtype} is not a dtype; choose one of {', '.join(ESTIMATE_DTYPES)}")
    return problems


def _check_objective(cfg: DictConfig) -> list[str]:
    """Issue 29: task=train's objective trains on the data it is for (the experiment presets set both)."""
    o, d = cfg.objective, cfg.data
    if cfg.task.name != "train" or d.name in o.data:
        return []
    fits = ", ".join(f"data={name}" for name in o.data)
    return [
        f"objective={o.name} trains on {fits}, not on data={d.name}: choose the objective for this data "
        "(objective=next_token|classification|instruction|dpo; experiment=ch05, ch06, ch07 and dpo set both)"
    ]


def _check_generation_weights(cfg: DictConfig) -> list[str]:
    """Issue 28: ``generation.weights``, a known value and never with a task that trains."""
    weights = cfg.generation.weights
    if weights not in GENERATION_WEIGHTS:
        return [
            f"generation.weights={weights} is not a choice; choose one of {', '.join(GENERATION_WEIGHTS)} (fp32 the "
            "book's weights, bf16 half the bytes, int8 weight-only a quarter)"
        ]
    if weights != "fp32" and cfg.task.name == "train":
        return [
            f"generation.weights={weights} is for tasks that only read the weights (generate, respond, chat, "
            "classify, evaluate); task=train trains in fp32, or in bf16 through trainer=cpu_bf16 or "
            "trainer.precision=bf16-mixed, and its sample text uses the trained fp32 weights: drop generation.weights"
        ]
    return []


def _check_preferences(cfg: DictConfig) -> list[str]:
    """Issue 20: data=preferences and the dpo.* keys."""
    problems = []
    d, dpo = cfg.data, cfg.dpo
    if not 0 < dpo.beta <= MAX_DPO_BETA:
        problems.append(
            f"dpo.beta={dpo.beta} must be a number in (0, {MAX_DPO_BETA:g}] (the book's 0.1; DPO uses 0.01 to 0.5: "
            "a larger beta only scales the loss up, 1e30 to a loss of 1e26)"
        )
    if dpo.logprob not in DPO_LOGPROBS:
        problems.append(f"dpo.logprob={dpo.logprob} must be one of {', '.join(DPO_LOGPROBS)}")
    if dpo.loss not in DPO_LOSSES:
        problems.append(f"dpo.loss={dpo.loss} is not a DPO loss; choose one of {', '.join(DPO_LOSSES)}")
    if not 0.0 <= dpo.label_smoothing < 0.5:
        problems.append(f"dpo.label_smoothing={dpo.label_smoothing} must be in [0, 0.5) (0: the book's loss)")
    elif dpo.label_smoothing and dpo.loss != "sigmoid":
        problems.append(f"dpo.label_smoothing={dpo.label_smoothing} applies to dpo.loss=sigmoid only, not {dpo.loss}")
    if dpo.reference_free and dpo.precompute_reference:
        problems.append("dpo.precompute_reference=true has no reference to compute with dpo.reference_free=true")
    if d.name != "preferences":
        return problems
    if isinstance(d.max_length, str) or (d.max_length is not None and d.max_length < 2):
        problems.append(f"data.max_length={d.max_length} must be an integer >= 2 (prompt and response tokens), or null")
    if dpo.test_responses is not None and dpo.test_responses < 0:
        problems.append(f"dpo.test_responses={dpo.test_responses} must be >= 0, or null for the whole test split")
    if cfg.task.name == "train" and not cfg.init_from:
        problems.append(
            "data=preferences (DPO) needs a starting model: init_from=<instruction-tuned run directory or weights> "
            "(the policy starts from it and a frozen copy of it is the reference)"
        )
    return problems


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


def command_line_overrides(cfg: Any = None) -> list[str]:
    """The command line's overrides: those of a composed config's ``hydra`` node, or Hydra's running job's."""
    from hydra.core.hydra_config import HydraConfig

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None) if isinstance(cfg, DictConfig) else None
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    return [str(o) for o in task or []]


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
    return f"unknown key {err.full_key}{accepted} (check the spelling, or add the key to gpt_lab/config/schema.py)"


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
