"""The fused native decoding step (gpt_lab/generation/fused.py, csrc/gpt2_step.c) against PyTorch's.

Each fused step is compared with the model's own forward on the same cache (a second implementation:
PyTorch's norms, attention and products), across weights, batch sizes and threads; ``generate``'s use
of it with the book's loop; the models it leaves to the forward, and the inputs it refuses.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch

import gpt_lab.generation.decoding as decoding
import gpt_lab.generation.sampling as sampling
from gpt_lab.generation.fused import FusedStep, why_not
from gpt_lab.generation.sampling import generate, generate_text_simple
from gpt_lab.generation.weights import use_weights
from gpt_lab.model import native
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.lora import apply_lora
from gpt_lab.model.packed import row_linears_

# Odd sizes: 12-wide heads (not a multiple of the kernels' 16 lanes), a 101-word vocabulary and 3 heads
# of 12 (the last 8-row block of a product part-filled).
CFG = {
    "vocab_size": 101,
    "context_length": 24,
    "emb_dim": 36,
    "n_heads": 3,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


@pytest.fixture(autouse=True)
def _needs_the_step() -> None:
    if native.step_kernel() is None:
        pytest.skip("the native kernels cannot be built here (no C compiler or no libgomp in torch/lib)")


def model_as(weights: str, fc1_scale: float = 1.0, **overrides: object) -> GPTModel:
    """The test model, its weights as ``weights`` says; ``fc1_scale`` multiplies the feed-forwards' first
    layers (GELU's inputs)."""
    torch.manual_seed(1)
    model = GPTModel({**CFG, **overrides}).eval()
    with torch.no_grad():  # positions and norms away from their initial values, so that each one counts
        for name, p in model.named_parameters():
            if "norm" in name or "pos_emb" in name:
                p.add_(0.3 * torch.randn_like(p))
            if "ff.layers.0" in name:
                p.mul_(fc1_scale)
    if weights == "bf16":  # every size's bf16 layers as gpt2_small gets them (RowLinear, not oneDNN-packed)
        row_linears_(model.to(torch.bfloat16))
        return model
    return use_weights(model, weights)


# The bound of a step's logits against the forward, times max |logit|: float32 rounding of sums in
# another order (fp32, int8: the products are the same kernels'), a few bfloat16 spacings (2**-8) for
# a bfloat16 model, whose every activation is rounded.
BOUND = {"fp32": 1e-5, "int8": 1e-5, "bf16": 4 * 2**-8}


@pytest.mark.parametrize("weights", ["fp32", "int8", "bf16"])
@pytest.mark.parametrize("batch", [1, 2])
def test_fused_steps_give_the_forwards_logits_and_cache(weights: str, batch: int) -> None:
    model = model_as(weights)
    torch.manual_seed(2)
    ids = torch.randint(0, CFG["vocab_size"], (batch, 12))
    with torch.inference_mode():
        fused_cache, plain_cache = model.new_kv_cache(batch), model.new_kv_cache(batch)
        model(ids[:, :5], kv_cache=fused_cache)
        model(ids[:, :5], kv_cache=plain_cache)
        step = FusedStep.build(model, fused_cache)
        assert step is not None, why_not(model, fused_cache)
        for t in range(5, 12):
            fused = step(ids[:, t : t + 1], threads=2)
            plain = model(ids[:, t : t + 1], kv_cache=plain_cache, last_only=True)
            assert fused.dtype == plain.dtype and fused.shape == plain.shape == (batch, 1, CFG["vocab_size"])
            bound = BOUND[weights] * plain.abs().max().item()
            assert (fused.float() - plain.float()).abs().max().item() <= bound
            assert fused_cache.pos == plain_cache.pos == t + 1
        for fused_layer, plain_layer in zip(fused_cache.layers, plain_cache.layers, strict=True):
            for a, b in zip(fused_layer.tensors(), plain_layer.tensors(), strict=True):
                written = (slice(None), slice(None), slice(5, 12))
                scale = b[written].abs().max().item()
                assert (a[written].float() - b[written].float()).abs().max().item() <= BOUND[weights] * scale


def test_the_model_goes_on_from_a_cache_the_fused_step_wrote() -> None:
    """Steps through the native call, then through the forward: the forward reads the keys and values
    the native step stored, and gives the whole sequence's logits."""
    model = model_as("fp32")
    ids = torch.randint(0, CFG["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_kv_cache(1)
        model(ids[:, :3], kv_cache=cache)
        step = FusedStep.build(model, cache)
        for t in range(3, 7):
            step(ids[:, t : t + 1], threads=1)
        later = model(ids[:, 7:], kv_cache=cache)
    torch.testing.assert_close(later, full[:, 7:], rtol=0, atol=1e-5 * full.abs().max().item())


def test_the_steps_gelu_against_float64() -> None:
    """The step's GELU, 16 values at a time from one exponential, against float64's x sigmoid(2u)
    (= x (1 + tanh u) / 2): a few float32 units of the result where it is above 1e-3, more in the far tail
    (e^(-2u) near e^88 magnifies u's own rounding: PyTorch's float32 GELU is off by ~400 there), then 0."""
    edges = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, 3e38, -3e38])
    x = torch.cat([torch.linspace(-120.0, 120.0, 400_001), edges])
    y = torch.empty_like(x)
    native.gelu_kernel()(x.data_ptr(), y.data_ptr(), x.numel())
    xd = x.double()
    expected = xd * torch.sigmoid(2 * (2 / torch.pi) ** 0.5 * (xd + 0.044715 * xd**3))
    ulp, size = torch.finfo(torch.float32).eps, expected.abs()
    error = (y.double() - expected).abs()
    assert (error[size > 1e-3] <= 12 * ulp * size[size > 1e-3]).all()
    normal = size > 1e-37  # float32's normal numbers (GELU's tail from x = -9.3 on is below them)
    assert (error[normal] <= 128 * ulp * size[normal]).all()
    assert (error[~normal] <= 1e-37).all() and y[-1] == 0  # the far negative tail, -3e38 included
    specials = torch.tensor([float("inf"), float("-inf"), float("nan")])
    out = torch.empty(3)
    native.gelu_kernel()(specials.data_ptr(), out.data_ptr(), 3)
    assert out[0] == float("inf") and out[1:].isnan().all()  # as PyTorch's: inf, nan, nan


@pytest.mark.parametrize("weights", ["fp32", "int8", "bf16"])
def test_gelu_over_its_whole_range(weights: str) -> None:
    """The step's GELU (x / (1 + e^(-2u)), its exponential clamped where |2u| > 87) against PyTorch's
    (x (1 + tanh u) / 2): feed-forward inputs from about -100 to 100, the clamp's range (|x| > 9) included."""
    model = model_as(weights, fc1_scale=60.0)
    ids = torch.randint(0, CFG["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(6))
    seen = []
    with torch.inference_mode():
        cache = model.new_kv_cache(1)
        hook = model.trf_blocks[1].ff.layers[0].register_forward_hook(lambda m, i, out: seen.append(out))
        model(ids[:, :4], kv_cache=model.new_kv_cache(1))
        hook.remove()
        model(ids[:, :4], kv_cache=cache)
        plain_cache = copy.deepcopy(cache)
        step = FusedStep.build(model, cache)
        for t in range(4, 8):
            fused = step(ids[:, t : t + 1], threads=2)
            plain = model(ids[:, t : t + 1], kv_cache=plain_cache, last_only=True)
            bound = BOUND[weights] * plain.abs().max().item()
            assert (fused.float() - plain.float()).abs().max().item() <= bound
    inputs = seen[0].float()
    assert inputs.min() < -40 and inputs.max() > 40 and ((inputs.abs() > 1) & (inputs.abs() < 9)).any()


@pytest.mark.parametrize("weights", ["fp32", "int8", "bf16"])
def test_the_threads_do_not_change_a_steps_logits(weights: str) -> None:
    """Products split by outputs, norms on one thread, attention by (sequence, head): every number
    is summed in one order whatever the threads, so the logits are equal bit for bit."""
    model = model_as(weights)
    ids = torch.randint(0, CFG["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(4))
    results = []
    for threads in (1, 2, 3):
        with torch.inference_mode():
            cache = model.new_kv_cache(2)
            model(ids[:, :4], kv_cache=cache)
            step = FusedStep.build(model, cache)
            results.append(torch.cat([step(ids[:, t : t + 1], threads) for t in (4, 5)], dim=1))
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_generate_runs_each_cached_step_as_one_native_call(monkeypatch: pytest.MonkeyPatch, book_model) -> None:
    """The book's gpt2_small: the prompt through the forward, every later token through one native call,
    and the tokens of the book's own loop (chapter 4's golden continuation)."""
    calls = []
    real_call = FusedStep.__call__

    def counted(self: FusedStep, ids: torch.Tensor, threads: int) -> torch.Tensor:
        calls.append(ids.shape)
        return real_call(self, ids, threads)

    monkeypatch.setattr(FusedStep, "__call__", counted)
    idx = torch.tensor([[15496, 11, 314, 716]])
    out = generate(book_model, idx, 10, 1024)
    assert calls == [(1, 1)] * 9
    assert torch.equal(out, generate_text_simple(book_model, idx, 10, 1024))
    golden = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]
    assert out[0].tolist() == golden


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_greedy_tokens_are_the_uncached_forwards(weights: str) -> None:
    """Past the window too: the cached loop slides it (no fused step there) as the book's loop does."""
    model = model_as(weights)
    idx = torch.randint(0, CFG["vocab_size"], (2, 3), generator=torch.Generator().manual_seed(5))
    n = 2 * CFG["context_length"]
    assert torch.equal(generate(model, idx, n, CFG["context_length"]), generate(model, idx, n, 24, use_cache=False))


def _hooked() -> GPTModel:
    model = model_as("fp32")
    model.trf_blocks[0].ff.register_forward_hook(lambda *args: None)
    return model


def _lora() -> GPTModel:
    model = model_as("fp32")
    apply_lora(model, rank=2, alpha=4)
    return model


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        (lambda: model_as("fp32", attention="gqa", n_kv_heads=1), "GQA"),
        (lambda: model_as("fp32", norm="rmsnorm"), "LayerNorm"),
        (lambda: model_as("fp32", pos_emb="rope"), "learned positions"),
        (lambda: model_as("fp32", ffn="swiglu"), "GELU feed-forward"),
        (lambda: model_as("fp32", window="sliding", sliding_window=4), "FullKV"),  # a ring buffer
        (_lora, "LoRALinear"),
        (_hooked, "hooks"),
        (lambda: model_as("fp32").double(), "float64"),
    ],
    ids=["gqa", "rmsnorm", "rope", "swiglu", "sliding", "lora", "hook", "float64"],
)
def test_other_models_are_left_to_their_forward(variant: Callable[[], GPTModel], reason: str) -> None:
    model = variant()
    cache = model.new_kv_cache(1)
    assert FusedStep.build(model, cache) is None
    assert reason in why_not(model, cache)


def test_bf16_weights_packed_for_onednn_are_left_to_their_forward() -> None:
    """A small bf16 model's layers hold oneDNN's reordered weights, which the native step cannot read."""
    model = use_weights(model_as("fp32"), "bf16")
    cache = model.new_kv_cache(1)
    assert "PackedLinear" in why_not(model, cache)


def test_without_the_native_library_generate_runs_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_as("fp32")
    idx = torch.tensor([[1, 2, 3]])
    with_step = generate(model, idx, 8, 24)
    monkeypatch.setattr(native, "step_kernel", lambda: None)
    assert FusedStep.build(model, model.new_kv_cache(1)) is None
    assert "not built" in why_not(model, model.new_kv_cache(1))
    assert torch.equal(generate(model, idx, 8, 24), with_step)


def test_bad_steps_are_refused_and_leave_the_cache_alone() -> None:
    model = model_as("fp32")
    with torch.inference_mode():
        cache = model.new_kv_cache(1, 6)
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        before = [t.clone() for layer in cache.layers for t in layer.tensors()]
        step = FusedStep.build(model, cache)
        with pytest.raises(IndexError, match=r"outside the vocabulary \(0 \.\. 100\)"):
            step(torch.tensor([[101]]), threads=1)
        with pytest.raises(IndexError):
            step(torch.tensor([[-1]]), threads=1)
        with pytest.raises(ValueError, match="rows <= 1"):
            step(torch.tensor([[1], [2]]), threads=1)
        with pytest.raises(ValueError, match="got \\(1, 2\\)"):
            step(torch.tensor([[1, 2]]), threads=1)
        assert cache.pos == 3
        after = [t for layer in cache.layers for t in layer.tensors()]
        # bit for bit (the unwritten positions hold whatever torch.empty left there, NaN patterns included)
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(before, after, strict=True))
        for _ in range(3):
            step(torch.tensor([[4]]), threads=1)
        with pytest.raises(ValueError, match="position 6"):  # the cache is full
            step(torch.tensor([[4]]), threads=1)


def test_a_copy_of_the_model_gets_its_own_pointers() -> None:
    """The description points at the model's tensors as they are when it is built: a copy's step reads
    the copy (changed weights, different logits), not the original."""
    model = model_as("fp32")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.out_head.weight.mul_(2.0)
    ids = torch.tensor([[5, 6, 7]])
    logits = []
    for m in (model, other):
        with torch.inference_mode():
            cache = m.new_kv_cache(1)
            m(ids, kv_cache=cache)
            logits.append(FusedStep.build(m, cache)(torch.tensor([[8]]), threads=1))
    torch.testing.assert_close(logits[1], 2.0 * logits[0], rtol=1e-5, atol=1e-6)


def test_generate_with_a_sampled_token_uses_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling (temperature, top-k) draws from the step's logits as from the forward's: the same tokens."""
    model = model_as("fp32")
    idx = torch.tensor([[1, 2, 3]])
    torch.manual_seed(7)
    fused = generate(model, idx, 10, 24, temperature=1.0, top_k=20)
    monkeypatch.setattr(sampling.FusedStep, "build", classmethod(lambda cls, *args: None))
    torch.manual_seed(7)
    assert torch.equal(generate(model, idx, 10, 24, temperature=1.0, top_k=20), fused)


@pytest.mark.parametrize(("path", "expected"), [("plain", 1), ("split", 2)])
def test_the_step_runs_on_the_decoders_threads(
    path: str, expected: int, two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Decoder's plain path (another process holds a core) runs the native step, and the sampling
    after it, on one thread; the split path on all."""
    monkeypatch.setattr(decoding, "MIN_WEIGHT", 0)  # the Decoder for this small model too
    monkeypatch.setattr(sampling, "Decoder", functools.partial(decoding.Decoder, path=path))
    seen = []
    real_call = FusedStep.__call__

    def recorded(self: FusedStep, ids: torch.Tensor, threads: int) -> torch.Tensor:
        seen.append((threads, torch.get_num_threads()))
        return real_call(self, ids, threads)

    monkeypatch.setattr(FusedStep, "__call__", recorded)
    generate(model_as("fp32"), torch.tensor([[1, 2, 3]]), 5, 24)
    assert seen == [(expected, expected)] * 4
    assert torch.get_num_threads() == 2
