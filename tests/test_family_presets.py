"""The family presets: each composes, matches the released model's config.json (its facts written
out below, from the model pages), and built on the meta device has the book's exact parameter
counts (BOOK_FIGURES.md); their small variants build and run."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.hf_families import family_config
from gpt_lab.model.hf_files import check_preset
from gpt_lab.model.stats import count_params, count_params_tied

# The released config.json facts that decide the architecture (hub pages, transformers' key names).
RELEASED = {
    "llama3_2_1b": {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "qwen3_0_6b": {
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "qwen3_30b_a3b": {
        "model_type": "qwen3_moe",
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    },
    "gemma3_270m": {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh",
    },
}
# BOOK_FIGURES.md: (total with the head counted apart, unique with a tied head counted once).
BOOK_COUNTS = {
    "llama3_2_1b": (1_498_482_688, 1_235_814_400),
    "qwen3_0_6b": (751_632_384, 596_049_920),
    "qwen3_30b_a3b": (30_532_122_624, 30_220_957_696),
    "gemma3_270m": (435_870_336, 268_098_176),
}
SMALL = ["llama3_2_tiny", "qwen3_tiny", "qwen3_moe_tiny", "gemma3_tiny"]


def _model_cfg(compose_config: Callable[..., DictConfig], preset: str) -> dict:
    return OmegaConf.to_container(compose_config(f"model={preset}", "dropout=none").model, resolve=True)


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_preset_is_the_released_config(preset: str, compose_config: Callable[..., DictConfig]) -> None:
    cfg = _model_cfg(compose_config, preset)
    assert check_preset(cfg, family_config(RELEASED[preset], preset), preset) == []
    assert cfg["tie_weights"] == RELEASED[preset]["tie_word_embeddings"]


@pytest.mark.parametrize("preset", sorted(BOOK_COUNTS))
def test_parameter_counts_are_the_books(preset: str, compose_config: Callable[..., DictConfig]) -> None:
    cfg = _model_cfg(compose_config, preset)
    with torch.device("meta"):
        model = GPTModel(cfg)
    head = cfg["vocab_size"] * cfg["emb_dim"]
    total, unique = BOOK_COUNTS[preset]
    if cfg["tie_weights"]:
        assert (count_params(model) + head, count_params(model)) == (total, unique)
    else:
        assert (count_params(model), count_params_tied(model)) == (total, unique)


@pytest.mark.parametrize("preset", SMALL)
def test_small_variants_build_and_generate(preset: str, compose_config: Callable[..., DictConfig]) -> None:
    from gpt_lab.generation.sampling import generate

    torch.manual_seed(0)
    model = GPTModel(_model_cfg(compose_config, preset)).eval()
    idx = torch.tensor([[15496, 11, 314, 716]])
    with_cache = generate(model, idx, 12, model.context_length)
    assert with_cache.tolist() == generate(model, idx, 12, model.context_length, use_cache=False).tolist()


@pytest.mark.parametrize("name", SMALL)
def test_a_family_built_from_scratch_starts_near_a_uniform_guess(name: str, compose_config: Callable) -> None:
    """model.init_std=0.02 (the families' initializer_range): with the tied head, PyTorch's N(0, 1)
    embeddings made the first loss several times ln(vocab_size) (about 59 against 10.8)."""
    cfg = OmegaConf.to_container(compose_config(f"model={name}").model, resolve=True)
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(abs(w.std().item() - 0.02) < 0.004 for w in linears)
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 1e-3
    ids = torch.randint(0, cfg["vocab_size"], (2, 32))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert abs(loss.item() - math.log(cfg["vocab_size"])) < 0.1  # a near-uniform first guess, as the families start
