"""The architecture lab's config groups (issue 25): they compose into ``cfg.model`` with the book's
defaults, every bad value is one message naming its key, and ``use_cache=false`` reaches generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt_lab.config import validate_config
from gpt_lab.config.architecture import ARCH_DEFAULTS, layer_kinds
from gpt_lab.errors import ConfigError
from gpt_lab.generation.sampling import generate
from gpt_lab.model.gpt import GPTModel
from gpt_lab.tokenizer import get_tokenizer

TINY = ("model=tiny", "model.n_layers=3")


def test_defaults_are_the_books_parts(compose_config) -> None:
    cfg = validate_config(compose_config())
    assert {k: cfg.model[k] for k in ARCH_DEFAULTS} == ARCH_DEFAULTS


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["attention=gqa", "model.n_kv_heads=2"], {"attention": "gqa", "n_kv_heads": 2}),
        (["attention=mla", "model.latent_dim=8"], {"attention": "mla", "latent_dim": 8}),
        (["attention=deltanet"], {"attention": "deltanet", "full_attention_every": 4}),
        (["window=sliding", "model.sliding_pattern=[1]"], {"window": "sliding", "sliding_pattern": [1]}),
        (["ffn=moe", "model.num_experts=3"], {"ffn": "moe", "num_experts": 3, "experts_per_token": 2}),
        (["ffn=swiglu", "norm=rmsnorm", "qk_norm=on"], {"ffn": "swiglu", "norm": "rmsnorm", "qk_norm": True}),
        (["pos_emb=rope", "model.head_dim=10"], {"pos_emb": "rope", "head_dim": 10}),
    ],
)
def test_groups_compose_into_the_model(compose_config, overrides: list[str], expected: dict) -> None:
    cfg = validate_config(compose_config(*TINY, *overrides))
    assert {k: cfg.model[k] for k in expected} == expected
    with torch.device("meta"):
        model = GPTModel(cfg.model)
    assert model.cfg["attention"] == cfg.model.attention and len(model.trf_blocks) == 3


def test_every_group_composes_with_every_other(compose_config) -> None:
    """All six groups at once, each off its default, build a model whose layers are what the keys say."""
    cfg = validate_config(
        compose_config(
            *TINY, "attention=gqa", "window=sliding", "ffn=moe", "norm=rmsnorm", "qk_norm=on", "pos_emb=rope",
            "model.sliding_window=4", "model.sliding_pattern=2:1",
        )
    )  # fmt: skip
    with torch.device("meta"):
        model = GPTModel(cfg.model)
    assert layer_kinds(model.cfg) == ["sliding", "sliding", "full"]
    att = model.trf_blocks[0].att
    assert (att.window, att.n_kv_heads, model.trf_blocks[2].att.window) == (4, 2, None)
    assert type(model.trf_blocks[0].ff).__name__ == "MoEFeedForward" and not hasattr(model, "pos_emb")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attention=gqa", "model.n_kv_heads=3"], "model.n_kv_heads=3 must divide model.n_heads=4"),
        (["attention=mla", "model.latent_dim=0"], "model.latent_dim=0 must be a positive number for attention=mla"),
        (["attention=mla", "model.latent_dim=-4"], "model.latent_dim=-4 must be a positive number"),
        (["window=sliding", "model.sliding_window=0"], "model.sliding_window=0 must be a positive number"),
        (["window=sliding", "model.sliding_pattern=5-1"], "model.sliding_pattern='5-1' does not parse"),
        (["window=sliding", "model.sliding_pattern=[7]"], "names layer(s) [7] the model does not have"),
        (["window=sliding", "attention=mla"], "window=sliding works with attention=mha or gqa"),
        (["ffn=moe", "model.experts_per_token=9"], "model.experts_per_token=9 must not exceed model.num_experts=8"),
        (["pos_emb=rope", "model.head_dim=7"], "the head dimension must be even; it is 7"),
        (["pos_emb=rope", "model.n_heads=8", "model.emb_dim=24"], "the head dimension must be even; it is 3"),
        (["pos_emb=rope", "+model.rope_scaling.type=linear"], "model.rope_scaling={'type': 'linear'} must be null"),
        (["norm=rmsnorm", "model.norm_eps=0"], "model.norm_eps=0.0 must be a positive number"),
        (["attention=deltanet", "model.full_attention_every=-1"], "model.full_attention_every=-1 must be 0"),
        (
            ["window=sliding", "causal_mask=off"],
            "causal_mask=off lets every position see the whole text, but window=sliding",
        ),
        (["attention=deltanet", "causal_mask=off"], "but attention=deltanet is causal by construction"),
        (["model.attention=gqq"], "model.attention=gqq is not a choice; choose one of mha, gqa, mla, deltanet"),
    ],
)
def test_bad_architecture_values_are_named(compose_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        validate_config(compose_config(*TINY, *overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)  # one paragraph


def test_bad_value_on_the_command_line_exits_2_before_building(run_cli, tmp_path: Path) -> None:
    proc = run_cli("model=tiny", "ffn=moe", "model.num_experts=2", "model.experts_per_token=3", "hydra.run.dir=run")
    assert proc.returncode == 2
    assert "model.experts_per_token=3 must not exceed model.num_experts=2" in proc.stderr
    assert "Traceback" not in proc.stderr and "Total number of parameters" not in proc.stdout


def test_use_cache_false_on_the_command_line_generates_the_cached_tokens(run_cli, compose_config, tmp_path) -> None:
    """A sliding GQA model with RoPE: the run without the cache prints the tokens the cache gives."""
    variant = ("attention=gqa", "window=sliding", "pos_emb=rope", "model.sliding_window=3", "max_new_tokens=8")
    proc = run_cli(*TINY, *variant, "use_cache=false", "hydra.run.dir=run", "logger=none")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    cfg = validate_config(compose_config(*TINY, *variant))
    assert cfg.use_cache is True
    torch.manual_seed(cfg.seed)
    model = GPTModel(cfg.model)
    prompt = torch.tensor([get_tokenizer().encode(cfg.prompt)])
    cached = generate(model, prompt, 8, model.context_length, use_cache=True)
    assert results["output_ids"] == cached[0].tolist()
