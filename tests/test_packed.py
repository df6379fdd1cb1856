"""The layers and layouts generation.weights chooses for one-row products (gpt_lab/model/packed.py):
bf16 ``RowLinear`` (PyTorch's own matrix-vector kernel, for weights streamed from memory) and
oneDNN-prepacked ``PackedLinear`` (for weights the caches hold), fp32 weights stored (in, out), each
against the plain product, and the fallback where the prepacked kernel is missing. Timings live in
scripts/bench.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from configs import TINY
from torch import nn

from gpt_lab.generation import weights as weights_module
from gpt_lab.generation.decoding import Decoder, split_linear
from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import use_weights
from gpt_lab.model import native, packed
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.packed import (
    PackedLinear,
    RowLinear,
    is_transposed,
    pack_linears_,
    row_linears_,
    transpose_weights_,
)
from gpt_lab.model.stats import step_read_bytes

needs_bf16_kernel = pytest.mark.skipif(
    not packed.has_packed_kernel(torch.bfloat16), reason="oneDNN has no bf16 linear on this CPU"
)


def _float64_product(x: torch.Tensor, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``x W^T + b`` in float64 from the bf16-rounded weights, and ``|x| |W|^T + |b|`` (the sum's size)."""
    w, b, xd = linear.weight.detach().double(), linear.bias.detach().double(), x.double()
    return xd @ w.T + b, xd.abs() @ w.abs().T + b.abs()


@needs_bf16_kernel
@pytest.mark.parametrize("rows", [1, 5])  # a generation step, and a prompt
def test_packed_bf16_linear_equals_the_plain_product(rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 40).to(torch.bfloat16)
    layer = PackedLinear.from_linear(linear)
    assert layer.packed is not None and layer.dense is None  # one copy of the weight: the packed one
    assert torch.equal(layer.weight, linear.weight)  # unpacked exactly
    x = torch.randn(2, rows, 48).to(torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (2, rows, 40) and y.dtype == torch.bfloat16
    ref, size = _float64_product(x, linear)
    # Stated tolerance: float32 accumulation, the result and the bias add each rounded to bf16 once
    # (half a spacing, 2**-9, of the sum's size each): 2 bf16 spacings of the size.
    assert ((y.double() - ref).abs() <= 2 * 2.0**-8 * size).all()
    # The same numbers as F.linear's bf16 product (oneDNN computes that one too, reordering per call).
    assert (y.double() - F.linear(x, linear.weight, linear.bias).double()).abs().max() <= 2.0**-8 * size.max()


def test_without_the_kernel_layers_stay_plain_and_compute_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "has_packed_kernel", lambda dtype: False)
    torch.manual_seed(0)
    model = use_weights(GPTModel(TINY).eval(), "bf16")
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    layer = PackedLinear.from_linear(nn.Linear(16, 8).to(torch.bfloat16))  # built anyway: the plain weight
    assert layer.packed is None and layer.dense is not None
    x = torch.randn(3, 16).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.dense, layer.bias))


@needs_bf16_kernel
def test_bf16_model_is_packed_counts_its_bytes_and_generates_as_the_plain_bf16_model() -> None:
    torch.manual_seed(123)
    plain = GPTModel(TINY).eval().to(torch.bfloat16)
    model = use_weights(GPTModel(TINY).eval(), "bf16")
    model.load_state_dict(plain.state_dict())  # packed again from the plain weights
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.Linear | PackedLinear)]
    assert len(kinds) == 6 * TINY["n_layers"] + 1 and set(kinds) == {PackedLinear}
    assert step_read_bytes(model) == step_read_bytes(plain)  # the packed weights counted, once
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))
    idx = torch.tensor([[1, 2, 3]])
    n = 2 * TINY["context_length"]
    assert torch.equal(generate(model, idx, n, TINY["context_length"]), generate(plain, idx, n, TINY["context_length"]))


@needs_bf16_kernel
def test_packed_layer_moved_to_float32_unpacks_and_repacks() -> None:
    linear = nn.Linear(16, 8).to(torch.bfloat16)
    layer = PackedLinear.from_linear(linear).float()
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, linear.weight.float())
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.allclose(layer(x), F.linear(x, linear.weight.float(), linear.bias.float()), atol=1e-6)


