"""No-grad inference's shortcuts (issue 25 point 6, tiny shapes): the parts' ``forward`` called straight
(gpt_lab/model/calls.py), dropouts skipped out of training, and small models decoded on one thread
without the CPU Decoder. Each against the ordinary computation: the same model under autograd, where
every module is called through ``nn.Module.__call__``."""

from __future__ import annotations

import pytest
import torch
from configs import TINY
from torch import nn

import gpt_lab.generation.decoding as decoding
import gpt_lab.generation.sampling as sampling
from gpt_lab.generation.sampling import generate
from gpt_lab.model.calls import calls_forward_only
from gpt_lab.model.gpt import GPTModel

BASE = {**TINY, "context_length": 24, "n_layers": 3, "drop_rate": 0.0}
VARIANTS = {
    "mha": {},
    "gqa": {"attention": "gqa", "n_kv_heads": 2},
    "mla": {"attention": "mla", "latent_dim": 8},
    "sliding": {"window": "sliding", "sliding_window": 4, "sliding_pattern": "2:1"},
    "moe": {"ffn": "moe", "num_experts": 4, "experts_per_token": 2, "moe_hidden_dim": 12},
    "llama parts": {"attention": "gqa", "n_kv_heads": 2, "norm": "rmsnorm", "pos_emb": "rope", "ffn": "swiglu",
                    "hidden_dim": 24, "qk_norm": True},
    "deltanet hybrid": {"attention": "deltanet", "full_attention_every": 2},
    "gemma flags": {"norm": "rmsnorm", "norm_offset": True, "post_norms": True, "emb_scale": True,
                    "pos_emb": "rope"},
}  # fmt: skip


def _model(variant: dict, **extra: object) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel({**BASE, **variant, **extra}).eval()


def _greedy_with_autograd(model: GPTModel, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The book's loop, every module called the ordinary way (autograd on: no shortcut applies)."""
    with torch.enable_grad():
        for _ in range(n):
            idx = torch.cat((idx, model(idx)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_inference_steps_equal_the_ordinary_forward(name: str) -> None:
    """Cached one-token steps under inference mode give the logits of the full forward under autograd,
    and generate's greedy tokens equal the book's loop run that way."""
    model = _model(VARIANTS[name])
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():
        full = model(ids).detach()
    cache = model.new_kv_cache(2)
    with torch.inference_mode():
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, i : i + 1], kv_cache=cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    prompt = ids[:, :6]
    assert torch.equal(generate(model, prompt, 10, BASE["context_length"]), _greedy_with_autograd(model, prompt, 10))


def test_hooks_keep_the_ordinary_call_under_inference() -> None:
    """A forward hook on a block's attention, on a Linear, or a global one, still runs (and its result counts)."""
    model = _model({})
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        plain = model(ids)
    seen: list[str] = []
    handles = [
        model.trf_blocks[0].att.register_forward_hook(lambda m, args, out: out * 0),
        model.trf_blocks[1].ff.layers[0].register_forward_pre_hook(lambda m, args: seen.append("linear")),
        nn.modules.module.register_module_forward_hook(
            lambda m, args, out: seen.append("block") if m is model.trf_blocks[1] else None
        ),
    ]
    try:
        assert not calls_forward_only(model.trf_blocks[0].att)
        with torch.inference_mode():
            hooked = model(ids)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == ["block", "linear"]
    assert not torch.allclose(hooked, plain)  # the attention's output was zeroed by its hook
    model.trf_blocks[0].att.register_forward_hook(lambda m, args, out: out * 0)
    with torch.enable_grad():
        torch.testing.assert_close(model(ids).detach(), hooked)  # what the ordinary call gives
    assert calls_forward_only(model.trf_blocks[1].att)


def test_dropout_still_drops_in_training_and_not_in_eval() -> None:
    model = _model({}, drop_rate=0.5).train()
    ids = torch.randint(0, BASE["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # training mode under no-grad (a validation-free check): dropout is on
        assert not torch.equal(model(ids), model(ids))
    model.eval()
    with torch.enable_grad():
        ordinary = model(ids).detach()
    with torch.inference_mode():
        assert torch.equal(model(ids), ordinary)


def test_a_small_model_decodes_on_one_thread_without_the_decoder(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step, the prompt's too, runs on one thread; the setting is restored after."""
    model = _model({})

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small model needs no Decoder")

    monkeypatch.setattr(sampling, "Decoder", no_decoder)
    threads: list[int] = []
    model.register_forward_pre_hook(lambda m, args: threads.append(torch.get_num_threads()))
    prompt = torch.randint(0, BASE["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(5))
    out = generate(model, prompt, 5, BASE["context_length"])
    assert threads == [1, 1, 1, 1, 1]
    assert torch.get_num_threads() == 2
    assert torch.equal(out, _greedy_with_autograd(model, prompt, 5))


def test_the_decoder_serves_models_with_a_parameter_of_min_weight_elements(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model({})
    # The largest parameters of BASE: tok_emb and out_head (vocab 64 x emb 16), the first feed-forward
    # layer's weight (4 * 16 x 16): 1,024 elements each.
    largest = max(BASE["vocab_size"] * BASE["emb_dim"], 4 * BASE["emb_dim"] * BASE["emb_dim"])
    monkeypatch.setattr(decoding, "MIN_WEIGHT", largest)
    assert decoding.speeds_up(model)
    monkeypatch.setattr(decoding, "MIN_WEIGHT", largest + 1)
    assert not decoding.speeds_up(model)


def test_generate_restores_a_training_model_and_leaves_an_eval_model_in_eval() -> None:
    model = _model({}).train()
    prompt = torch.tensor([[1, 2]])
    generate(model, prompt, 3, BASE["context_length"])
    assert all(m.training for m in model.modules())
    model.eval()
    generate(model, prompt, 3, BASE["context_length"])
    assert not any(m.training for m in model.modules())
