"""task=estimate (issue 25): the book's estimator figures, and a second computation written out here."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from configs import TINY

from gpt_lab.config.schema import GPT2_SIZES
from gpt_lab.errors import ConfigError
from gpt_lab.generation.sampling import generate
from gpt_lab.model.estimate import (
    forward_flops,
    kv_cache_bytes,
    meta_model,
    parameter_counts,
    recurrent_state_bytes,
)
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.files import read_results
from gpt_lab.run.job import run_task


def _gpt2(name: str, **extra: Any) -> dict[str, Any]:
    return {**GPT2_SIZES[name], "drop_rate": 0.0, "qkv_bias": True, **extra}


# BOOK_FIGURES.md, "Chapter 4 bonus": ch04/02's thop FLOPs at batch 2, context 1024, qkv_bias on.
BOOK_FLOPS = {"gpt2_small": "5.1e+11", "gpt2_medium": "1.4e+12", "gpt2_large": "3.2e+12", "gpt2_xl": "6.4e+12"}


@pytest.mark.parametrize("name", BOOK_FLOPS)
def test_linear_only_flops_are_the_books_for_the_four_gpt2_sizes(name: str) -> None:
    size = GPT2_SIZES[name]
    b, t, d, n_layers, v = 2, 1024, size["emb_dim"], size["n_layers"], size["vocab_size"]
    flops = forward_flops(meta_model(_gpt2(name)), b, t)
    assert flops["linear_only"] == 2 * b * t * (12 * n_layers * d * d + d * v)
    assert f"{flops['linear_only']:.1e}" == BOOK_FLOPS[name]
    # The flop counter adds attention's two products per layer (q k^T and weights @ v: 2 x b t t d MACs each,
    # the causal mask saving nothing) and leaves the biases out.
    assert flops["counted"] == flops["linear_only"] + n_layers * 2 * 2 * b * t * t * d


def test_parameter_counts_match_the_formula_written_out() -> None:
    cfg = _gpt2("gpt2_medium", qkv_bias=False)
    v, c, d, n_layers = cfg["vocab_size"], cfg["context_length"], cfg["emb_dim"], cfg["n_layers"]
    block = 3 * d * d + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    total = v * d + c * d + n_layers * block + 2 * d + v * d
    assert parameter_counts(meta_model(cfg)) == {"total": total, "unique": total - v * d, "active": total}
    # Tied: the head is still counted apart in total (the book's notebooks), once in unique.
    tied = parameter_counts(meta_model({**cfg, "tie_weights": True}))
    assert tied == {"total": total, "unique": total - v * d, "active": total}


def test_mha_kv_cache_is_the_books_estimate() -> None:
    # The GQA estimator's MHA line: emb 4096, 32 heads (head_dim 128), 32 layers, context 32768, batch 1, bf16.
    cfg = {"vocab_size": 50257, "context_length": 32768, "emb_dim": 4096, "n_heads": 32, "n_layers": 32}
    model = meta_model({**cfg, "drop_rate": 0.0, "qkv_bias": False})
    assert kv_cache_bytes(model, 1, 32768, torch.bfloat16) == 17_179_869_184
    # Any other shape: batch x context x head_dim x heads x 2 (K and V) x bytes x layers.
    small = meta_model({**TINY, "context_length": 24, "emb_dim": 24, "n_heads": 3, "n_layers": 5})
    assert kv_cache_bytes(small, 3, 20, torch.float32) == 3 * 20 * 8 * 3 * 2 * 4 * 5


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the storages of every tensor reachable from ``obj``'s attributes (each storage once)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(item, seen) for item in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(item, seen) for item in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module | type):
        return sum(_tensor_bytes(item, seen) for item in vars(obj).values())
    return 0


def _generation_cache(model: GPTModel, prompt_len: int, new_tokens: int) -> Any:
    """The cache ``generate`` allocates for one prompt, captured as the model hands it out."""
    made: list[Any] = []
    original = model.new_kv_cache

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(original(*args, **kwargs))
        return made[-1]

    model.new_kv_cache = recording  # type: ignore[method-assign]
    idx = torch.randint(0, model.cfg["vocab_size"], (1, prompt_len))
    generate(model, idx, new_tokens, model.context_length)
    assert len(made) == 1
    return made[0]


GENERATED = [
    TINY,
    {**TINY, "n_heads": 2, "n_layers": 3},
    {**TINY, "attention": "gqa", "n_kv_heads": 2},
    {**TINY, "attention": "mla", "latent_dim": 6},
    {**TINY, "window": "sliding", "sliding_window": 3, "sliding_pattern": "1:1"},
    {**TINY, "attention": "deltanet", "full_attention_every": 2},
]


@pytest.mark.parametrize("cfg", GENERATED)
def test_a_generations_cache_occupies_exactly_the_estimated_bytes(cfg: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    cache = _generation_cache(model, prompt_len=3, new_tokens=cfg["context_length"])
    estimated = kv_cache_bytes(meta_model(cfg), 1, cfg["context_length"], torch.float32)
    assert _tensor_bytes(cache) == estimated == cache.nbytes


def test_estimate_task_writes_plain_integers_a_table_and_the_plot(compose_config, tmp_path, caplog) -> None:
    caplog.set_level("INFO")
    results = run_task(compose_config("task=estimate", "model=gpt2_small", "qkv_bias=on", "estimate.batch_size=2"))
    assert results["status"] == "completed" and read_results(tmp_path) == results
    d, n_layers, heads = 768, 12, 12
    for key in ("total", "unique", "active"):
        assert type(results["parameters"][key]) is int
    assert results["parameters"]["total"] == results["total_params"] == 163_037_184  # chapter 4's figure
    assert results["parameters"]["unique"] == results["total_params_tied"] == 124_412_160 + 3 * n_layers * d
    # bf16 (the default estimate.dtype): 2 sequences x 1024 tokens x 64 x 12 heads x K and V x 2 bytes x 12 layers.
    assert results["kv_cache"]["bytes"] == 2 * 1024 * (d // heads) * heads * 2 * 2 * n_layers
    assert results["kv_cache"]["bytes_per_token"] == 2 * d * 2 * n_layers
    assert results["recurrent_state_bytes"] == 0
    assert f"{results['flops']['linear_only']:.1e}" == "5.1e+11"
    assert all(type(results["flops"][k]) is int for k in ("counted", "linear_only"))
    assert (tmp_path / "kv_cache.png").read_bytes().startswith(b"\x89PNG")
    assert "parameters, active per token" in caplog.text and "163,037,184" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("estimate.dtype=int4", r"estimate.dtype=int4 is not a dtype; choose one of float32, fp32, bfloat16"),
        ("estimate.batch_size=0", r"estimate.batch_size=0 must be a positive integer"),
    ],
)
def test_estimate_bad_input_names_the_key(compose_config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_task(compose_config("task=estimate", "model=tiny", override))


# --- the variants (BOOK_FIGURES.md "Chapter 4 bonus"): the estimators' arguments as model keys ---------------
GQA_ARGS = {"vocab_size": 50257, "context_length": 32768, "emb_dim": 4096, "n_heads": 32, "n_layers": 32}


def _kv(cfg: dict[str, Any], dtype: torch.dtype = torch.bfloat16) -> int:
    model = meta_model({"drop_rate": 0.0, "qkv_bias": False, **cfg})
    return kv_cache_bytes(model, 1, cfg["context_length"], dtype)


def test_gqa_kv_cache_is_the_books_estimate() -> None:
    # --n_kv_groups 4 (query heads per key/value head) is model.n_kv_heads = 32 // 4 = 8.
    assert _kv({**GQA_ARGS, "attention": "gqa", "n_kv_heads": 8}) == 4_294_967_296
    assert _kv(GQA_ARGS) == 4 * 4_294_967_296


def test_sliding_window_kv_cache_is_the_books_estimate() -> None:
    # --sliding_window_size 1024 --swa_ratio 5:1: 27 sliding layers keep 1,024 positions, 5 full ones 32,768.
    sliding = {"window": "sliding", "sliding_window": 1024, "sliding_pattern": "5:1"}
    assert _kv({**GQA_ARGS, **sliding}) == 3_137_339_392
    assert _kv({**GQA_ARGS, **sliding, "attention": "gqa", "n_kv_heads": 8}) == 784_334_848


def test_mla_kv_cache_is_the_books_estimate() -> None:
    # --emb_dim 2048 --n_heads 24 --n_layers 48 --context_length 8192 --latent_dim 1024: head_dim = ceil(2048 / 24).
    args = {"vocab_size": 50257, "context_length": 8192, "emb_dim": 2048, "n_heads": 24, "n_layers": 48, "head_dim": 86}
    assert _kv({**args, "attention": "mla", "latent_dim": 1024}) == 805_306_368
    assert _kv(args) == 3_246_391_296  # the estimator's "MHA 3.25 GB"
    assert _kv({**args, "attention": "gqa", "n_kv_heads": 6}) == 811_597_824  # "GQA 0.81 GB"


def test_moe_parameters_are_the_books_estimate() -> None:
    # --emb_dim 7168 --hidden_dim 14336 --num_experts 8 --top_k 2 --match_dense: experts of hidden 14336 / 8.
    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 7168, "n_heads": 8, "n_layers": 1}
    moe = {"ffn": "moe", "num_experts": 8, "experts_per_token": 2, "moe_hidden_dim": 1792}
    model = meta_model({"drop_rate": 0.0, "qkv_bias": False, **cfg, **moe})
    counts = parameter_counts(model.trf_blocks[0].ff)
    assert counts == {"total": 308_338_688, "unique": 308_338_688, "active": 77_127_680}
    dense = meta_model({"drop_rate": 0.0, "qkv_bias": False, **cfg, "ffn": "swiglu", "hidden_dim": 14336})
    assert parameter_counts(dense.trf_blocks[0].ff)["total"] == 308_281_344


def test_moe_flops_count_each_tokens_experts_only() -> None:
    # Written out: per token, the router (emb x E) and k experts of 3 emb x hidden products; attention's Linears
    # (4 emb^2) and the head (emb x vocab) as for any model.
    v, e, n_layers, experts, k, hidden, b, t = 50257, 32, 2, 4, 2, 24, 2, 16
    cfg = {"vocab_size": v, "context_length": t, "emb_dim": e, "n_heads": 4, "n_layers": n_layers}
    moe = {"ffn": "moe", "num_experts": experts, "experts_per_token": k, "moe_hidden_dim": hidden}
    flops = forward_flops(meta_model({"drop_rate": 0.0, "qkv_bias": False, **cfg, **moe}), b, t)
    per_token = n_layers * (4 * e * e + e * experts + k * 3 * e * hidden) + e * v
    assert flops["linear_only"] == 2 * b * t * per_token


def test_deltanet_state_is_fixed_in_context_length() -> None:
    # Gated DeltaNet's state per layer: batch x heads x head_dim^2 (float32); the 3:1 hybrid's full layers grow.
    cfg = {"vocab_size": 50257, "emb_dim": 64, "n_heads": 4, "n_layers": 8, "attention": "deltanet"}
    for every, full_layers in ((0, 0), (4, 2)):
        sizes = [_kv({**cfg, "context_length": n, "full_attention_every": every}, torch.float32) for n in (64, 128)]
        state = (8 - full_layers) * 4 * 16 * 16 * 4
        assert sizes == [state + full_layers * n * 64 * 2 * 4 for n in (64, 128)]
        model = meta_model(
            {"drop_rate": 0.0, "qkv_bias": False, **cfg, "context_length": 64, "full_attention_every": every}
        )
        assert recurrent_state_bytes(model, 1, torch.bfloat16) == state  # float32 whatever the cache's dtype


def test_moe_plot_counts_are_those_of_models_with_that_many_experts() -> None:
    from gpt_lab.tasks.estimate import moe_parameters_by_experts

    cfg = {**TINY, "ffn": "moe", "num_experts": 4, "experts_per_token": 2, "moe_hidden_dim": 8}
    experts, total, active = moe_parameters_by_experts(meta_model(cfg))
    assert experts[0] == 2 and experts[-1] == 8 and 4 in experts
    for n, t, a in zip(experts, total, active, strict=True):
        built = parameter_counts(meta_model({**cfg, "num_experts": n}))
        assert (t, a) == (built["total"], built["active"])