@pytest.mark.parametrize("use_native", [True, False])  # gpt_lab's bf16 kernel, or its absence
@pytest.mark.parametrize("rows", [1, 5, 9])  # x (2, rows, 48): 2, 10 (<= NATIVE_ROWS) and 18 rows (oneDNN's)
def test_row_linear_bf16_product_against_float64(rows: int, use_native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = native.bf16_linear

    def counted(*args: object) -> torch.Tensor:
        calls.append(args[1].shape)
        return real(*args)

    monkeypatch.setattr(native, "bf16_linear", counted)
    if not use_native:
        monkeypatch.setattr(native, "bf16_kernel", lambda: None)
    elif native.bf16_kernel() is None:
        pytest.skip("the native kernels cannot be built here")
    torch.manual_seed(0)
    linear = nn.Linear(48, 40).to(torch.bfloat16)
    layer = RowLinear.from_linear(linear)
    assert layer.weight is linear.weight and layer.bias is linear.bias  # the same parameters, not copies
    x = torch.randn(2, rows, 48).to(torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
        one_row = layer(x[:1, -1:])  # the one-row product, whatever rows is
    native_rows = [x.shape] if 2 * rows <= packed.NATIVE_ROWS else []
    assert calls == ([*native_rows, (1, 1, 48)] if use_native else [])
    assert y.shape == (2, rows, 40) and y.dtype == torch.bfloat16
    ref, size = _float64_product(x, linear)
    # Stated tolerance: float32 accumulation, the result and the bias add each rounded to bf16 once
    # (half a spacing, 2**-9, of the sum's size each): 2 bf16 spacings of the size.
    assert ((y.double() - ref).abs() <= 2 * 2.0**-8 * size).all()
    assert ((one_row.double() - ref[:1, -1:]).abs() <= 2 * 2.0**-8 * size[:1, -1:]).all()
    assert torch._C._get_mkldnn_enabled()  # switched back on after the call


def test_row_linear_leaves_the_oneDNN_switch_on_when_the_product_fails() -> None:
    layer = RowLinear.from_linear(nn.Linear(16, 8).to(torch.bfloat16))
    with torch.no_grad(), pytest.raises(RuntimeError):
        layer(torch.randn(1, 15).to(torch.bfloat16))  # wrong width
    assert torch._C._get_mkldnn_enabled()


def test_bf16_model_holds_row_linears_counts_its_bytes_and_generates_as_the_plain_bf16_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(weights_module, "STREAMED_BYTES", 0)  # as for a model too large for the caches
    # RowLinear's own one-row products, not the fused native step that reads both models' weights alike
    # (tests/test_fused_step.py).
    monkeypatch.setattr(native, "step_kernel", lambda: None)
    torch.manual_seed(123)
    plain = GPTModel(TINY).eval().to(torch.bfloat16)
    model = use_weights(GPTModel(TINY).eval(), "bf16")
    model.load_state_dict(plain.state_dict())
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(kinds) == 6 * TINY["n_layers"] + 1 and set(kinds) == {RowLinear}
    assert step_read_bytes(model) == step_read_bytes(plain)
    assert model.state_dict().keys() == plain.state_dict().keys()
    idx = torch.tensor([[1, 2, 3]])
    n = 2 * TINY["context_length"]
    assert torch.equal(generate(model, idx, n, TINY["context_length"]), generate(plain, idx, n, TINY["context_length"]))


def test_a_tied_bf16_head_stays_tied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module, "STREAMED_BYTES", 0)
    model = use_weights(GPTModel({**TINY, "tie_weights": True}).eval(), "bf16")
    assert isinstance(model.out_head, RowLinear) and model.out_head.weight is model.tok_emb.weight


def test_bf16_chooses_the_kernel_by_the_models_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights that fit in the caches: oneDNN's prepacked layers; more than STREAMED_BYTES: RowLinear."""
    torch.manual_seed(0)
    d, v, n = TINY["emb_dim"], TINY["vocab_size"], TINY["n_layers"]
    assert weights_module.linear_bytes(GPTModel(TINY)) == 4 * (n * 12 * d * d + v * d)  # by hand, fp32
    expected = {PackedLinear} if packed.has_packed_kernel(torch.bfloat16) else {nn.Linear}
    small = use_weights(GPTModel(TINY).eval(), "bf16")
    assert {type(m) for m in small.modules() if isinstance(m, nn.Linear | PackedLinear)} == expected
    monkeypatch.setattr(weights_module, "STREAMED_BYTES", weights_module.linear_bytes(small))
    large = use_weights(GPTModel(TINY).eval(), "bf16")  # exactly at the threshold: streamed
    assert {type(m) for m in large.modules() if isinstance(m, nn.Linear)} == {RowLinear}


def test_fp32_weights_stored_transposed_keep_shape_values_and_tokens() -> None:
    torch.manual_seed(123)
    book = GPTModel(TINY).eval()
    model = GPTModel(TINY).eval()
    model.load_state_dict(book.state_dict())
    laid_out = transpose_weights_(model)
    # Per block the four attention projections (d -> d) and the feed-forward's first layer (d -> 4d);
    # its second (4d -> d) narrows and stays as it is; and the head (d -> vocab).
    assert laid_out == 5 * TINY["n_layers"] + 1
    assert model.trf_blocks[0].ff.layers[2].weight.is_contiguous()
    head = model.out_head.weight
    assert is_transposed(head) and head.shape == book.out_head.weight.shape
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), book.state_dict().values(), strict=True))
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    n = 2 * TINY["context_length"]  # past the window
    assert torch.equal(generate(model, idx, n, TINY["context_length"]), generate(book, idx, n, TINY["context_length"]))


