"""Parity with transformers, the reference of every family: small random Llama 3 (RoPE scaling),
Qwen3, Qwen3-MoE and Gemma 3 (sliding layers, inputs longer than the window) with randomised norm
weights, saved by ``save_pretrained`` and loaded with ``init_from``: float32 logits within 1e-5,
greedy tokens identical with and without the KV cache, and the same through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_files import SMALL_CONFIGS, save_hf_model, write_tokenizer

from gpt_lab.generation.sampling import generate
from gpt_lab.model.weights import build_model

transformers = pytest.importorskip("transformers")
FAMILIES = sorted(SMALL_CONFIGS)
# A GPT-2 config for build_model to start from: init_from's config.json replaces it whole.
START = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}
SEQ = 24  # longer than Gemma's window (4) and Llama's original context (16)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, object]]:
    out = {}
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(family)
        theirs = save_hf_model(family, directory, seed=1)
        out[family] = (build_model({**START, "qkv_bias": False}, directory).eval(), theirs)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family: str, pairs: dict[str, tuple[torch.nn.Module, object]]) -> None:
    ours, theirs = pairs[family]
    torch.manual_seed(0)
    idx = torch.randint(0, 96, (2, SEQ))
    with torch.no_grad():
        expected = theirs(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_match_with_and_without_cache(
    family: str, pairs: dict[str, tuple[torch.nn.Module, object]]
) -> None:
    ours, theirs = pairs[family]
    torch.manual_seed(1)
    idx = torch.randint(0, 96, (1, 6))
    expected = theirs.generate(idx, max_new_tokens=20, do_sample=False)
    for use_cache in (True, False):
        got = generate(ours, idx, 20, 64, use_cache=use_cache)
        assert got.tolist() == expected.tolist(), f"use_cache={use_cache}"


def test_cli_generates_transformers_tokens(tmp_path: Path, run_cli: Callable[..., object]) -> None:
    theirs = save_hf_model("qwen3", tmp_path / "qwen", seed=2, vocab_size=320)
    write_tokenizer(tmp_path / "qwen", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=300)
    done = run_cli("init_from=qwen", "prompt='Hello, I am'", "max_new_tokens=12", "hydra.run.dir=run")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "qwen" / "tokenizer.json"))
    ids = torch.tensor([tok("Hello, I am")["input_ids"]])
    expected = theirs.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()
    assert results["output_ids"] == expected
    assert results["model_config"]["qk_norm"] and results["model_config"]["head_dim"] == 16


def test_moe_without_renormalised_top_k_matches_transformers(tmp_path: Path) -> None:
    """norm_topk_prob=false (transformers' default for Qwen3-MoE): the k experts weighted by the softmax
    over every expert, not renormalised — model.moe_renormalize=false."""
    from gpt_lab.model.feedforward import MoEFeedForward

    theirs = save_hf_model("qwen3_moe", tmp_path, seed=5, norm_topk_prob=False)
    ours = build_model({**START, "qkv_bias": False}, tmp_path).eval()
    assert ours.cfg["moe_renormalize"] is False
    torch.manual_seed(0)
    idx = torch.randint(0, 96, (2, SEQ))
    with torch.no_grad():
        expected = theirs(idx).logits
        torch.testing.assert_close(ours(idx), expected, rtol=1e-5, atol=1e-5)
        for module in ours.modules():  # the same weights read the book's way differ: the flag is used
            if isinstance(module, MoEFeedForward):
                module.renormalize = True
        assert (ours(idx) - expected).abs().max() > 1e-3
