"""Correctness of the inference fast paths in gpt_lab.model / gpt_lab.generate.

Each fast path is compared with the plain computation (``nn.Linear``, the full forward, the book's
loop). Timings live in scripts/bench.py, not here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from book_reference import GPT_CONFIG_124M
from book_reference import TINY as BOOK_TINY
from torch import nn

from gpt_lab import model as model_mod
from gpt_lab.generate import generate, generate_text_simple
from gpt_lab.model import GPTModel

# An odd vocabulary: the head's split copy is zero-padded.
TINY = {**BOOK_TINY, "vocab_size": 65, "n_heads": 2, "qkv_bias": True}


@pytest.fixture(params=[1, 2, 3])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """1 thread (no split), 2 (even split) and 3 (the last features do not fill a chunk)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def tiny_model(**overrides: object) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel({**TINY, **overrides}).eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
def test_split_linear_equals_linear(threads: int, bias: bool, rows: int) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(12, 19, bias=bias)  # 19: the last features do not fill a chunk
    x = torch.randn(1, rows, 12)
    with torch.no_grad():
        torch.testing.assert_close(model_mod._split_linear(x, linear), linear(x))


def test_decode_path_only_without_grad() -> None:
    x = torch.randn(1, 1, 16)
    with torch.no_grad():
        assert model_mod._use_decode_path(x)
    assert not model_mod._use_decode_path(x)  # training keeps nn.Linear (autograd, fused GEMMs)
    with torch.no_grad():
        assert not model_mod._use_decode_path(torch.randn(2, 8, 16))  # a full forward: GEMMs


def test_last_only_equals_full_forward_last_position(threads: int) -> None:
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (2, 5))
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
    assert last.shape == (2, 1, TINY["vocab_size"])
    torch.testing.assert_close(last, full[:, -1:])


@pytest.mark.parametrize("generating", [False, True])
def test_decode_step_logits_equal_plain_modules(threads: int, generating: bool) -> None:
    """A cached one-token step (split products, head copy) matches recomputing with nn.Linear."""
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (1, 6))
    with torch.no_grad(), model.generation_mode() if generating else contextlib.nullcontext():
        cache = model.new_kv_cache(1)
        model(idx[:, :5], kv_cache=cache)
        step = model(idx[:, 5:], kv_cache=cache)
        assert (model._head_cache is not None) == generating
    full = model(idx)  # with grad: plain nn.Linear everywhere
    torch.testing.assert_close(step, full[:, 5:].detach())


def _step_logits(model: GPTModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.generation_mode():
        out = model(idx, last_only=True)
        assert model._head_cache is not None  # the head's transposed copy was used
    assert model._head_cache is None  # and freed at the end of the block
    return out


def _reference_logits(model: GPTModel, idx: torch.Tensor) -> torch.Tensor:
    return model(idx)[:, -1:].detach()  # grad on: no fast path


def test_head_copy_not_in_state_dict_and_tied_weights(threads: int) -> None:
    model = tiny_model(tie_weights=True)
    keys = set(model.state_dict())
    with torch.no_grad(), model.generation_mode():
        out = model(torch.tensor([[1]]))
        assert model._head_cache is not None
        assert set(model.state_dict()) == keys
        assert [name for name, _ in model.named_buffers()] == []
    torch.testing.assert_close(out, _reference_logits(model, torch.tensor([[1]])))


def test_head_copy_fresh_after_optimizer_steps(threads: int) -> None:
    model = tiny_model()
    idx = torch.tensor([[3]])
    before = _step_logits(model, idx)
    # Fused AdamW does not bump version counters: the copy must not outlive generation_mode().
    for fused in (True, False):
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
        model.train()
        model(torch.randint(0, TINY["vocab_size"], (2, 8))).logsumexp(-1).mean().backward()
        opt.step()
        model.eval()
        after = _step_logits(model, idx)
        torch.testing.assert_close(after, _reference_logits(model, idx))
    assert not torch.allclose(after, before)


def test_head_copy_follows_changes_inside_generation_mode(threads: int) -> None:
    model = tiny_model()
    idx = torch.tensor([[5]])
    torch.manual_seed(42)
    other = GPTModel(TINY).eval()
    with torch.no_grad(), model.generation_mode():
        model(idx, last_only=True)  # builds the head copy
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(idx, last_only=True), _reference_logits(other, idx))
        model.out_head.weight.mul_(2.0)
        doubled = model(idx, last_only=True)
        model.double()
        as_double = model(idx, last_only=True)
    torch.testing.assert_close(doubled.double(), _reference_logits(model, idx), rtol=1e-5, atol=1e-5)
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double, _reference_logits(model, idx))


def test_generation_mode_nests_and_inference_mode(threads: int) -> None:
    """A copy built under inference_mode is a normal tensor; nested blocks keep it until the outer one ends."""
    model = tiny_model()
    idx = torch.tensor([[7]])
    with model.generation_mode():
        with model.generation_mode(), torch.inference_mode():
            a = model(idx, last_only=True)
        assert model._head_cache is not None
        assert not model._head_cache[1].is_inference()
        with torch.no_grad():
            torch.testing.assert_close(model(idx, last_only=True), a.clone())
    assert model._head_cache is None


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("n_new", [3, 12])  # 12 > context 8 - 4: the window slides
def test_cached_greedy_equals_book_loop(threads: int, batch: int, n_new: int) -> None:
    model = tiny_model(vocab_size=64)
    torch.manual_seed(batch)
    idx = torch.randint(0, 64, (batch, 4))
    book = generate_text_simple(model, idx, n_new, context_size=8)
    fast = generate(model, idx, n_new, context_size=8)
    assert torch.equal(fast, book)
    assert torch.equal(generate(model, idx, n_new, context_size=8, use_cache=False), book)


@pytest.mark.slow
def test_golden_gpt2_small_with_fast_paths() -> None:
    """The chapter's output through the cached fast path, with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(123)
        model = GPTModel(GPT_CONFIG_124M).eval()
        out = generate(model, torch.tensor([[15496, 11, 314, 716]]), 10, 1024)
    finally:
        torch.set_num_threads(before)
    assert out[0].tolist() == [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]
