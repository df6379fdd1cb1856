"""The native kernels' build (gpt_lab/model/native.py), the int8 layout, the float32 product against
float64, and MLA's latent attention against a float64 softmax; the int8 product's numbers against a
float64 reference are in tests/test_generation_weights.py, beside PyTorch's kernels."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch import nn

from gpt_lab.model import native


def test_blocks_hold_each_weight_where_the_kernel_reads_it() -> None:
    w = torch.randint(-127, 128, (19, 37), dtype=torch.int8)  # neither a multiple of 8 rows nor 16 inputs
    blocked = native.block_int8(w)
    assert blocked.shape == (3, 3, 8, 16) and blocked.dtype == torch.int8
    for n in range(24):
        for k in range(48):
            want = int(w[n, k]) if n < 19 and k < 37 else 0  # zeros pad both ends
            assert int(blocked[n // 8, k // 16, n % 8, k % 16]) == want
    assert torch.equal(native.unblock_int8(blocked, 19, 37), w)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_kernel_builds_into_the_cache_once_and_computes_the_product(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GPT_LAB_NATIVE", raising=False)
    lib = native.library.__wrapped__()  # uncached: a fresh build into tmp_path
    if lib is None:
        pytest.skip("PyTorch's libgomp.so.1 is not in torch/lib here")
    (built,) = (tmp_path / "gpt_lab").glob("native-*.so")
    stamp = built.stat().st_mtime_ns
    assert native.library.__wrapped__() is not None and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    monkeypatch.setattr(native, "library", lambda: lib)
    kernel = native.int8_kernel.__wrapped__()
    torch.manual_seed(0)
    w = torch.randint(-127, 128, (21, 40), dtype=torch.int8)
    scales, bias, x = torch.rand(21), torch.randn(21), torch.randn(2, 5, 40)
    y = native.int8_linear(kernel, x, native.block_int8(w), scales, bias)
    want = x.double() @ (w.double() * scales.double()[:, None]).T + bias.double()
    assert y.shape == (2, 5, 21) and torch.allclose(y.double(), want, rtol=1e-5, atol=1e-5)


def test_without_a_compiler_the_kernels_fall_back_with_one_line(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GPT_LAB_NATIVE", raising=False)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level(logging.INFO, logger="gpt_lab.model.native"):
        assert native.library.__wrapped__() is None
    assert "PyTorch's kernels instead" in caplog.text
    assert not list((tmp_path / "gpt_lab").glob("*.so"))  # nothing half-built left behind
    monkeypatch.setenv("GPT_LAB_NATIVE", "0")  # and the switch that turns it off
    monkeypatch.delenv("CC")
    assert native.library.__wrapped__() is None
    monkeypatch.setattr(native, "library", lambda: None)  # each kernel follows the library
    kernels = (native.f32_kernel, native.int8_kernel, native.latent_kernel)
    assert all(kernel.__wrapped__() is None for kernel in kernels)


@pytest.mark.parametrize(
    ("h", "s", "n", "parts"),
    [
        (12, 300, 48, 1),  # gpt2-like heads; 18 full blocks of 16 positions and a partial one
        (12, 300, 48, 3),  # three parts of 100 positions, combined
        (5, 7, 20, 2),  # fewer positions than a block, heads not a multiple of 4, width not of 16
        (4, 1, 16, 1),  # one cached position: its row, exactly
    ],
)
def test_latent_kernel_is_softmax_attention_over_the_whole_latent(h: int, s: int, n: int, parts: int) -> None:
    kernel = native.latent_kernel()
    if kernel is None:
        pytest.skip("the native kernels did not build here (no C compiler?)")
    g = torch.Generator().manual_seed(h * s + parts)
    q = torch.randn(2, 1, h, n, generator=g)
    latent = torch.randn(2, s, n, generator=g)
    latent[1, s // 2] *= 8  # one row whose scores dominate: the running maximum moves mid-way
    scale = 0.7
    got = native.latent_attention(kernel, q, latent, scale, parts)
    qd, ld = q.double(), latent.double().unsqueeze(1)
    expected = torch.softmax(qd @ ld.transpose(-1, -2) * scale, dim=-1) @ ld  # (b, 1, h, n)
    assert got.shape == (2, 1, h, n)
    # float32 sums of s weights times rows of size ~1, a polynomial exp to ~2e-8: a few float32 spacings
    torch.testing.assert_close(got.double(), expected, rtol=2e-5, atol=2e-5)
    if s == 1:
        assert torch.equal(got[:, 0, 0], latent[:, 0])  # the only row, weight 1


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_out, n_in", [(1, 1), (7, 15), (8, 16), (19, 37), (300, 70)])
def test_f32_kernel_matches_a_float64_product(n_out: int, n_in: int, bias: bool, native_kernel: native.Kernel) -> None:
    """The float32 product of a generation step (csrc/f32_linear.c) on nn.Linear's own weight: partial
    blocks of 8 outputs and partial vectors of 16 inputs, 1-4 rows, against float64."""
    torch.manual_seed(n_out * 100 + n_in)
    linear = nn.Linear(n_in, n_out, bias=bias)
    for rows in (1, 2, 4):
        x = torch.randn(1, rows, n_in)
        y = native.f32_linear(native_kernel, x, linear.weight.detach(), linear.bias.detach() if bias else None)
        want = x.double() @ linear.weight.double().T + (linear.bias.double() if bias else 0)
        # 16 lanes each summing ceil(n_in / 16) float32 products, a 4-level tree over them, the bias: one
        # float32 rounding each, of at most the size of the sum of |products| (and |bias|).
        size = x.double().abs() @ linear.weight.double().abs().T + (linear.bias.double().abs() if bias else 0)
        bound = (-(-n_in // 16) + 6) * 2.0**-24 * size
        assert y.shape == (1, rows, n_out) and y.dtype == torch.float32
        assert ((y.double() - want).abs() <= bound).all()


def test_f32_kernel_rows_do_not_depend_on_each_other_or_on_threads(native_kernel: native.Kernel) -> None:
    """Each output summed in one fixed order: a row alone, among others, on one thread or two, bit for bit."""
    torch.manual_seed(4)
    w, b = torch.randn(301, 70), torch.randn(301)  # 37 full blocks of 8 and a partial one; a partial vector
    x = torch.randn(4, 70) * torch.logspace(-3, 3, 4)[:, None]
    x[2] = 0
    together = native.f32_linear(native_kernel, x, w, b)
    assert torch.equal(together[2], b)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.equal(native.f32_linear(native_kernel, x, w, b), together)
            for i in range(4):
                assert torch.equal(native.f32_linear(native_kernel, x[i : i + 1], w, b), together[i : i + 1])
    finally:
        torch.set_num_threads(threads)
