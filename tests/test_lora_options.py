"""Issue 29, point 4: the LoRA settings the anchors offer — lora.scaling=rslora, lora.dropout and
lora.train_also — against the formulas and counts written out here."""

from __future__ import annotations

import math

import pytest
import torch
from configs import TINY
from torch import nn

from gpt_lab.config import validate_config
from gpt_lab.errors import ConfigError
from gpt_lab.model.finetune import select_trainable
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.lora import LoRALinear


def _layer(**kwargs: object) -> tuple[nn.Linear, LoRALinear]:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear.from_linear(base, rank=4, alpha=8.0, **kwargs)
    with torch.no_grad():
        layer.lora_B.normal_()
    return base, layer


def test_rslora_scales_by_alpha_over_the_square_root_of_the_rank() -> None:
    base, layer = _layer(scaling="rslora")
    assert layer.scale == 8.0 / math.sqrt(4)  # rsLoRA: alpha / sqrt(r) = 4, where appendix E's is alpha / r = 2
    x = torch.randn(3, 6)
    written_out = x @ base.weight.T + base.bias + (8.0 / 2.0) * (x @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(layer(x), written_out)


def test_lora_dropout_acts_on_the_adapters_input_only_and_only_in_training() -> None:
    base, layer = _layer(dropout=0.5)
    x = torch.randn(3, 6)
    torch.manual_seed(7)
    got = layer.train()(x)
    torch.manual_seed(7)
    kept = torch.nn.functional.dropout(x, 0.5, training=True)  # the same draw: zeros, the rest times 1 / (1 - p)
    assert torch.count_nonzero(kept) < x.numel()
    written_out = x @ base.weight.T + base.bias + 2.0 * (kept @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(got, written_out)
    evaluated = x @ base.weight.T + base.bias + 2.0 * (x @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(layer.eval()(x), evaluated)
    with torch.no_grad():
        layer.lora_B.zero_()  # a fresh adapter: the layer is the base layer, dropout or not
    assert torch.equal(layer.train()(x), base(x))


def test_train_also_trains_the_named_modules_whole_beside_the_adapters() -> None:
    model = GPTModel({**TINY, "qkv_bias": True})
    lora = {"rank": 2, "alpha": 2, "targets": ["all"], "train_also": ["out_head", "final_norm"]}
    n = select_trainable(model, "lora", lora)
    d, v, r, layers = TINY["emb_dim"], TINY["vocab_size"], 2, TINY["n_layers"]
    # Per block: 4 attention Linears (d -> d) and the feed-forward's d -> 4d and 4d -> d, each r * (in + out).
    adapters = layers * (4 * r * (d + d) + r * (d + 4 * d) + r * (4 * d + d))
    head, norm = d * v, 2 * d  # the head (no bias) and the final LayerNorm's scale and shift, whole
    assert n == adapters + head + norm
    assert type(model.out_head) is nn.Linear and model.out_head.weight.requires_grad
    assert all(p.requires_grad for p in model.final_norm.parameters())
    assert not model.trf_blocks[0].norm1.scale.requires_grad and not model.tok_emb.weight.requires_grad


def test_train_also_naming_nothing_is_refused_before_the_model_changes() -> None:
    model = GPTModel(TINY)
    with pytest.raises(ConfigError, match=r"lora.train_also=\[classifier\] names no module.*out_head"):
        select_trainable(model, "lora", {"rank": 2, "alpha": 2, "train_also": ["classifier"]})
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.dropout=1.0", r"lora.dropout=1.0 must be a rate in \[0, 1\)"),
        ("lora.scaling=sqrt", r"lora.scaling=sqrt is not a scaling; choose one of rank, alpha, rslora"),
    ],
)
def test_lora_option_errors_name_the_key(compose_config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config("finetune=lora", override))
    cfg = validate_config(compose_config("finetune=lora", "lora.scaling=rslora", "lora.train_also=[out_head]"))
    assert (cfg.lora.scaling, list(cfg.lora.train_also), cfg.lora.dropout) == ("rslora", ["out_head"], 0.0)