def test_fp32_weights_keep_their_layout_where_the_native_kernel_reads_them() -> None:
    if native.f32_kernel() is None:
        pytest.skip("the native kernels cannot be built here")
    model = use_weights(GPTModel(TINY).eval(), "fp32")
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_tied_head_is_not_laid_out() -> None:
    model = GPTModel({**TINY, "tie_weights": True})
    transpose_weights_(model)
    assert model.out_head.weight.is_contiguous()  # it is the token embedding's table


@pytest.mark.parametrize("k", [2, 3])
def test_split_product_reads_a_transposed_weight_in_place(k: int) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(65, 24), torch.randn(65)
    stored = weight.t().contiguous().t()
    x = torch.randn(1, 1, 24)
    ref = (x.double() @ weight.double().T + bias.double()).float()
    assert torch.allclose(split_linear(x, stored, bias, k), ref, atol=1e-5)


def test_decoder_makes_no_head_copy_of_a_transposed_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the native float32 kernel (no C compiler), fp32 weights are stored transposed for MKL."""
    monkeypatch.setattr(native, "f32_kernel", lambda: None)
    torch.manual_seed(0)
    model = use_weights(GPTModel(TINY).eval(), "fp32")
    with Decoder(model, path="split") as decoder:
        assert decoder.head_chunks is None
    plain = GPTModel(TINY).eval()
    with Decoder(plain, path="split") as decoder:
        assert decoder.head_chunks is not None


def test_pack_skips_layers_named_and_subclasses() -> None:
    from gpt_lab.model.lora import LoRALinear

    model = GPTModel(TINY).to(torch.bfloat16)
    att = model.trf_blocks[0].att
    att.W_query = LoRALinear.from_linear(att.W_query, rank=2, alpha=2)
    count = pack_linears_(model, skip=[att.W_key])
    if not packed.has_packed_kernel(torch.bfloat16):
        assert count == 0
        return
    assert isinstance(att.W_query, LoRALinear) and type(att.W_key) is nn.Linear
    assert isinstance(att.W_value, PackedLinear)


def test_row_linears_skip_layers_named_and_subclasses() -> None:
    from gpt_lab.model.lora import LoRALinear

    model = GPTModel(TINY).to(torch.bfloat16)
    att = model.trf_blocks[0].att
    att.W_query = LoRALinear.from_linear(att.W_query, rank=2, alpha=2)
    row_linears_(model, skip=[att.W_key])
    assert isinstance(att.W_query, LoRALinear) and type(att.W_key) is nn.Linear
    assert isinstance(att.W_value, RowLinear)


def test_head_copy_is_kept_for_an_eval_model_and_rebuilt_when_its_weights_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpt_lab.generation import decoding

    monkeypatch.setattr(decoding, "MIN_WEIGHT", 0)  # the Decoder for this tiny model too
    monkeypatch.setattr(native, "f32_kernel", lambda: None)  # PyTorch's products: the head's copy
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    idx = torch.tensor([[1, 2, 3]])
    first = generate(model, idx, 4, TINY["context_length"])
    kept = decoding._HEAD_COPIES[model.out_head.weight][1]
    generate(model, idx, 4, TINY["context_length"])
    assert decoding._HEAD_COPIES[model.out_head.weight][1] is kept  # reused, not rebuilt
    with torch.no_grad():
        model.out_head.weight.mul_(-1)  # in place: the kept copy is stale
    flipped = generate(model, idx, 4, TINY["context_length"])
    assert decoding._HEAD_COPIES[model.out_head.weight][1] is not kept
    reference = GPTModel(TINY).eval()
    reference.load_state_dict(model.state_dict())
    assert torch.equal(flipped, generate(reference, idx, 4, TINY["context_length"], use_cache=False))
    assert not torch.equal(flipped, first)


def test_no_head_copy_is_kept_for_a_model_in_training_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt_lab.generation import decoding

    monkeypatch.setattr(decoding, "MIN_WEIGHT", 0)  # the Decoder for this tiny model too

    model = GPTModel(TINY).train()
    generate(model, torch.tensor([[1, 2]]), 2, TINY["context_length"])
    assert decoding._HEAD_COPIES.get(model.out_head.weight) is None and model.training


def test_packed_layer_moved_off_the_cpu_holds_a_plain_weight() -> None:
    """A move to another device (``task=evaluate`` on a GPU calls ``use_weights`` first, then ``.to``):
    the layer unpacks and keeps the plain weight there (here the meta device, which any machine has)."""
    layer = PackedLinear.from_linear(nn.Linear(16, 8).to(torch.bfloat16)).to("meta")
    assert layer.packed is None and layer.dense is not None and layer.weight.is_meta and layer.bias.is_meta


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_model_moved_to_the_gpu_generates_as_a_plain_bf16_model_there() -> None:
    torch.manual_seed(123)
    plain = GPTModel(TINY).eval().to(torch.bfloat16).cuda()
    model = use_weights(GPTModel(TINY).eval(), "bf16").cuda()
    model.load_state_dict(plain.state_dict())
    idx = torch.tensor([[1, 2, 3]], device="cuda")
    assert torch.equal(generate(model, idx, 8, TINY["context_length"]), generate(plain, idx, 8, TINY["context_length"]))
