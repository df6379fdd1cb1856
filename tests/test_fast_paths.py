"""Correctness of the CPU decoding fast path (gpt_lab.generation.decoding) that gpt_lab.generation.sampling drives.

Each fast product is compared with the plain computation (``nn.Linear``, the full forward, the book's
loop). Timings live in scripts/bench.py, not here. These tests run PyTorch's products (the native
float32 kernel switched off, as where it cannot be built); the native one's are at the end. The fused
native step, which runs GPT-2's cached steps where it builds, is off here (tests/test_fused_step.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
import torch
from configs import TINY as BOOK_TINY
from torch import nn

import gpt_lab.generation.decoding as decoding
import gpt_lab.generation.sampling as generate_mod
from gpt_lab.generation.decoding import (
    CHECK_EVERY,
    CoreMonitor,
    Decoder,
    busy_cpu_seconds,
    is_decode_call,
    split_linear,
)
from gpt_lab.generation.sampling import generate, generate_text_simple
from gpt_lab.model import native
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.lora import LoRALinear, apply_lora, lora_disabled

# An odd vocabulary: the head's split copy is zero-padded.
TINY = {**BOOK_TINY, "vocab_size": 65, "n_heads": 2, "qkv_bias": True}
PATHS = ["split", "plain"]


@pytest.fixture(autouse=True)
def pytorch_products(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's products (split, head copy) for every test but those marked as the native kernel's; in
    every test the ``Decoder``'s steps, not the fused native step (tests/test_fused_step.py), which
    ``generate`` would otherwise run for these models' cached steps."""
    monkeypatch.setattr(native, "step_kernel", lambda: None)
    if "native_kernel" not in request.fixturenames:
        monkeypatch.setattr(native, "f32_kernel", lambda: None)


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
@pytest.mark.parametrize("k", [1, 2, 3])  # 3: the last features do not fill a chunk
def test_split_linear_equals_linear(k: int, bias: bool, rows: int) -> None:
    torch.manual_seed(1)
    linear = nn.Linear(12, 19, bias=bias)
    x = torch.randn(1, rows, 12)
    with torch.no_grad():
        torch.testing.assert_close(split_linear(x, linear.weight, linear.bias, k), linear(x))


def test_decode_call_only_without_grad() -> None:
    x = torch.randn(1, 1, 16)
    with torch.no_grad():
        assert is_decode_call(x)
    assert not is_decode_call(x)  # training keeps nn.Linear (autograd, fused GEMMs)
    with torch.no_grad():
        assert not is_decode_call(torch.randn(2, 8, 16))  # a full forward: GEMMs


def test_last_only_equals_full_forward_last_position() -> None:
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (2, 5))
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
    assert last.shape == (2, 1, TINY["vocab_size"])
    torch.testing.assert_close(last, full[:, -1:])


@pytest.mark.parametrize("path", PATHS)
def test_decode_step_logits_equal_plain_modules(threads: int, path: str) -> None:
    """A cached one-token step through the decoder (split or plain products, head copy) matches nn.Linear."""
    model = tiny_model()
    idx = torch.randint(0, TINY["vocab_size"], (1, 6))
    cache = model.new_kv_cache(1)
    with torch.no_grad(), Decoder(model, path=path) as decoder:
        with decoder.step():
            model(idx[:, :5], kv_cache=cache)
        with decoder.step():
            step = model(idx[:, 5:], kv_cache=cache)
        assert decoder.head_chunks is not None  # the head's transposed copy was used
        assert torch.get_num_threads() == threads  # the plain path's single thread is restored
    assert decoder.head_chunks is None  # and freed when the decoder closes
    full = model(idx)  # with grad: plain nn.Linear everywhere
    torch.testing.assert_close(step, full[:, 5:].detach())


def test_model_is_the_books_between_steps(two_threads: None) -> None:
    """The layers' forward is replaced only inside a step; nothing is added to the state dict."""
    model = tiny_model(tie_weights=True)
    keys = set(model.state_dict())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad(), Decoder(model) as decoder:
        with decoder.step():
            assert all("forward" in vars(m) for m in linears)
            out = model(torch.tensor([[1]]))
        assert not any("forward" in vars(m) for m in linears)
        assert set(model.state_dict()) == keys
        assert [name for name, _ in model.named_buffers()] == []
    torch.testing.assert_close(out, model(torch.tensor([[1]])).detach())


