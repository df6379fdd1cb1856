"""The architecture lab's keys (issue 25): their option names, their defaults (the book's model) and their checks.

Six config groups write into ``cfg.model`` (``conf/attention``, ``conf/window``, ``conf/ffn``,
``conf/norm``, ``conf/qk_norm``, ``conf/pos_emb``); ``ARCH_DEFAULTS`` is what every key is when a
config (the book's dict, an old ``model.json``) does not name it — chapter 4's GPT-2.
``layer_kinds`` says what each transformer block's attention is (full, sliding, deltanet), read by
the model and by the checks alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

ATTENTION_NAMES = ("mha", "gqa", "mla", "deltanet")
WINDOW_NAMES = ("full", "sliding")
FFN_NAMES = ("gelu", "swiglu", "moe")
NORM_NAMES = ("layernorm", "rmsnorm")
POS_EMB_NAMES = ("learned", "rope")
ROPE_SCALING_KEYS = ("type", "factor", "low_freq_factor", "high_freq_factor", "original_context_length")

# Every default is the book's GPT-2 (chapter 4); conf/<group>/<default option>.yaml carries the same values.
ARCH_DEFAULTS: dict[str, Any] = {
    "attention": "mha",
    "n_kv_heads": None,  # gqa: the number of key/value heads (null: n_heads)
    "latent_dim": None,  # mla: the width of the cached latent
    "full_attention_every": 0,  # deltanet: every n-th layer keeps full attention (0: none)
    "window": "full",
    "sliding_window": None,  # sliding: the window in tokens, the token itself included
    "sliding_pattern": None,  # sliding: "5:1" or a list of full-attention layer indices (null: every layer slides)
    "ffn": "gelu",
    "hidden_dim": None,  # null: 4 * emb_dim (the book's)
    "num_experts": None,
    "experts_per_token": None,
    "moe_hidden_dim": None,  # null: hidden_dim's rule
    "norm": "layernorm",
    "norm_eps": 1e-5,  # the book's LayerNorm eps
    "qk_norm": False,
    "pos_emb": "learned",
    "rope_base": 10000.0,
    "rope_scaling": None,
    "head_dim": None,  # null: emb_dim // n_heads
}
# Issue 26: the few facts a family adds to the parts, as named flags (never the family's name); the
# defaults are GPT-2's. conf/model/<family>.yaml sets them; docs/families.md says which family needs which.
FAMILY_DEFAULTS: dict[str, Any] = {
    "rope_local_base": None,  # RoPE base of the sliding layers (null: rope_base); Gemma 3: 10,000
    "emb_scale": False,  # token embeddings times sqrt(emb_dim) (Gemma 3)
    "query_scale": None,  # attention scores' scale (null: head_dim ** -0.5); Gemma 3: query_pre_attn_scalar ** -0.5
    "norm_offset": False,  # RMSNorm scales by (1 + weight), weights starting at zero (Gemma 3)
    "post_norms": False,  # a norm after attention and after the feed-forward too: four a block (Gemma 3)
    "ffn_activation": "silu",  # the gate's activation of ffn=swiglu / moe: silu | gelu_tanh (Gemma 3)
    "attn_out_bias": True,  # out_proj's bias (GPT-2's; Llama, Qwen3, Gemma 3 have none)
    "ffn_bias": True,  # ffn=gelu's biases (GPT-2's)
    # ffn=moe: the k chosen experts' weights are the softmax over their k router logits (true: the book's,
    # Qwen3-30B-A3B's norm_topk_prob=true), or the softmax over all experts' logits, the k taken as they are.
    "moe_renormalize": True,
    # Freshly built weights: null keeps PyTorch's defaults (the book's, chapter 4's seed-123 weights); a number
    # draws every Linear and Embedding weight from normal(0, init_std), biases 0, norms as they are (the
    # families' initializer_range, 0.02: with a tied head, PyTorch's N(0, 1) embeddings give logits of
    # standard deviation ~sqrt(emb_dim) and a first loss several times ln(vocab_size)).
    "init_std": None,
}
FFN_ACTIVATIONS = ("silu", "gelu_tanh")
ARCH_DEFAULTS.update(FAMILY_DEFAULTS)
ARCH_GROUPS = ("attention", "window", "ffn", "norm", "qk_norm", "pos_emb")  # the groups, as columns


def is_book_architecture(cfg: Mapping[str, Any]) -> bool:
    """True when every architecture key of ``cfg`` is the book's (GPT-2's) choice."""
    return all(cfg.get(k, v) in (v, None) for k, v in ARCH_DEFAULTS.items())


def arch_summary(cfg: Mapping[str, Any]) -> str:
    """``attention=gqa window=full ffn=moe ...``: the groups' choices, for messages."""
    value = lambda k: cfg.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    return " ".join(f"{k}={('on' if value(k) else 'off') if k == 'qk_norm' else value(k)}" for k in ARCH_GROUPS)


