"""Generation: the cached loop against full recomputation, sampling rules, bad arguments."""

from __future__ import annotations

import pytest
import torch
from configs import TINY

from gpt_lab.generation.sampling import generate, generate_text_simple, sample_next_token
from gpt_lab.model.gpt import GPTModel
from scripts.book_reference import RefGPT, ref_greedy


@pytest.fixture
def model() -> GPTModel:
    torch.manual_seed(11)
    return GPTModel(TINY).eval()


@pytest.mark.parametrize("context_size", [8, 5])
def test_cached_greedy_equals_recomputation_across_window_slide(model: GPTModel, context_size: int) -> None:
    ref = RefGPT(TINY).eval()
    ref.load_state_dict(model.state_dict(), strict=False)
    idx = torch.randint(0, 64, (2, 3))
    expected = ref_greedy(ref, idx, 20, context_size)  # prompt 3 + 20 new: slides past both windows
    assert generate(model, idx, 20, context_size)[0].tolist() == expected[0].tolist()
    assert torch.equal(generate(model, idx, 20, context_size), expected)
    assert torch.equal(generate(model, idx, 20, context_size, use_cache=False), expected)
    assert torch.equal(generate_text_simple(model, idx, 20, context_size), expected)


def test_prompt_longer_than_window_is_cropped(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (1, 12))
    assert torch.equal(generate(model, idx, 4, 8), generate_text_simple(model, idx, 4, 8))


def test_top_k_one_equals_greedy(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (2, 2))
    torch.manual_seed(0)
    sampled = generate(model, idx, 10, 8, temperature=1.5, top_k=1)
    assert torch.equal(sampled, generate(model, idx, 10, 8))


def test_same_seed_same_sample(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (1, 2))
    samples = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        samples.append(generate(model, idx, 12, 8, temperature=2.0, top_k=20))
    assert torch.equal(samples[0], samples[1])
    assert not torch.equal(samples[0], samples[2])


def test_sampling_rule_matches_a_direct_computation() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    assert sample_next_token(logits).item() == 1
    # top-k=2 keeps tokens 1 and 2; temperature 0.5 doubles the logit gap: p(2) = 1 / (1 + e^2)
    torch.manual_seed(0)
    draws = torch.cat([sample_next_token(logits, temperature=0.5, top_k=2) for _ in range(4000)])
    assert set(draws.flatten().tolist()) <= {1, 2}
    p2 = (draws == 2).float().mean().item()
    assert abs(p2 - 1 / (1 + torch.e**2)) < 0.025


def test_eos_stops_without_appending(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (1, 2))
    greedy = generate(model, idx, 6, 8)
    eos = greedy[0, 4].item()  # the third new token
    first = greedy[0, 2:].tolist().index(eos) + 2
    out = generate(model, idx, 6, 8, eos_id=eos)
    assert out[0].tolist() == greedy[0, :first].tolist()


def test_generation_restores_mode_and_tracks_no_gradients(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (1, 2))
    model.train()
    out = generate(model, idx, 3, 8)
    assert model.training and not out.requires_grad
    model.eval()
    generate_text_simple(model, idx, 3, 8)
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens=-1 must be >= 0"),
        ({"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
    ],
)
def test_bad_arguments_are_named(model: GPTModel, kwargs: dict, message: str) -> None:
    args = {"max_new_tokens": 3, "context_size": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, torch.zeros(1, 2, dtype=torch.long), **args)


def test_empty_prompt_is_an_error(model: GPTModel) -> None:
    for fn in (generate, generate_text_simple):
        with pytest.raises(ValueError, match="n_tokens >= 1"):
            fn(model, torch.zeros(1, 0, dtype=torch.long), 3, 8)