def test_a_new_decoder_sees_optimizer_steps(threads: int) -> None:
    model = tiny_model()
    idx = torch.tensor([[3]])

    def step_logits() -> torch.Tensor:
        with torch.no_grad(), Decoder(model) as decoder, decoder.step():
            return model(idx, last_only=True)

    before = step_logits()
    for fused in (True, False):  # fused AdamW writes the weights in place
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
        model.train()
        model(torch.randint(0, TINY["vocab_size"], (2, 8))).logsumexp(-1).mean().backward()
        opt.step()
        model.eval()
        torch.testing.assert_close(step_logits(), model(idx)[:, -1:].detach())
    assert not torch.allclose(step_logits(), before)


def test_head_copy_built_under_inference_mode_is_a_normal_tensor() -> None:
    model = tiny_model()
    with torch.inference_mode(), Decoder(model) as decoder:
        assert decoder.head_chunks is not None
        assert not decoder.head_chunks.is_inference()


def test_busy_cpu_seconds_reads_the_kernels_tick_counts() -> None:
    stat = (
        "cpu  9 9 9 9 9 9 9 9 9 9\n"
        "cpu0 100 1 20 5000 7 2 3 4 0 0\n"  # user nice system idle iowait irq softirq steal guest guest_nice
        "cpu1 200 0 30 4000 0 0 0 0 0 0\n"
        "intr 12345 0 0\n"
    )
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_cpu_seconds({0}, stat) == pytest.approx((100 + 1 + 20 + 2 + 3 + 4) / hz)  # idle, iowait left out
    assert busy_cpu_seconds({0, 1}, stat) == pytest.approx((130 + 230) / hz)  # the "cpu" total line is not added
    assert busy_cpu_seconds({7}, stat) is None  # CPUs it does not list: unknown, not idle


class ScriptedClock:
    """The three readings ``CoreMonitor`` takes, as a test scripts them: wall time, the machine's busy
    CPU seconds (``/proc/stat``), this process's CPU time."""

    def __init__(self, readings: list[tuple[float, float | None, float]]) -> None:
        self.readings = iter(readings)
        self.now: tuple[float, float | None, float] = (0.0, 0.0, 0.0)

    def advance(self) -> None:
        self.now = next(self.readings)

    def monotonic(self) -> float:
        return self.now[0]

    def process_time(self) -> float:
        return self.now[2]

    def busy(self, cpus: set[int], stat: str | None = None) -> float | None:
        return self.now[1]


def test_core_monitor_counts_other_processes_not_its_own_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other processes' cores = (busy CPU seconds of the machine - this process's CPU seconds) / wall seconds."""
    clock = ScriptedClock(
        [
            (10.0, 100.0, 5.0),  # the first reading (at construction)
            (10.02, 100.1, 5.01),  # 20 ms later: too soon to tell (MIN_INTERVAL), the interval goes on
            (10.5, 101.0, 5.5),  # 0.5 s: 1.0 busy s, 0.5 of them this process's: 1 core's worth of others
            (11.5, 102.0, 6.5),  # 1 s: the machine's busy time is all this process's own: nobody else
            (12.0, 102.1, 6.9),  # own time counted above the kernel's ticks (rounding): clamped to 0
            (13.0, None, 7.0),  # /proc/stat unreadable: unknown
        ]
    )
    monkeypatch.setattr(decoding, "time", clock)
    monkeypatch.setattr(decoding, "busy_cpu_seconds", clock.busy)
    clock.advance()
    monitor = CoreMonitor()
    assert monitor.readable
    answers = []
    for _ in range(5):
        clock.advance()
        answers.append(monitor.others())
    assert answers[0] is None
    assert answers[1] == pytest.approx((101.0 - 100.0 - (5.5 - 5.0)) / (10.5 - 10.0))  # 1.0
    assert answers[2] == pytest.approx(0.0)
    assert answers[3] == 0.0
    assert answers[4] is None


class ScriptedMonitor:
    """Other processes' CPU use, as a test scripts it (None: too soon to tell)."""

    def __init__(self, cpus: int, values: list[float | None]) -> None:
        self.cpus, self.values = set(range(cpus)), iter(values)

    def others(self) -> float | None:
        return next(self.values)