_RATIO = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_sliding_pattern(pattern: Any, n_layers: int) -> list[bool]:
    """Which layers slide (True) for ``model.sliding_pattern``; raises ``ValueError`` naming what is allowed.

    ``"a:b"`` lays the layers out in blocks of ``a`` sliding then ``b`` full, the remainder sliding first
    (the book's schedule: ``"5:1"`` for 32 layers slides 27 and keeps 5, 11, 17, 23 and 29 full); a list
    names the layers that keep full attention; None slides every layer.
    """
    if pattern is None:
        return [True] * n_layers
    if isinstance(pattern, str):
        match = _RATIO.match(pattern)
        if not match or int(match.group(1)) + int(match.group(2)) == 0:
            raise ValueError(
                f"model.sliding_pattern={pattern!r} does not parse; give a ratio of sliding to full layers such "
                "as '5:1', or a list of the layers that keep full attention such as [5,11]"
            )
        a, b = int(match.group(1)), int(match.group(2))
        return [i % (a + b) < a for i in range(n_layers)]
    if isinstance(pattern, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in pattern):
        bad = [i for i in pattern if not 0 <= i < n_layers]
        if bad:
            raise ValueError(
                f"model.sliding_pattern={list(pattern)} names layer(s) {bad} the model does not have; "
                f"full-attention layer indices must be in [0, {n_layers - 1}] (model.n_layers={n_layers})"
            )
        full = set(pattern)
        return [i not in full for i in range(n_layers)]
    raise ValueError(
        f"model.sliding_pattern={pattern!r} must be a ratio string such as '5:1' or a list of layer indices"
    )


def layer_kinds(cfg: Mapping[str, Any]) -> list[str]:
    """Each block's attention: ``"full"`` (mha/gqa/mla over every position), ``"sliding"`` or ``"deltanet"``."""
    n = int(cfg["n_layers"])
    get = lambda k: cfg.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    if get("attention") == "deltanet":
        every = int(get("full_attention_every") or 0)
        return ["full" if every and (i + 1) % every == 0 else "deltanet" for i in range(n)]
    if get("window") == "sliding":
        return ["sliding" if s else "full" for s in parse_sliding_pattern(get("sliding_pattern"), n)]
    return ["full"] * n


def head_dim_of(cfg: Mapping[str, Any]) -> int:
    """``model.head_dim``, or ``emb_dim // n_heads`` when null."""
    head_dim = cfg.get("head_dim")
    return int(head_dim) if head_dim is not None else int(cfg["emb_dim"]) // int(cfg["n_heads"])


def ffn_hidden_dim(cfg: Mapping[str, Any], moe: bool = False) -> int:
    """The feed-forward's hidden width: ``moe_hidden_dim`` (experts) or ``hidden_dim``, null = 4 * emb_dim."""
    value = cfg.get("moe_hidden_dim") if moe else None
    if value is None:
        value = cfg.get("hidden_dim")
    return int(value) if value is not None else 4 * int(cfg["emb_dim"])


