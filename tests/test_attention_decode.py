"""The generation step's attention products (gpt_lab/model/attention_decode.py) against chapter 3's attention
written out: keys and values repeated to every query head (GQA) or up-projected from the latent (MLA)."""

from __future__ import annotations

import torch

from gpt_lab.model.attention_decode import absorbed_latent_decode, grouped_query_decode


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, every key visible: (b, h, 1, d)."""
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def test_grouped_query_decode_is_attention_over_repeated_heads() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 6, 1, 8, generator=g), torch.randn(2, 2, 11, 8, generator=g), torch.randn(2, 2, 11, 8)
    expected = _attention(q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1))
    torch.testing.assert_close(grouped_query_decode(q, k, v), expected)


def test_absorbed_latent_decode_is_attention_over_up_projected_keys_and_values() -> None:
    g = torch.Generator().manual_seed(1)
    b, h, d, n, s = 2, 4, 8, 12, 9
    q, latent = torch.randn(b, h, 1, d, generator=g), torch.randn(b, s, n, generator=g)
    w_uk, w_uv = torch.randn(h * d, n, generator=g) / n**0.5, torch.randn(h * d, n, generator=g) / n**0.5
    k = (latent @ w_uk.T).view(b, s, h, d).transpose(1, 2)
    v = (latent @ w_uv.T).view(b, s, h, d).transpose(1, 2)
    torch.testing.assert_close(absorbed_latent_decode(q, latent, w_uk, w_uv), _attention(q, k, v))


def test_latent_attention_split_across_threads_is_attention_over_the_whole_latent(monkeypatch, two_threads) -> None:
    """From SPLIT_MIN positions per thread the latent is attended in parts and the parts combined by their
    log-sum-exp: the result must be softmax attention over every position, including a remainder part."""
    import gpt_lab.model.attention_decode as decode

    monkeypatch.setattr(decode, "SPLIT_MIN", 4)
    g = torch.Generator().manual_seed(2)
    b, h, n = 2, 3, 8
    q = torch.randn(b, 1, h, n, generator=g, dtype=torch.float64)
    for s in (9, 16, 17):  # 2 parts of 4 + 1 left over, 2 even parts, 2 parts + 1
        latent = torch.randn(b, s, n, generator=g, dtype=torch.float64)
        expected = torch.softmax(q @ latent.unsqueeze(1).transpose(-1, -2) * 0.3, dim=-1) @ latent.unsqueeze(1)
        torch.testing.assert_close(decode.latent_attention(q, latent, 0.3), expected)