def test_decoder_runs_plain_until_it_looks_then_follows_the_other_processes(threads: int) -> None:
    model = tiny_model()
    if threads == 1:  # nothing to split: one thread never looks and runs the plain path
        with torch.no_grad(), Decoder(model) as decoder:
            assert decoder.monitor is None
            for _ in range(CHECK_EVERY + 2):
                with decoder.step():
                    assert decoder.path == "plain"
        return
    with torch.no_grad(), Decoder(model) as decoder:
        decoder.monitor = ScriptedMonitor(threads, [None, None, 0.1, 1.0])  # too soon twice, idle, a core taken
        paths = []
        for _ in range(2 + 2 * CHECK_EVERY):
            with decoder.step():
                paths.append(decoder.path)
    # Step 0 (the prompt) and step 1 look too soon: plain; step 2 sees an idle machine; a core taken
    # is seen CHECK_EVERY steps later.
    assert paths == ["plain", "plain"] + ["split"] * CHECK_EVERY + ["plain"] * CHECK_EVERY
    with torch.no_grad(), Decoder(model, path="split") as fixed:  # a fixed path never looks
        assert fixed.monitor is None and fixed.path == "split"


def test_the_next_decoder_looks_at_its_prompt_with_the_processs_monitor(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One monitor per process: a Decoder opened after an earlier one's last look chooses at its first step
    (the prompt's) from the interval since then; an interval past MAX_AGE starts again (plain until it answers)."""
    if threads == 1:
        pytest.skip("one thread never looks")
    late = 11.0 + decoding.MAX_AGE + 0.5
    clock = ScriptedClock(
        [
            (10.0, 100.0, 5.0),  # the process's monitor made (the first Decoder)
            (10.01, 100.0, 5.01),  # the first Decoder's prompt: too soon
            (10.5, 100.5, 5.5),  # its next step: nobody else busy -> split
            (11.0, 101.0, 6.0),  # the second Decoder's prompt, 0.5 s later: still nobody else -> split
            (late, 101.0 + late - 11.0, 6.5),  # a third, past MAX_AGE: plain, the interval starts again
            (late + 0.1, 101.2 + late - 11.0, 6.6),  # its next step: one core's worth of others -> plain
        ]
    )
    monkeypatch.setattr(decoding, "own_cpus", lambda: set(range(threads)))
    monkeypatch.setattr(decoding, "time", clock)
    monkeypatch.setattr(decoding, "busy_cpu_seconds", lambda cpus, stat=None: clock.now[1])
    monkeypatch.setattr(decoding, "_SHARED", [])
    clock.advance()
    paths = []
    for steps in (2, 1, 2):
        with torch.no_grad(), Decoder(tiny_model()) as decoder:
            assert decoder.monitor is decoding.shared_monitor()
            for _ in range(steps):
                clock.advance()
                with decoder.step():
                    paths.append(decoder.path)
    assert paths == ["plain", "split", "split", "plain", "plain"]


def test_decoder_without_proc_stat_runs_the_split_path(threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "busy_cpu_seconds", lambda cpus, stat=None: None)  # not Linux
    monkeypatch.setattr(decoding, "_SHARED", [])  # a monitor made before the patch could read /proc/stat
    with torch.no_grad(), Decoder(tiny_model()) as decoder:
        assert decoder.monitor is None
        assert decoder.path == ("split" if threads > 1 else "plain")
    with pytest.raises(ValueError, match="path='fast'"):
        Decoder(tiny_model(), path="fast")


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("n_new", [3, 12])  # 12 > context 8 - 4: the window slides
def test_cached_greedy_equals_book_loop(threads: int, batch: int, n_new: int) -> None:
    model = tiny_model(vocab_size=64)
    torch.manual_seed(batch)
    idx = torch.randint(0, 64, (batch, 4))
    book = generate_text_simple(model, idx, n_new, context_size=8)
    assert torch.equal(generate(model, idx, n_new, context_size=8), book)
    assert torch.equal(generate(model, idx, n_new, context_size=8, use_cache=False), book)


@pytest.mark.parametrize("path", PATHS)
def test_each_decoding_path_gives_the_book_loops_tokens(
    threads: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(vocab_size=64)
    idx = torch.randint(0, 64, (2, 3))
    monkeypatch.setattr(decoding, "MIN_WEIGHT", 0)  # the Decoder for this tiny model too
    monkeypatch.setattr(generate_mod, "Decoder", functools.partial(Decoder, path=path))
    assert torch.equal(generate(model, idx, 7, context_size=8), generate_text_simple(model, idx, 7, context_size=8))


@pytest.mark.parametrize("path", PATHS)
def test_decoding_a_model_with_live_lora_adapters_follows_the_adapters(
    threads: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chapter 7's LoRA run answers its validation and test instructions with the adapters still apart."""
    model = tiny_model(vocab_size=64)
    apply_lora(model, rank=2, alpha=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_()
    torch.manual_seed(7)
    idx = torch.randint(0, 64, (2, 3))
    monkeypatch.setattr(decoding, "MIN_WEIGHT", 0)  # the Decoder for this tiny model too
    monkeypatch.setattr(generate_mod, "Decoder", functools.partial(Decoder, path=path))
    book = generate_text_simple(model, idx, 5, context_size=8)
    assert torch.equal(generate(model, idx, 5, context_size=8), book)
    with lora_disabled(model):  # the adapters change the tokens: the comparison above can fail
        assert not torch.equal(generate_text_simple(model, idx, 5, context_size=8), book)


GOLDEN_IDS = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]


@pytest.mark.slow
def test_golden_gpt2_small_with_fast_paths(book_model: GPTModel, two_threads: None) -> None:
    """The chapter's output through the cached fast path (PyTorch's products), with 2 threads."""
    assert generate(book_model, torch.tensor([GOLDEN_IDS[:4]]), 10, 1024)[0].tolist() == GOLDEN_IDS


# --- the native float32 kernel (gpt_lab/model/native.py, csrc/f32_linear.c) ---------------------------


@pytest.mark.parametrize("path", PATHS)
def test_native_step_runs_every_float32_layer_through_the_kernel(
    threads: int, path: str, native_kernel: native.Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached step's products, the head's included, go through the kernel (no head copy), and its logits
    match nn.Linear's whole forward; the prompt's many rows stay with F.linear."""
    model = tiny_model()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    calls: list[int] = []
    kernel_product = native.f32_linear
    monkeypatch.setattr(
        native, "f32_linear", lambda k, x, w, b: calls.append(x.shape[-2]) or kernel_product(k, x, w, b)
    )
    idx = torch.randint(0, TINY["vocab_size"], (1, 6))
    cache = model.new_kv_cache(1)
    with torch.no_grad(), Decoder(model, path=path) as decoder:
        with decoder.step():
            model(idx[:, :5], kv_cache=cache)
        assert calls == []  # 5 rows > MAX_ROWS: F.linear
        with decoder.step():
            step = model(idx[:, 5:], kv_cache=cache)
        assert decoder.head_chunks is None  # the head is read in place
    assert calls == [1] * len(linears)
    torch.testing.assert_close(step, model(idx)[:, 5:].detach())


@pytest.mark.slow
def test_golden_gpt2_small_through_the_native_kernel(
    book_model: GPTModel, native_kernel: native.Kernel, two_threads: None
) -> None:
    """The chapter's output with every step's products through the kernel, with 2 threads."""
    assert generate(book_model, torch.tensor([GOLDEN_IDS[:4]]), 10, 1024)[0].tolist() == GOLDEN_IDS


def test_native_generation_gives_the_pytorch_products_tokens(
    native_kernel: native.Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy tokens with the kernel equal those without it (a model large enough for the Decoder)."""
    model = GPTModel({**TINY, "emb_dim": 128, "vocab_size": 4096, "n_layers": 2}).eval()
    assert decoding.speeds_up(model)
    idx = torch.tensor([[5, 17, 2000]])
    with_kernel = generate(model, idx, 12, TINY["context_length"])
    monkeypatch.setattr(native, "f32_kernel", lambda: None)
    without = generate(model, idx, 12, TINY["context_length"])
    assert torch.equal(with_kernel, without)
    assert torch.equal(with_kernel, generate_text_simple(model, idx, 12, TINY["context_length"]))


def test_native_is_not_used_for_other_dtypes_or_transposed_weights(native_kernel: native.Kernel) -> None:
    model = tiny_model()
    model.out_head.weight = nn.Parameter(model.out_head.weight.detach().t().contiguous().t())  # (in, out) storage
    model.trf_blocks[0].ff.layers[0].to(torch.float64)
    with torch.no_grad(), Decoder(model) as decoder:
        natives = {m for m, forward in decoder.forwards if getattr(forward, "func", None) == decoder._native_linear}
    assert model.out_head not in natives and model.trf_blocks[0].ff.layers[0] not in natives
    assert model.trf_blocks[0].att.W_query in natives
