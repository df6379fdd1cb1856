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

from gpt_lab.config.architecture import FAMILY_DEFAULTS

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
DPO_LOSSES = ("sigmoid", "ipo", "hinge")  # issue 29: the book's (DPO paper), IPO, SLiC's hinge (TRL's names)
# Issue 28: the weights a generating or classifying task reads (gpt_lab/generation/weights.py).
GENERATION_WEIGHTS = ("fp32", "bf16", "int8")


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
    # The architecture lab (issue 25): conf/{attention,window,ffn,norm,qk_norm,pos_emb}/*.yaml set these;
    # what each means and its default: gpt_lab/config/architecture.py.
    attention: str = MISSING  # mha | gqa | mla | deltanet
    n_kv_heads: int | None = MISSING
    latent_dim: int | None = MISSING
    full_attention_every: int = MISSING
    window: str = MISSING  # full | sliding
    sliding_window: int | None = MISSING
    sliding_pattern: Any = MISSING  # "5:1", a list of full-attention layer indices, or null
    ffn: str = MISSING  # gelu | swiglu | moe
    hidden_dim: int | None = MISSING
    num_experts: int | None = MISSING
    experts_per_token: int | None = MISSING
    moe_hidden_dim: int | None = MISSING
    norm: str = MISSING  # layernorm | rmsnorm
    norm_eps: float = MISSING
    qk_norm: bool = MISSING
    pos_emb: str = MISSING  # learned | rope
    rope_base: float = MISSING
    rope_scaling: dict[str, Any] | None = MISSING  # null or Llama 3's {type: llama3, factor, ...}
    head_dim: int | None = MISSING
    # Issue 26's family flags: a family preset sets them (conf/model/gemma3_270m.yaml, ...); every other
    # model keeps GPT-2's values, the defaults here (gpt_lab/config/architecture.py FAMILY_DEFAULTS).
    rope_local_base: float | None = FAMILY_DEFAULTS["rope_local_base"]
    emb_scale: bool = FAMILY_DEFAULTS["emb_scale"]
    query_scale: float | None = FAMILY_DEFAULTS["query_scale"]
    norm_offset: bool = FAMILY_DEFAULTS["norm_offset"]
    post_norms: bool = FAMILY_DEFAULTS["post_norms"]
    ffn_activation: str = FAMILY_DEFAULTS["ffn_activation"]  # silu | gelu_tanh
    attn_out_bias: bool = FAMILY_DEFAULTS["attn_out_bias"]
    ffn_bias: bool = FAMILY_DEFAULTS["ffn_bias"]
    moe_renormalize: bool = FAMILY_DEFAULTS["moe_renormalize"]  # ffn=moe's top-k weights (norm_topk_prob)
    init_std: float | None = FAMILY_DEFAULTS["init_std"]  # null: PyTorch's initial weights (the book's)


@dataclass
class TaskConfig:
    """``cfg.task``: the function that runs (``conf/task/<name>.yaml`` names it) and its name."""

    _target_: str = MISSING  # e.g. gpt_lab.tasks.train.run: a function taking the validated config
    name: str = MISSING  # the task group's option, recorded in results.json


@dataclass
class DataConfig:
    name: str = MISSING  # the data group's option: text (data.path) or corpus (task=prepare's data.dir)
    _target_: str = MISSING  # the LightningDataModule's from_config(cfg, context_length)
    path: str | None = MISSING  # a UTF-8 text file, relative to the directory the user ran from
    batch_size: int = MISSING
    stride: int | None = None  # data=text: the window step (null: the context length)
    train_ratio: float | None = None  # data=text / instructions / classification: the training share
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
    header: bool | None = None  # null: a header unless the first row is label<TAB>text; false: label<TAB>text
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
class ObjectiveConfig:
    """``cfg.objective``: what task=train optimises (``conf/objective/<name>.yaml``; the experiments set it)."""

    name: str = MISSING  # next_token | classification | instruction | dpo
    lit_module: str = MISSING  # the LightningModule class: its from_config(cfg, model_cfg, init_state, datamodule)
    data: list[str] = MISSING  # the data options it trains on


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


LORA_SCALINGS = ("rank", "alpha", "rslora")
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
    scaling: str = MISSING  # rank: alpha / rank (appendix E); alpha: alpha alone (the bonus script); rslora
    init: str = MISSING  # book (appendix E) | peft: lora_A's draw (LORA_INITS)
    dropout: float = MISSING  # on the adapters' input only (issue 29); 0: appendix E's
    train_also: list[str] = MISSING  # modules trained whole beside the adapters, e.g. [out_head, final_norm]


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
    """Issue 20: ``cfg.dpo``, the preference objective's settings (conf/config.yaml; objective=dpo reads them)."""

    beta: float = MISSING  # the book's 0.1
    logprob: str = MISSING  # mean (the book) | response_mean | sum (TRL): DPO_LOGPROBS above
    test_responses: int | None = MISSING  # test entries answered by policy and reference after training; null: all
    loss: str = MISSING  # sigmoid (the book) | ipo | hinge (issue 29, TRL's loss_type names)
    label_smoothing: float = MISSING  # sigmoid only: the share of pairs assumed mislabelled (cDPO); 0: the book's
    reference_free: bool = MISSING  # no reference: its log-probabilities are taken as 0
    precompute_reference: bool = MISSING  # the reference's log-probabilities computed once, before training


@dataclass
class GenerationConfig:
    """Issue 28: ``cfg.generation``, how generating and classifying tasks hold the weights."""

    weights: str = MISSING  # fp32 (the book's tokens) | bf16 | int8 (weight-only, float32 activations)


@dataclass
class ExportConfig:
    """Issue 26, ``task=export``: where the Hugging Face directory goes."""

    dir: str | None = MISSING  # a new or empty directory, relative to where the user ran from


# Issue 25, task=estimate: the dtype names estimate.dtype accepts, each with torch's name for it.
ESTIMATE_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


@dataclass
class EstimateConfig:
    """Issue 25: ``cfg.estimate``, what ``task=estimate`` sizes (conf/task/estimate.yaml)."""

    batch_size: int = MISSING  # sequences of the key/value cache and of the counted forward pass
    dtype: str = MISSING  # the cache's element type: one of ESTIMATE_DTYPES (the book's estimators: bf16)


@dataclass
class Config:
    """The whole run. Trainer, logger and callbacks are free-form ``_target_`` dicts (Lightning's)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # issue 29
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
    use_cache: bool = MISSING  # generation through the key/value cache (false: the uncached reference)
    # Issue 19: task=respond's instruction and input (conf/task/respond.yaml), the prompt style of weights
    # that carry none, and task=judge's settings (conf/task/judge.yaml). None: not used by this task.
    instruction: str | None = None
    input: str | None = None
    prompt_style: str | None = None
    max_response_tokens: int | None = None  # new tokens of an answer (test responses, task=respond); None: 256
    judge: JudgeConfig | None = None
    dpo: DPOConfig = field(default_factory=DPOConfig)  # issue 20: objective=dpo
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # issue 28
    export: ExportConfig | None = None  # issue 26: task=export only
    estimate: EstimateConfig | None = None  # issue 25: task=estimate only


# Issue 21: the run's length, checked before anything is built (Lightning would refuse it after the model).
TRAINER_LENGTH_KEYS = ("max_steps", "max_epochs")
