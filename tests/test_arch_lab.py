"""The architecture lab's parts (issue 25): each against a second computation written out here, the
cache of every variant against generation without it, and parameter counts against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_lab.config.architecture import layer_kinds, parse_sliding_pattern
from gpt_lab.generation.sampling import generate
from gpt_lab.model.deltanet import chunked_gated_delta, recurrent_gated_delta
from gpt_lab.model.feedforward import MoEFeedForward
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.norms import RMSNorm
from gpt_lab.model.rope import apply_rope, rope_inv_freq

BASE = {"vocab_size": 64, "context_length": 32, "emb_dim": 16, "n_heads": 4, "n_layers": 3, "drop_rate": 0.0}
BASE = {**BASE, "qkv_bias": False}
WINDOW = 5
LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
VARIANTS = {
    "gqa": {"attention": "gqa", "n_kv_heads": 2},
    "mla": {"attention": "mla", "latent_dim": 8},
    "deltanet": {"attention": "deltanet", "full_attention_every": 0},
    "deltanet_hybrid": {"attention": "deltanet", "full_attention_every": 2},
    "sliding": {"window": "sliding", "sliding_window": WINDOW, "sliding_pattern": "2:1"},
    "sliding_gqa_rope": {"attention": "gqa", "n_kv_heads": 1, "window": "sliding", "sliding_window": WINDOW,
                         "sliding_pattern": None, "pos_emb": "rope"},
    "swiglu_rmsnorm_qknorm": {"ffn": "swiglu", "hidden_dim": 24, "norm": "rmsnorm", "qk_norm": True},
    "moe": {"ffn": "moe", "num_experts": 4, "experts_per_token": 2, "moe_hidden_dim": 12},
    "rope_llama3_head_dim": {"pos_emb": "rope", "head_dim": 6,
                             "rope_scaling": {**LLAMA3, "original_context_length": 16}},
    "mla_rope_moe": {"attention": "mla", "latent_dim": 8, "pos_emb": "rope", "ffn": "moe", "num_experts": 3,
                     "experts_per_token": 3},
}  # fmt: skip


def _model(variant: dict, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel({**BASE, **variant}).eval()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_generation_equals_uncached(name: str) -> None:
    """Greedy tokens through each variant's cache equal the book's recompute-everything loop; the prompt
    (7 tokens) and the generation (20) are longer than the sliding window (5)."""
    model = _model(VARIANTS[name])
    prompt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 20, BASE["context_length"], use_cache=True)
    plain = generate(model, prompt, 20, BASE["context_length"], use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("name", ["sliding", "sliding_gqa_rope", "mla", "deltanet_hybrid", "moe"])
def test_cache_fed_in_chunks_gives_the_full_forwards_logits(name: str) -> None:
    """Chunks of several tokens after the first (a ring buffer's old entries and new ones together)."""
    model = _model(VARIANTS[name])
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2))
    cache = model.new_kv_cache(2)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, a:b], kv_cache=cache) for a, b in ((0, 3), (3, 11), (11, 12), (12, 20))]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_cache_holds_what_each_variant_keeps() -> None:
    """Bytes of the cache from the written-out shapes: GQA its key/value heads, MLA its latent, a sliding
    layer its window whatever max_len, DeltaNet a head_dim x head_dim state per head; on the meta device too."""
    b, n, hd, f32 = 2, 16, 4, 4
    expected = {
        "mha": 3 * 2 * b * 4 * n * hd * f32,
        "gqa": 3 * 2 * b * 2 * n * hd * f32,
        "mla": 3 * b * n * 8 * f32,
        "deltanet": 3 * b * 4 * hd * hd * f32,
        "deltanet_hybrid": (2 * b * 4 * hd * hd + 2 * b * 4 * n * hd) * f32,  # layer 1 of 0..2 is full
        "sliding": (2 * 2 * b * 4 * WINDOW * hd + 2 * b * 4 * n * hd) * f32,  # "2:1": layers 0, 1 slide
    }
    for name, nbytes in expected.items():
        model = _model(VARIANTS.get(name, {}))
        assert model.new_kv_cache(b, n).nbytes == nbytes, name
        assert model.new_kv_cache(b, n, device="meta").nbytes == nbytes, name
    sliding = _model({**VARIANTS["sliding"], "sliding_pattern": None})
    assert sliding.new_kv_cache(1, 8).nbytes == sliding.new_kv_cache(1, 32).nbytes  # memory flat in length
    assert _model({}).new_kv_cache(1, 8, dtype=torch.bfloat16).nbytes == 3 * 2 * 4 * 8 * hd * 2


