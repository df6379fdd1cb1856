"""Chapter 4's model: the book's golden output, sizes, and the math against the explicit formulas."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from configs import TINY
from omegaconf import OmegaConf

from gpt_lab.config import GPT2_SIZES
from gpt_lab.generation.sampling import generate, generate_text_simple
from gpt_lab.model.gpt import (
    GELU,
    DummyGPTModel,
    FeedForward,
    GPTModel,
    LayerNorm,
    MultiHeadAttention,
    attention_written_out,
)
from gpt_lab.model.stats import count_params, count_params_tied, model_report, size_mb
from gpt_lab.tokenizer import get_tokenizer
from scripts.book_reference import GPT_CONFIG_124M, RefGPT, gelu, layer_norm

EXACT = {**TINY, "drop_rate": 0.0, "qkv_bias": True}  # deterministic, and every parameter present

# Printed by the book's own code (chapter 4, seed 123).
GOLDEN_IDS = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]
GOLDEN_TEXT = "Hello, I am Featureiman Byeswickattribute argue logger Normandy Compton analogous"
BOOK_SIZES = {  # exercise 4.2: total, with the head tied, MB
    "gpt2_small": (163_009_536, 124_412_160, 621.83),
    "gpt2_medium": (406_212_608, 354_749_440, 1549.58),
    "gpt2_large": (838_220_800, 773_891_840, 3197.56),
    "gpt2_xl": (1_637_792_000, 1_557_380_800, 6247.68),
}


def test_golden_generation_matches_book(book_model: GPTModel) -> None:
    tok = get_tokenizer()
    idx = torch.tensor([tok.encode("Hello, I am")])
    assert idx.tolist() == [GOLDEN_IDS[:4]]
    simple = generate_text_simple(book_model, idx, max_new_tokens=10, context_size=1024)
    cached = generate(book_model, idx, max_new_tokens=10, context_size=1024)
    assert simple[0].tolist() == GOLDEN_IDS
    assert cached[0].tolist() == GOLDEN_IDS
    assert tok.decode(simple[0].tolist()) == GOLDEN_TEXT
    six = generate(book_model, idx, max_new_tokens=6, context_size=1024)
    assert tok.decode(six[0].tolist()) == "Hello, I am Featureiman Byeswickattribute argue"


@pytest.mark.parametrize("name", BOOK_SIZES)
def test_sizes_match_exercise_4_2(name: str) -> None:
    """The package's GPT-2 size table gives the book's parameter counts."""
    total, tied, mb = BOOK_SIZES[name]
    cfg = {**GPT_CONFIG_124M, **GPT2_SIZES[name]}
    with torch.device("meta"):
        model = GPTModel(cfg)
        tied_model = GPTModel({**cfg, "tie_weights": True})
    assert count_params(model) == total
    assert count_params_tied(model) == tied
    assert round(size_mb(total), 2) == mb
    # A tied model counts the shared weight once.
    assert count_params(tied_model) == tied
    assert count_params_tied(tied_model) == tied
    report = model_report(model)
    assert report["size_mb_bf16"] == pytest.approx(mb / 2, abs=0.01)


def test_block_counts_match_exercise_4_1() -> None:
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    block = model.trf_blocks[0]
    assert sum(p.numel() for p in block.ff.parameters()) == 4_722_432
    assert sum(p.numel() for p in block.att.parameters()) == 2_360_064


def test_parameter_names_are_the_books() -> None:
    names = set(GPTModel(EXACT).state_dict())
    expected = {"tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift", "out_head.weight"}
    for i in range(EXACT["n_layers"]):
        p = f"trf_blocks.{i}."
        for lin in ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2"):
            expected |= {p + lin + ".weight", p + lin + ".bias"}
        expected |= {p + n + s for n in ("norm1", "norm2") for s in (".scale", ".shift")}
    assert names == expected


def test_logits_equal_explicit_formulas() -> None:
    torch.manual_seed(0)
    ours = GPTModel(EXACT).eval()
    ref = RefGPT(EXACT).eval()
    # Spread the LayerNorm parameters so they matter.
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.load_state_dict(ours.state_dict(), strict=False)  # ref keeps its own mask buffers
    idx = torch.randint(0, EXACT["vocab_size"], (3, EXACT["context_length"]))
    torch.testing.assert_close(ours(idx), ref(idx), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(idx[:, :5]), ref(idx[:, :5]), rtol=1e-5, atol=1e-5)


def test_layernorm_and_gelu_match_formulas() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 5, 16) * 3 + 1
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.scale.normal_()
        ln.shift.normal_()
    torch.testing.assert_close(ln(x), layer_norm(x, ln.scale, ln.shift))
    out = LayerNorm(16)(x)  # fresh: zero mean, unit biased variance
    torch.testing.assert_close(out.mean(-1), torch.zeros(4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(4, 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(GELU()(x), gelu(x))


def test_feedforward_expands_four_times() -> None:
    ff = FeedForward({"emb_dim": 16})
    assert ff.layers[0].out_features == 64 and ff.layers[2].in_features == 64
    assert ff(torch.randn(2, 3, 16)).shape == (2, 3, 16)


def test_attention_is_causal() -> None:
    torch.manual_seed(2)
    att = MultiHeadAttention(16, 16, context_length=8, dropout=0.0, num_heads=4).eval()
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] += 1.0  # change only the future of positions 0..3
    torch.testing.assert_close(att(x)[:, :4], att(y)[:, :4])


def _chapter3_attention(q, k, v, causal, keep=None):  # type: ignore[no-untyped-def]
    """Chapter 3's attention written out: scores / sqrt(d_k), the causal mask, softmax, dropout, values."""
    t, s = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / k.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return (weights if keep is None else weights * keep) @ v