def _positive(m: Mapping[str, Any], key: str, why: str, allow_null: bool = True) -> list[str]:
    value = m.get(key)
    if value is None:
        return [] if allow_null else [f"model.{key} must be set {why}"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        return [f"model.{key}={value} must be a positive number {why}"]
    return []


def check_architecture(m: Mapping[str, Any]) -> list[str]:
    """The architecture keys of ``cfg.model``: one message per problem, naming the key and what is allowed."""
    problems: list[str] = []
    get = lambda k: m.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    for key, names in (
        ("attention", ATTENTION_NAMES),
        ("window", WINDOW_NAMES),
        ("ffn", FFN_NAMES),
        ("norm", NORM_NAMES),
        ("pos_emb", POS_EMB_NAMES),
    ):
        if get(key) not in names:
            problems.append(f"model.{key}={get(key)} is not a choice; choose one of {', '.join(names)} ({key}=...)")
    n_heads, attention = m.get("n_heads") or 0, get("attention")
    kv = get("n_kv_heads")
    if kv is not None and (kv <= 0 or (n_heads > 0 and n_heads % kv)):
        divisors = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
        problems.append(
            f"model.n_kv_heads={kv} must divide model.n_heads={n_heads} (each key/value head serves the same number "
            f"of query heads); choose one of {', '.join(map(str, divisors))}"
        )
    problems += _positive(m, "head_dim", "(the width of one attention head), or null for emb_dim // n_heads")
    if attention == "mla":
        problems += _positive(m, "latent_dim", "for attention=mla (the width of the cached latent)", False)
    elif m.get("latent_dim") is not None:
        problems += _positive(m, "latent_dim", "(the width of attention=mla's cached latent)")
    every = get("full_attention_every")
    if not isinstance(every, int) or every < 0:
        problems.append(f"model.full_attention_every={every} must be 0 (every layer DeltaNet) or a positive integer")
    if get("window") == "sliding":
        problems += _positive(
            m, "sliding_window", "for window=sliding (the window in tokens, the token itself included)", False
        )
        if isinstance(get("sliding_window"), float):
            problems.append(f"model.sliding_window={get('sliding_window')} must be a whole number of tokens")
        if attention not in ("mha", "gqa"):
            problems.append(
                f"window=sliding works with attention=mha or gqa, not attention={attention} "
                "(choose window=full, or one of those attentions)"
            )
        try:
            parse_sliding_pattern(get("sliding_pattern"), int(m.get("n_layers") or 0))
        except ValueError as err:
            problems.append(str(err))
    if m.get("causal_mask") is False and (get("window") == "sliding" or attention == "deltanet"):
        chosen = "window=sliding" if get("window") == "sliding" else "attention=deltanet"
        problems.append(
            f"causal_mask=off lets every position see the whole text, but {chosen} is causal by construction "
            "(a window of earlier tokens, a recurrent state): keep causal_mask=on, or use window=full with "
            "attention=mha, gqa or mla"
        )
    if get("ffn") == "moe":
        experts, k = m.get("num_experts"), m.get("experts_per_token")
        problems += _positive(m, "num_experts", "for ffn=moe", False)
        problems += _positive(m, "experts_per_token", "for ffn=moe (experts each token is routed to)", False)
        if isinstance(experts, int) and isinstance(k, int) and k > experts > 0:
            problems.append(
                f"model.experts_per_token={k} must not exceed model.num_experts={experts} "
                "(a token is routed to that many distinct experts)"
            )
    problems += _positive(m, "hidden_dim", "(the feed-forward's hidden width), or null for 4 * emb_dim")
    problems += _positive(m, "moe_hidden_dim", "(each expert's hidden width), or null for hidden_dim's")
    problems += _positive(m, "norm_eps", "(added to the variance before its square root)", False)
    problems += _check_rope(m)
    problems += _check_family_flags(m)
    return problems


def _check_family_flags(m: Mapping[str, Any]) -> list[str]:
    get = lambda k: m.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    problems = []
    if get("ffn_activation") not in FFN_ACTIVATIONS:
        problems.append(f"model.ffn_activation={get('ffn_activation')} must be one of {', '.join(FFN_ACTIVATIONS)}")
    problems += _positive(m, "query_scale", "(the attention scores' scale), or null for head_dim ** -0.5")
    problems += _positive(m, "rope_local_base", "(the sliding layers' RoPE base), or null for rope_base")
    problems += _positive(m, "init_std", "(random weights' standard deviation), or null for PyTorch's defaults")
    for key in ("emb_scale", "norm_offset", "post_norms", "attn_out_bias", "ffn_bias", "moe_renormalize"):
        if not isinstance(get(key), bool):
            problems.append(f"model.{key}={get(key)} must be true or false")
    if get("norm_offset") and get("norm") != "rmsnorm":
        problems.append("model.norm_offset=true scales RMSNorm by (1 + weight): it needs norm=rmsnorm")
    return problems


def _check_rope(m: Mapping[str, Any]) -> list[str]:
    get = lambda k: m.get(k, ARCH_DEFAULTS[k])  # noqa: E731
    if get("pos_emb") != "rope":
        return []
    problems = _positive(m, "rope_base", "for pos_emb=rope (the base of the rotation frequencies)", False)
    if (m.get("n_heads") or 0) > 0 and (m.get("emb_dim") or 0) > 0:
        head_dim = head_dim_of(m)
        if head_dim % 2:
            problems.append(
                f"pos_emb=rope rotates pairs of features, so the head dimension must be even; it is {head_dim} "
                "(model.head_dim, or emb_dim // n_heads when null): set an even model.head_dim or choose "
                "pos_emb=learned"
            )
    scaling = get("rope_scaling")
    if scaling is None:
        return problems
    if not isinstance(scaling, Mapping) or scaling.get("type") != "llama3":
        return [*problems, f"model.rope_scaling={scaling} must be null or Llama 3's {{type: llama3, ...}}"]
    missing = [k for k in ROPE_SCALING_KEYS if scaling.get(k) is None]
    if missing:
        return [*problems, f"model.rope_scaling needs {', '.join(missing)} (Llama 3's: {', '.join(ROPE_SCALING_KEYS)})"]
    for key in ROPE_SCALING_KEYS[1:]:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            problems.append(f"model.rope_scaling.{key}={value} must be a positive number")
    if not problems and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        problems.append(
            f"model.rope_scaling.high_freq_factor={scaling['high_freq_factor']} must exceed "
            f"low_freq_factor={scaling['low_freq_factor']} (Llama 3's: 4 and 1)"
        )
    return problems