def _count(v: dict) -> int:
    """Parameters written out per part (vocab V, context C, width E, heads H of width d, L layers)."""
    V, C, E, H, L = 64, 32, 16, 4, 3
    d = v.get("head_dim") or E // H
    norm = E if v.get("norm") == "rmsnorm" else 2 * E
    attention = {
        "mha": E * H * d * 3 + H * d * E + E,
        "gqa": E * H * d + 2 * E * v.get("n_kv_heads", H) * d + H * d * E + E,
        "mla": E * H * d + E * v.get("latent_dim", 0) + 2 * v.get("latent_dim", 0) * H * d + H * d * E + E,
    }[v.get("attention", "mha").replace("deltanet", "mha")] + (2 * d if v.get("qk_norm") else 0)
    deltanet = 4 * E * H * d + 2 * E * H + 2 * H + d + H * d * E + E  # q k v gate, beta alpha, dt A, norm, out
    h = v.get("hidden_dim") or 4 * E
    ffn = {
        "gelu": E * h + h + h * E + E,
        "swiglu": 3 * E * h,
        "moe": E * v.get("num_experts", 0) + v.get("num_experts", 0) * 3 * E * (v.get("moe_hidden_dim") or h),
    }[v.get("ffn", "gelu")]
    kinds = ["full"] * L
    if v.get("attention") == "deltanet":
        every = v["full_attention_every"]
        kinds = ["full" if every and (i + 1) % every == 0 else "deltanet" for i in range(L)]
    blocks = sum((deltanet if k == "deltanet" else attention) + ffn + 2 * norm for k in kinds)
    positions = C * E if v.get("pos_emb", "learned") == "learned" else 0
    return V * E + positions + blocks + norm + E * V


@pytest.mark.parametrize("name", ["mha", *sorted(VARIANTS)])
def test_parameter_count_matches_the_formula(name: str) -> None:
    model = _model(VARIANTS.get(name, {}))
    assert sum(p.numel() for p in model.parameters()) == _count(VARIANTS.get(name, {}))


def test_parameter_names_follow_the_spec() -> None:
    names = set(_model({**VARIANTS["mla_rope_moe"], "norm": "rmsnorm", "qk_norm": True}).state_dict())
    assert {"trf_blocks.0.att.W_DKV.weight", "trf_blocks.0.att.W_UK.weight", "trf_blocks.0.att.W_UV.weight"} <= names
    assert {"trf_blocks.0.ff.gate.weight", "trf_blocks.0.ff.fc1.2.weight", "trf_blocks.0.ff.fc3.0.weight"} <= names
    assert {"trf_blocks.0.att.q_norm.weight", "trf_blocks.0.norm1.weight", "final_norm.weight"} <= names
    assert not any(n.startswith(("pos_emb", "rope")) for n in names)  # RoPE tables are not saved
    dn = set(_model(VARIANTS["deltanet"]).state_dict())
    assert {f"trf_blocks.0.att.{p}" for p in ("W_gate.weight", "W_beta.weight", "W_alpha.weight", "A_log")} <= dn


def test_layer_layouts() -> None:
    slides = parse_sliding_pattern("5:1", 32)
    assert slides.count(True) == 27 and [i for i, s in enumerate(slides) if not s] == [5, 11, 17, 23, 29]
    assert parse_sliding_pattern([0, 3], 4) == [False, True, True, False]
    assert (
        layer_kinds({"n_layers": 8, "attention": "deltanet", "full_attention_every": 4})
        == (["deltanet"] * 3 + ["full"]) * 2
    )


