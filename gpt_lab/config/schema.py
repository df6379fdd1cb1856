"""The run configuration's schema: the dataclasses a composed Hydra config is merged into, and the
fixed tables (GPT-2 sizes, option names) the rest of gpt_lab reads.

YAML under ``conf/`` holds the values; the dataclasses here are the schema. To add a key: give it a
value in the YAML of its group, a field (its type; ``MISSING`` as the default, since the YAML holds
the value) in the dataclass of that group, and a range check in gpt_lab/config/checks.py if it
needs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

MIN_TEMPERATURE = 1e-3  # below it logits / temperature overflow float32 (1e-45: inf, then NaN probabilities)
MAX_TEMPERATURE = 1e3
MAX_LR = 1.0  # AdamW steps of about lr per weight: beyond 1 no run learns anything
SCHEDULER_NAMES = ("constant", "warmup_cosine")
DROPOUT_KEYS = ("drop_rate", "drop_rate_emb", "drop_rate_attn", "drop_rate_shortcut")
MAX_SEED = 2**32 - 1
DATA_NAMES = ("text", "corpus", "classification", "instructions", "preferences")
# How a response's token log-probabilities combine (gpt_lab/data/preferences.py, which tokens count):
# mean: the book's (averaged over the response header's last tokens and the response, no end-of-text);
# response_mean: averaged over the response and its end-of-text; sum: summed over those (TRL).
DPO_LOGPROBS = ("mean", "response_mean", "sum")


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
# lora_A's draw (gpt_lab/model/lora.py): book: Kaiming-uniform over A stored (in, rank), bound 1/sqrt(rank)
# (appendix E); peft: over (rank, in) as peft, litgpt and torchtune draw it, bound 1/sqrt(in_features).
LORA_INITS = ("book", "peft")


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
    init: str = MISSING  # book (appendix E) | peft: lora_A's draw (LORA_INITS)


POOLINGS = ("last", "last_nonpad", "first", "mean")


@dataclass
class ClassifierConfig:
    """``cfg.classifier``: chapter 6's classification head (conf/classifier/default.yaml)."""

    pooling: str = MISSING  # last (the book) | last_nonpad | first | mean
    initial_eval_batches: int | None = MISSING  # batches behind the accuracy and loss before training (book: 10)
    epoch_eval_batches: int | None = MISSING  # batches behind each epoch's accuracy (book: 5)


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
    logprob: str = MISSING  # mean (the book) | response_mean | sum (TRL): DPO_LOGPROBS above
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


# Issue 21: the run's length, checked before anything is built (Lightning would refuse it after the model).
TRAINER_LENGTH_KEYS = ("max_steps", "max_epochs")
