"""generation.weights=fp32|bf16|int8 (issue 28): the int8 layer against a float64 reference, greedy
generation with and without the cache, the model's dtypes, and the bad inputs refused before any
weight is read."""

from __future__ import annotations

import pytest
import torch
from configs import TINY, TINY_RUN
from torch import nn

from gpt_lab.config import validate_config
from gpt_lab.errors import ConfigError
from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import use_weights
from gpt_lab.model import native, quantized
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.quantized import Int8Linear
from gpt_lab.tasks import sample

BF16_EPS = 2.0**-8  # bfloat16's spacing relative to a value: 8 significant bits


def _dequantized_reference(linear: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The test's own int8 quantization of ``linear`` in float64 (per output row, max |w| -> 127) and
    ``x @ W_deq^T + b`` in float64, with ``sum |x| |W_deq|`` (the size of what the sum adds)."""
    w = linear.weight.detach().double()
    scales = w.abs().amax(dim=1) / 127
    w_deq = torch.round(w / scales[:, None]) * scales[:, None]
    xd = x.double()
    bias = linear.bias.detach().double()
    return xd @ w_deq.T + bias, xd.abs() @ w_deq.abs().T + bias.abs()


def _use_kernel(kind: str, monkeypatch) -> None:
    """Make ``Int8Linear`` pick ``kind``: the native kernel, FBGEMM, or _weight_int8pack_mm (neither of the others)."""
    if kind == "native" and native.int8_kernel() is None:
        pytest.skip("the native int8 kernel did not build here (no C compiler?)")
    if kind == "fbgemm" and not quantized.has_fbgemm():
        pytest.skip("no FBGEMM in this PyTorch build")
    if kind != "native":
        monkeypatch.setattr(native, "int8_kernel", lambda: None)
    if kind == "int8pack":
        monkeypatch.setattr(quantized, "has_fbgemm", lambda: False)


@pytest.fixture(params=["native", "fbgemm", "int8pack"])
def int8_kernel(request, monkeypatch) -> str:
    """Each int8 kernel in turn: the native one, FBGEMM (as without a C compiler) and _weight_int8pack_mm
    (as without FBGEMM either)."""
    _use_kernel(request.param, monkeypatch)
    return request.param


@pytest.mark.parametrize("n_in", [64, 24])  # 24: not a multiple of _weight_int8pack_mm's 16 (the dequantized path)
def test_int8_linear_matches_a_float64_dequantized_reference(n_in: int, int8_kernel: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(n_in, 48)
    layer = Int8Linear.from_linear(linear)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (48, n_in)
    assert (layer.blocked is not None) == (int8_kernel == "native")
    assert (layer.packed is not None) == (int8_kernel == "fbgemm")
    # Per output row, the largest weight maps to +-127 (the row's own scale, not one for the tensor).
    assert (layer.weight.abs().amax(dim=1) == 127).all()
    x = torch.randn(2, 3, n_in)
    ref, size = _dequantized_reference(linear, x)
    y = layer(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.float32
    err = (y.double() - ref).abs()
    if int8_kernel == "native":
        # Exact int8 -> float32 weights, float32 products and sums: 16 lanes each summing ceil(n_in / 16)
        # products, a 4-level tree over the lanes, the scale (float32, the reference's in float64) and
        # the bias: one float32 rounding each of the sum's size.
        bound = (-(-n_in // 16) + 8) * 2.0**-24 * size
    elif int8_kernel == "fbgemm":
        # Stated tolerance: each input element is written to 1/2048 of its row's largest magnitude (two
        # digits, step <= max |x_row| / 16, the low digit to half of 1/64 of it); the weights' side is
        # exact (integer sums), float32 roundings aside (4 spacings of the sum's size).
        row_max = x.double().abs().amax(dim=-1, keepdim=True)
        w_abs = layer.weight.double().abs() * layer.scales.double()[:, None]
        bound = row_max / 2048 * w_abs.sum(dim=1) + 4 * 2.0**-24 * size
    else:
        # x and the scales rounded to bf16 (half a spacing each), the result and the bias sum once each.
        bound = 2 * BF16_EPS * size
    assert (err <= bound).all(), float((err / bound).max())
    # And the reference is a real bound: the product without the per-row scales is far off.
    assert ((layer.weight.double() @ x.double().reshape(-1, n_in).T).T - ref.reshape(-1, 48)).abs().max() > 1


@pytest.mark.parametrize("kind", ["native", "fbgemm"])
def test_int8_rows_do_not_depend_on_each_other(kind: str, monkeypatch) -> None:
    """What makes a cached step (one row) equal the whole sequence's forward: each row's result from
    that row alone, bit for bit, however many rows one call multiplies (the native kernel takes rows
    three at a time and one at a time, and splits outputs over threads: 300 outputs are 37.5 blocks)."""
    _use_kernel(kind, monkeypatch)
    torch.manual_seed(2)
    layer = Int8Linear.from_linear(nn.Linear(70, 300))  # 70 inputs: 4 full chunks of 16 and a partial one
    x = torch.randn(7, 70) * torch.logspace(-3, 3, 7)[:, None]  # rows of very different sizes
    x[3] = 0  # an all-zero row
    x[5] = torch.randn(70).sign() * 6e-38  # and one near the smallest normal float (FBGEMM's step is 2**-126)
    together = layer(x)
    assert torch.isfinite(together).all()
    assert torch.equal(together[3], layer.bias.detach())
    for i in range(7):
        assert torch.equal(layer(x[i : i + 1]), together[i : i + 1])
    # Query, key and value from one set of digits: the same numbers as each layer alone.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(layer(x), together)
    finally:
        torch.set_num_threads(threads)
    others = [Int8Linear.from_linear(nn.Linear(70, 32, bias=False)) for _ in range(2)]
    grouped = Int8Linear.forward_group([layer, *others], x)
    assert all(torch.equal(g, m(x)) for g, m in zip(grouped, [layer, *others], strict=True))


def test_int8_linear_state_dict_holds_the_int8_weight(int8_kernel: str) -> None:
    torch.manual_seed(3)
    linear = nn.Linear(32, 16)
    layer = Int8Linear.from_linear(linear)
    state = layer.state_dict()
    # The test's own quantization: per output row, max |w| -> 127.
    scales = linear.weight.detach().abs().amax(dim=1) / 127
    q = torch.round(linear.weight.detach() / scales[:, None]).to(torch.int8)
    assert state["weight"].dtype == torch.int8 and torch.equal(state["weight"], q)
    assert torch.equal(state["scales"], scales)
    fresh = Int8Linear(torch.zeros_like(q), torch.ones_like(scales), torch.zeros(16))
    fresh.load_state_dict(state)
    x = torch.randn(3, 32)
    assert torch.equal(fresh(x), layer(x))


def test_int8_model_logits_match_a_float64_dequantized_model() -> None:
    torch.manual_seed(1)
    fp32 = GPTModel(TINY).eval()
    reference = GPTModel(TINY).double().eval()
    reference.load_state_dict(fp32.state_dict())
    # The reference: the test's own per-row quantization of every Linear (float32 scales), everything
    # else the model's own values, computed in float64.
    with torch.no_grad():
        for module in reference.modules():
            if type(module) is nn.Linear:
                w = module.weight
                scales = (w.abs().amax(dim=1, keepdim=True) / 127).float().double()
                w.copy_(torch.round(w / scales) * scales)
    int8 = use_weights(fp32, "int8")
    idx = torch.randint(0, TINY["vocab_size"], (2, TINY["context_length"]))
    with torch.no_grad():
        got, want = int8(idx).double(), reference(idx)
    # Stated tolerance: 0.2 % of the largest logit (activations written to 11-12 bits in every product,
    # float32 elsewhere, through two blocks; 0.03 % measured with FBGEMM, 0.5 % with bf16 activations).
    assert (got - want).abs().max() <= 0.002 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("cfg", [TINY, {**TINY, "context_length": 64, "emb_dim": 32}], ids=["slides", "fits"])
def test_greedy_generation_with_and_without_cache_is_identical(weights: str, cfg: dict) -> None:
    torch.manual_seed(123)
    model = use_weights(GPTModel(cfg), weights)
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    n = 2 * cfg["context_length"]  # past the window: the cached loop slides it as the book's does
    with_cache = generate(model, idx, n, cfg["context_length"])
    assert torch.equal(with_cache, generate(model, idx, n, cfg["context_length"], use_cache=False))


def test_weights_choice_sets_each_layers_dtype_and_the_cache() -> None:
    torch.manual_seed(123)
    bf16 = use_weights(GPTModel(TINY), "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    int8 = use_weights(GPTModel(TINY), "int8")
    kinds = {name: type(m) for name, m in int8.named_modules() if isinstance(m, nn.Linear | Int8Linear)}
    # 4 attention + 2 feed-forward Linears per block, and the output head: all int8.
    assert len(kinds) == 6 * TINY["n_layers"] + 1 and set(kinds.values()) == {Int8Linear}
    # int8 weights with float32 activations: the embeddings, norms and the key/value cache stay float32.
    assert int8.tok_emb.weight.dtype == torch.float32 and int8.final_norm.scale.dtype == torch.float32
    assert {t.dtype for layer in int8.new_kv_cache(1).layers for t in layer.tensors()} == {torch.float32}
    assert {t.dtype for layer in bf16.new_kv_cache(1).layers for t in layer.tensors()} == {torch.bfloat16}
    fp32_cache = use_weights(GPTModel(TINY), "fp32").new_kv_cache(1)
    assert {t.dtype for layer in fp32_cache.layers for t in layer.tensors()} == {torch.float32}


def test_int8_leaves_lora_layers_alone() -> None:
    from gpt_lab.model.lora import LoRALinear

    model = GPTModel(TINY)
    model.trf_blocks[0].att.W_query = LoRALinear.from_linear(model.trf_blocks[0].att.W_query, rank=2, alpha=2)
    use_weights(model, "int8")
    assert isinstance(model.trf_blocks[0].att.W_query, LoRALinear)
    assert isinstance(model.trf_blocks[0].att.W_key, Int8Linear)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["generation.weights=int4"], "generation.weights=int4 is not a choice; choose one of fp32, bf16, int8"),
        (["task=train", "generation.weights=int8"], "generation.weights=int8 is for tasks that only read"),
        (["task=train", "generation.weights=bf16"], "task=train trains in fp32, or in bf16 through trainer=cpu_bf16"),
    ],
)
def test_bad_weights_settings_are_refused_by_the_schema(compose_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config("model=tiny", *overrides))


def test_int8_without_a_kernel_is_refused_before_the_weights_are_read(compose_config, monkeypatch) -> None:
    monkeypatch.setattr(quantized.torch._C, "_dispatch_has_kernel_for_dispatch_key", lambda op, key: False)

    def build_model(*args: object) -> None:
        raise AssertionError("the model was built before the device check")

    monkeypatch.setattr(sample, "build_model", build_model)
    cfg = validate_config(compose_config("model=tiny", "generation.weights=int8", "logger=none"))
    with pytest.raises(
        ConfigError, match=r"generation.weights=int8 needs .* on the cpu device .* generation.weights=bf16"
    ):
        sample.run(cfg)


def test_cli_unknown_weights_exit_2(run_cli) -> None:
    proc = run_cli("model=tiny", "generation.weights=fp16", "hydra.run.dir=run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "generation.weights=fp16 is not a choice" in proc.stderr


def test_step_read_bytes_counts_what_a_generation_step_reads() -> None:
    """The bytes behind the bench's bandwidth limit, against a count by hand (TINY: untied, no qkv bias)."""
    from gpt_lab.model.stats import step_read_bytes

    d, v, n = TINY["emb_dim"], TINY["vocab_size"], TINY["n_layers"]
    linear = n * 12 * d * d + v * d  # W_query, W_key, W_value, out_proj, the feed-forward's two; the head
    rest = n * (6 * d + 4 * d) + 2 * d + 2 * d  # biases and norms per block, final norm, one row of each embedding
    scales = n * (3 * d + d + 4 * d + d) + v  # one per output feature of every Linear
    assert step_read_bytes(GPTModel(TINY)) == 4 * (linear + rest)
    assert step_read_bytes(use_weights(GPTModel(TINY), "bf16")) == 2 * (linear + rest)
    assert step_read_bytes(use_weights(GPTModel(TINY), "int8")) == linear + 4 * (rest + scales)


def test_evaluate_reads_the_chosen_weights(compose_config, tmp_path) -> None:
    from gpt_lab.tasks import evaluate

    (tmp_path / "text.txt").write_text("Every effort moves you forward, one small step at a time. " * 6)

    def run(weights: str) -> dict:
        overrides = ("task=evaluate", "data.path=text.txt", "max_new_tokens=2", "logger=none", *TINY_RUN)
        return evaluate.run(validate_config(compose_config(*overrides, f"generation.weights={weights}")))

    fp32, int8 = run("fp32"), run("int8")
    assert int8["generation_weights"] == "int8" and int8["total_params"] == fp32["total_params"]
    assert int8["loss"] != fp32["loss"]  # other weights were read...
    assert abs(int8["loss"] / fp32["loss"] - 1) < 0.01  # ...holding nearly the same model


def test_int8_on_a_gpu_run_is_refused_before_the_weights_are_read(compose_config, monkeypatch) -> None:
    from gpt_lab.tasks import evaluate

    def build_model(*args: object) -> None:
        raise AssertionError("the model was built before the device check")

    monkeypatch.setattr(evaluate, "build_model", build_model)
    monkeypatch.setattr(evaluate, "_device", lambda cfg: torch.device("cuda"))  # as trainer=gpu with CUDA would
    overrides = ("task=evaluate", "data.path=gpt_lab:the-verdict.txt", *TINY_RUN, "generation.weights=int8")
    with pytest.raises(ConfigError, match="on the cuda device this run would use"):
        evaluate.run(validate_config(compose_config(*overrides)))


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("name", ["sliding_gqa_rope", "mla", "moe", "swiglu_rmsnorm_qknorm", "deltanet_hybrid"])
def test_lab_variants_generate_the_same_with_and_without_cache(weights: str, name: str) -> None:
    """The architecture lab's parts hold bf16 / int8 weights too (swiglu's 24 inputs: the layer's
    dequantized path), and their caches follow the activation dtype."""
    from test_arch_lab import BASE, VARIANTS

    torch.manual_seed(0)
    model = use_weights(GPTModel({**BASE, **VARIANTS[name]}).eval(), weights)
    prompt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 12, BASE["context_length"])
    assert torch.equal(cached, generate(model, prompt, 12, BASE["context_length"], use_cache=False))
    dtypes = {t.dtype for layer in model.new_kv_cache(1).layers for t in layer.tensors()}
    # A DeltaNet layer keeps its recurrent state in float32 whatever the activations (the lab's choice);
    # int8's activations are float32.
    if weights == "int8":
        assert dtypes == {torch.float32}
    else:
        assert dtypes == ({torch.bfloat16, torch.float32} if name.startswith("deltanet") else {torch.bfloat16})


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_mla_steps_stay_absorbed_under_every_weights_choice(weights: str) -> None:
    """A cached MLA step folds the up-projections into the query and the output (attention_decode.py),
    reading their weights as matrices: they must stay float ``nn.Linear`` layers. Quantized, the step
    fell back to up-projecting the whole cached latent every token (40x slower at 4,096 positions)."""
    from test_arch_lab import BASE, VARIANTS

    from gpt_lab.model.attention import MultiHeadLatentAttention

    torch.manual_seed(0)
    model = use_weights(GPTModel({**BASE, **VARIANTS["mla"]}).eval(), weights)
    layers = [m for m in model.modules() if isinstance(m, MultiHeadLatentAttention)]
    assert layers and all(type(m.W_UK) is nn.Linear and type(m.W_UV) is nn.Linear for m in layers)
    if weights == "int8":  # everything else is quantized
        assert all(isinstance(m.W_DKV, Int8Linear) and isinstance(m.W_query, Int8Linear) for m in layers)
    calls = []
    for m in layers:  # the up-projections are never called during a cached step
        m.W_UK.register_forward_hook(lambda *a: calls.append("W_UK"))
        m.W_UV.register_forward_hook(lambda *a: calls.append("W_UV"))
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)  # the prompt: keys and values built
        calls.clear()
        model(torch.tensor([[4]]), kv_cache=cache)  # one step
    assert calls == []