def test_sliding_gqa_attention_matches_the_written_out_formula() -> None:
    """One sliding GQA block's attention against softmax over each query's last WINDOW keys, its head
    group's shared key/value head, written out with loops."""
    model = _model({**VARIANTS["sliding_gqa_rope"], "n_kv_heads": 2, "pos_emb": "learned", "n_layers": 1})
    att = model.trf_blocks[0].att
    x = torch.randn(1, 12, 16)
    with torch.no_grad():
        got = att(x)
        q = att.W_query(x).view(12, 4, 4)
        k, v = att.W_key(x).view(12, 2, 4), att.W_value(x).view(12, 2, 4)
        ctx = torch.zeros(12, 4, 4)
        for i in range(12):
            for h in range(4):
                keys = range(max(0, i - WINDOW + 1), i + 1)
                scores = torch.stack([q[i, h] @ k[j, h // 2] / 2.0 for j in keys])
                weights = torch.softmax(scores, dim=0)
                ctx[i, h] = sum(w * v[j, h // 2] for w, j in zip(weights, keys, strict=True))
        expected = att.out_proj(ctx.reshape(1, 12, 16))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_moe_matches_the_written_out_routing() -> None:
    torch.manual_seed(3)
    moe = MoEFeedForward(8, 6, num_experts=4, experts_per_token=2)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        got = moe(x)
        expected = torch.zeros_like(x)
        for b in range(2):
            for t in range(5):
                logits = moe.gate.weight @ x[b, t]
                top = sorted(range(4), key=lambda e: -logits[e].item())[:2]
                z = [math.exp(logits[e].item()) for e in top]
                for e, w in zip(top, z, strict=True):
                    h = F.silu(moe.fc1[e].weight @ x[b, t]) * (moe.fc2[e].weight @ x[b, t])
                    expected[b, t] += w / sum(z) * (moe.fc3[e].weight @ h)
        one_at_a_time = torch.cat([moe(x[b : b + 1, t : t + 1]) for b in range(2) for t in range(5)]).view_as(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # a decoding step (one token) takes its own path over the chosen experts: the same numbers
    torch.testing.assert_close(one_at_a_time, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_the_written_out_formula(dtype: torch.dtype, offset: bool) -> None:
    """x / sqrt(mean(x^2) + eps) * w (Gemma's offset: * (1 + w)), in float32, rounded to the input's dtype."""
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5, offset=offset)
    with torch.no_grad():
        norm.weight.normal_()
    x = (3 * torch.randn(2, 5, 48)).to(dtype)
    x32, w = x.float(), norm.weight.detach().float()
    expected = (x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + 1e-5) * ((1 + w) if offset else w)).to(dtype)
    with torch.no_grad():
        out = norm(x)
    assert out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    else:  # at most one bf16 step apart (the float32 results may round either way)
        torch.testing.assert_close(out.float(), expected.float(), rtol=2**-7, atol=1e-6)


def test_rope_rotates_feature_pairs_with_llama3_frequencies() -> None:
    d, base = 8, 500000.0
    scaling = {**LLAMA3, "original_context_length": 64}
    freqs = []
    for i in range(d // 2):  # Llama 3's rule, per frequency
        f = base ** (-2 * i / d)
        wavelen = 2 * math.pi / f
        if wavelen < 64 / 4.0:
            freqs.append(f)
        elif wavelen > 64 / 1.0:
            freqs.append(f / 8.0)
        else:
            s = (64 / wavelen - 1.0) / (4.0 - 1.0)
            freqs.append((1 - s) * f / 8.0 + s * f)
    torch.testing.assert_close(rope_inv_freq(d, base, scaling), torch.tensor(freqs))
    x = torch.randn(1, 1, 3, d)
    pos = torch.arange(3, dtype=torch.float32)[:, None] * torch.tensor(freqs)
    cos, sin = torch.cat((pos, pos), -1).cos(), torch.cat((pos, pos), -1).sin()
    got = apply_rope(x, cos, sin)
    for p in range(3):
        for i in range(d // 2):  # pair (i, i + d/2) as one complex number times e^{i angle}
            z = complex(x[0, 0, p, i], x[0, 0, p, i + d // 2]) * complex(math.cos(pos[p, i]), math.sin(pos[p, i]))
            assert got[0, 0, p, i].item() == pytest.approx(z.real, abs=1e-5)
            assert got[0, 0, p, i + d // 2].item() == pytest.approx(z.imag, abs=1e-5)


def test_deltanet_recurrent_form_equals_chunked_form() -> None:
    """The token-by-token recurrence and the chunked training form, from a non-zero state, across chunks."""
    g = torch.Generator().manual_seed(4)
    b, h, t, d = 2, 3, 11, 4
    q, k = (
        F.normalize(torch.randn(b, h, t, d, generator=g), dim=-1),
        F.normalize(torch.randn(b, h, t, d, generator=g), dim=-1),
    )
    v = torch.randn(b, h, t, d, generator=g)
    beta = torch.rand(b, h, t, generator=g)
    decay = -torch.rand(b, h, t, generator=g)
    state = torch.randn(b, h, d, d, generator=g)
    out_r, state_r = recurrent_gated_delta(q, k, v, beta, decay, state)
    for chunk in (4, 64):
        out_c, state_c = chunked_gated_delta(q, k, v, beta, decay, state, chunk_size=chunk)
        torch.testing.assert_close(out_c, out_r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state_c, state_r, rtol=1e-5, atol=1e-5)
    # The delta rule itself, for the first token: S = a S0 + k (beta (v - (a S0)^T k))^T, o = S^T q.
    s0 = state[0, 0] * decay[0, 0, 0].exp()
    s1 = s0 + torch.outer(k[0, 0, 0], beta[0, 0, 0] * (v[0, 0, 0] - s0.T @ k[0, 0, 0]))
    torch.testing.assert_close(out_r[0, 0, 0], s1.T @ q[0, 0, 0], rtol=1e-5, atol=1e-6)
