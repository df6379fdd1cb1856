"""scripts/lab_reference.py, the bench's stand-in for the bonus scripts' torch.cat caches, gives the greedy
tokens of generation without any cache (the book's loop), for each kind it supports."""

from __future__ import annotations

import pytest
import torch

from gpt_lab.generation.sampling import generate
from gpt_lab.model.gpt import GPTModel
from scripts.lab_reference import cat_cache_generate

BASE = {"vocab_size": 64, "context_length": 32, "emb_dim": 16, "n_heads": 4, "n_layers": 3, "drop_rate": 0.0}
VARIANTS = {
    "mha": {},
    "gqa": {"attention": "gqa", "n_kv_heads": 2},
    "mla": {"attention": "mla", "latent_dim": 8},
    "sliding": {"window": "sliding", "sliding_window": 5, "sliding_pattern": "2:1"},
    "llama": {"attention": "gqa", "n_kv_heads": 1, "norm": "rmsnorm", "pos_emb": "rope", "ffn": "swiglu"},
    "mla_rope_qk_norm": {"attention": "mla", "latent_dim": 8, "pos_emb": "rope", "qk_norm": True},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cat_cache_reference_generates_the_uncached_tokens(name: str) -> None:
    torch.manual_seed(0)
    model = GPTModel({**BASE, "qkv_bias": False, **VARIANTS[name]}).eval()
    prompt = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(cat_cache_generate(model, prompt, 20), generate(model, prompt, 20, 32, use_cache=False))


def test_cat_cache_reference_refuses_deltanet() -> None:
    model = GPTModel({**BASE, "qkv_bias": False, "attention": "deltanet"}).eval()
    with pytest.raises(ValueError, match="DeltaNet"):
        cat_cache_generate(model, torch.zeros(1, 3, dtype=torch.long), 2)