@pytest.mark.parametrize(("t", "s", "causal"), [(5, 5, True), (5, 5, False), (3, 7, True)])
def test_written_out_attention_is_chapter_3s_with_its_gradients(t: int, s: int, causal: bool) -> None:
    torch.manual_seed(4)
    q = torch.randn(2, 3, t, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 3, s, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    keep = (torch.rand(2, 3, t, s) > 0.3).double() / 0.7
    g = torch.randn(2, 3, t, 4, dtype=torch.float64)
    ours = attention_written_out(q, k, v, causal, 0.3, dropout=lambda w, p: w * keep.view(w.shape))
    ours.backward(g)
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    expected = _chapter3_attention(q, k, v, causal, keep)
    expected.backward(g)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    for got, x in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(got, x.grad, rtol=1e-12, atol=1e-12)


def test_bf16_training_attention_is_written_out_up_to_its_length_and_fused_beyond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gpt_lab.model.attention as gpt

    calls: list[int] = []
    monkeypatch.setattr(gpt, "attention_written_out", lambda q, *a, **kw: calls.append(q.shape[-2]) or q)
    torch.manual_seed(5)
    att = MultiHeadAttention(16, 16, context_length=512, dropout=0.0, num_heads=4)
    short, long = torch.randn(1, 8, 16), torch.randn(1, gpt.EXPLICIT_ATTENTION_MAX_TOKENS + 1, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        att(short)
        att(long)  # fused kernel: longer than the written-out path pays for
        with torch.no_grad():
            att(short)  # inference: fused kernel
    att(short)  # float32: fused kernel
    assert calls == [8]


def test_bf16_training_attention_is_close_to_the_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import gpt_lab.model.attention as gpt

    torch.manual_seed(6)
    att = MultiHeadAttention(16, 16, context_length=16, dropout=0.0, num_heads=4)
    x = torch.randn(2, 12, 16)
    outputs = []
    for limit in (gpt.EXPLICIT_ATTENTION_MAX_TOKENS, 0):  # written out, then SDPA
        monkeypatch.setattr(gpt, "EXPLICIT_ATTENTION_MAX_TOKENS", limit)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = att(x)
        out.float().sum().backward()
        outputs.append((out.float(), att.W_query.weight.grad.clone()))
        att.zero_grad()
    (written, g_written), (fused, g_fused) = outputs
    torch.testing.assert_close(written, fused, rtol=0.02, atol=0.02)  # bf16's rounding
    torch.testing.assert_close(g_written, g_fused, rtol=0.05, atol=0.05)


def test_attention_dropout_only_in_training() -> None:
    cfg = {**EXACT, "drop_rate": 0.0, "drop_rate_attn": 0.5}
    torch.manual_seed(3)
    model = GPTModel(cfg)
    assert model.drop_emb.p == 0.0 and model.trf_blocks[0].drop_shortcut.p == 0.0
    assert model.trf_blocks[0].att.dropout.p == 0.5
    idx = torch.randint(0, 64, (2, 8))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


def test_separate_dropout_rates_default_to_drop_rate() -> None:
    model = GPTModel({**EXACT, "drop_rate": 0.2, "drop_rate_shortcut": 0.3})
    assert model.drop_emb.p == 0.2
    assert model.trf_blocks[1].att.dropout.p == 0.2
    assert model.trf_blocks[1].drop_shortcut.p == 0.3


def test_tied_weights_share_storage() -> None:
    model = GPTModel({**EXACT, "tie_weights": True})
    assert model.out_head.weight is model.tok_emb.weight
    assert model.out_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    untied = count_params(GPTModel(EXACT))
    assert count_params(model) == untied - EXACT["vocab_size"] * EXACT["emb_dim"]


def test_tying_keeps_the_books_initialisation() -> None:
    torch.manual_seed(5)
    untied = GPTModel(EXACT)
    torch.manual_seed(5)
    tied = GPTModel({**EXACT, "tie_weights": True})
    torch.testing.assert_close(tied.trf_blocks[1].ff.layers[2].weight, untied.trf_blocks[1].ff.layers[2].weight)
    torch.testing.assert_close(tied.tok_emb.weight, untied.tok_emb.weight)


def test_config_forms_build_the_same_model() -> None:
    @dataclasses.dataclass
    class Cfg:
        vocab_size: int = 64
        context_length: int = 8
        emb_dim: int = 16
        n_heads: int = 4
        n_layers: int = 2
        drop_rate: float = 0.0
        qkv_bias: bool = True

    states = []
    for cfg in (EXACT, OmegaConf.create(EXACT), Cfg()):
        torch.manual_seed(7)
        states.append(GPTModel(cfg).state_dict())
    for state in states[1:]:
        for key, value in states[0].items():
            torch.testing.assert_close(state[key], value)


def test_sequence_longer_than_context_is_a_clear_error() -> None:
    model = GPTModel(EXACT)
    with pytest.raises(ValueError, match=r"9 tokens is longer than model.context_length=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_heads_must_divide_emb_dim() -> None:
    with pytest.raises(ValueError, match=r"model.n_heads=5 must divide model.emb_dim=16"):
        GPTModel({**EXACT, "n_heads": 5})


def test_missing_book_key_is_named() -> None:
    cfg = dict(EXACT)
    del cfg["qkv_bias"]
    with pytest.raises(KeyError, match="qkv_bias"):
        GPTModel(cfg)


def test_dummy_model_shapes() -> None:
    torch.manual_seed(123)
    model = DummyGPTModel(EXACT)
    assert model(torch.randint(0, 64, (2, 4))).shape == (2, 4, 64)
