"""Appendix E's LoRA, what trains (finetune=) and the fine-tuned model file.

Counts are the book's (BOOK_FIGURES.md: chapter 6, appendix E, chapter 7's exercise), computed on
the meta device; the LoRA formula and its initialisation are written out here independently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from configs import TINY
from torch import nn

from gpt_lab.config import GPT2_SIZES, validate_config
from gpt_lab.errors import ConfigError, InitFromError
from gpt_lab.model.finetune import select_trainable
from gpt_lab.model.finetuned import load_finetuned, save_finetuned
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.lora import LoRALinear, apply_lora, lora_disabled, merge_lora, merged_state_dict
from gpt_lab.model.weights import build_model
from gpt_lab.training.lit_module import GPTLitModule


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _small_classifier(qkv_bias: bool = True) -> GPTModel:
    with torch.device("meta"):
        model = GPTModel({**GPT2_SIZES["gpt2_small"], "drop_rate": 0.0, "qkv_bias": qkv_bias})
        model.out_head = nn.Linear(768, 2)  # chapter 6's head (with bias)
    return model


def test_lora_gpt2_small_two_class_head_has_the_books_trainable_count() -> None:
    model = _small_classifier()
    assert sum(p.numel() for p in model.parameters()) == 124_441_346  # the chapter's total with the 2-class head
    assert apply_lora(model, rank=16, alpha=16) == 2_666_528
    assert _trainable(model) == 2_666_528
    # Every Linear is wrapped, the head included: 12 blocks x 6 + 1.
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 12 * 6 + 1


def test_lora_gpt2_medium_every_linear_has_the_books_trainable_count() -> None:
    with torch.device("meta"):
        model = GPTModel({**GPT2_SIZES["gpt2_medium"], "drop_rate": 0.0, "qkv_bias": True})
    assert sum(p.numel() for p in model.parameters()) == 406_286_336
    assert select_trainable(model, "lora", {"rank": 16, "alpha": 16, "targets": ["all"]}) == 7_898_384


@pytest.mark.parametrize(
    ("finetune", "expected"),
    [
        # head 768*2+2; block (qkv bias) 4*(768*768+768) + 768*3072+3072 + 3072*768+768 + 4*768; final norm 2*768
        ("head", 1_538),
        ("last_block", 1_538 + 7_087_872 + 1_536),  # the book's 7,090,946
        ("last_two_blocks", 1_538 + 2 * 7_087_872 + 1_536),
        ("all", 124_441_346),
    ],
)
def test_select_trainable_counts_on_gpt2_small(finetune: str, expected: int) -> None:
    model = _small_classifier()
    assert select_trainable(model, finetune) == expected
    assert _trainable(model) == expected


def test_select_trainable_last_block_trains_exactly_the_books_modules() -> None:
    model = GPTModel({**TINY, "n_layers": 3})
    select_trainable(model, "last_block")
    trained = {
        name.split(".")[0] + (f".{name.split('.')[1]}" if name.startswith("trf_blocks") else "")
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    assert trained == {"out_head", "final_norm", "trf_blocks.2"}


def test_select_trainable_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"finetune=everything .*all, last_block"):
        select_trainable(GPTModel(TINY), "everything")


def test_lora_linear_is_the_appendix_formula_and_draws_a_like_kaiming_uniform() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    torch.manual_seed(1)
    layer = LoRALinear.from_linear(base, rank=3, alpha=4.0)
    # kaiming_uniform_(a=sqrt(5)) of a (6, 3) tensor: fan_in = 3, bound = sqrt(6 / (1 + 5)) * sqrt(3 / 3)... = 1/sqrt(3)
    torch.manual_seed(1)
    expected_a = torch.empty(6, 3).uniform_(-1 / math.sqrt(3), 1 / math.sqrt(3))
    torch.testing.assert_close(layer.lora_A.data, expected_a, rtol=0, atol=0)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.weight is base.weight and layer.bias is base.bias  # same tensors, same state-dict keys
    assert list(layer.state_dict()) == ["weight", "bias", "lora_A", "lora_B"]
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 6)
    written_out = x @ base.weight.T + base.bias + (4.0 / 3) * (x @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(layer(x), written_out)
    alpha_only = LoRALinear.from_linear(base, rank=3, alpha=4.0, scaling="alpha")
    assert alpha_only.scale == 4.0 and layer.scale == 4.0 / 3


def _lora_model_with_trained_adapters(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel({**TINY, "drop_rate": 0.0, "qkv_bias": True})
    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # as if trained: B away from zero
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
    return model.eval()


def test_merge_lora_gives_the_unmerged_logits_to_float32_round_off() -> None:
    model = _lora_model_with_trained_adapters()
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        unmerged = model(idx)
        state = merged_state_dict(model)
        merge_lora(model)
        merged = model(idx)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(k.endswith(("lora_A", "lora_B")) for k in model.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_lora_disabled_is_the_base_model_exactly() -> None:
    torch.manual_seed(0)
    base = GPTModel({**TINY, "drop_rate": 0.0, "qkv_bias": True}).eval()
    torch.manual_seed(0)
    model = _lora_model_with_trained_adapters()
    model.load_state_dict({**model.state_dict(), **base.state_dict()})  # same base weights, adapters kept
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert not torch.allclose(model(idx), base(idx))
        with lora_disabled(model):
            assert torch.equal(model(idx), base(idx))
        assert not torch.allclose(model(idx), base(idx))  # switched back on


def test_apply_lora_targets_and_bad_settings() -> None:
    model = GPTModel(TINY)
    n = apply_lora(model, rank=2, alpha=2, targets=["W_query", "W_value"])
    assert n == TINY["n_layers"] * 2 * (16 * 2 + 2 * 16)
    wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert wrapped == {"W_query", "W_value"}
    with pytest.raises(ConfigError, match=r"lora.rank=0 must be a positive integer"):
        apply_lora(GPTModel(TINY), rank=0, alpha=16)
    with pytest.raises(ConfigError, match=r"lora.targets=\['nothing'\] matches none"):
        apply_lora(GPTModel(TINY), rank=2, alpha=2, targets=["nothing"])


def test_lora_config_keys_are_validated(compose_config) -> None:
    cfg = validate_config(compose_config("finetune=lora", "lora.rank=8"))
    assert cfg.finetune.name == "lora" and cfg.lora.rank == 8 and list(cfg.lora.targets) == ["all"]
    assert validate_config(compose_config()).finetune.name == "all"  # chapter 5 unchanged
    with pytest.raises(ConfigError, match=r"lora.rank=0 must be a positive integer"):
        validate_config(compose_config("finetune=lora", "lora.rank=0"))
    with pytest.raises(ConfigError, match=r"lora.scaling=sqrt is not a scaling"):
        validate_config(compose_config("lora.scaling=sqrt"))


def test_lit_module_finetune_lora_optimises_only_the_adapters(compose_config) -> None:
    cfg = validate_config(compose_config("model=tiny", "finetune=lora", "lora.rank=2"))
    torch.manual_seed(0)
    base = GPTModel({**cfg.model, "drop_rate": 0.0}).state_dict()
    lit = GPTLitModule.from_config(cfg, dict(cfg.model), base)
    opt = lit.configure_optimizers()
    params = [p for group in opt.param_groups for p in group["params"]]
    adapters = [p for n, p in lit.model.named_parameters() if n.endswith(("lora_A", "lora_B"))]
    assert len(params) == len(adapters) and all(any(p is a for a in adapters) for p in params)
    torch.testing.assert_close(lit.model.tok_emb.weight, base["tok_emb.weight"])  # base weights loaded under LoRA


def test_save_finetuned_loads_back_with_its_head_and_meta(tmp_path: Path) -> None:
    model = _lora_model_with_trained_adapters()
    torch.manual_seed(5)
    model.out_head = LoRALinear.from_linear(nn.Linear(16, 3), rank=4, alpha=8)
    with torch.no_grad():
        model.out_head.lora_B.normal_()
        idx = torch.randint(0, 64, (2, 8))
        expected = model(idx)
    meta = {"kind": "classifier", "class_names": ["libs", "python", "utils"], "pooling": "last", "finetune": "lora"}
    save_finetuned(model, tmp_path, {**meta, "lora": {"rank": 4, "alpha": 8}})
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk["class_names"] == ["libs", "python", "utils"] and on_disk["model"]["emb_dim"] == 16
    loaded, loaded_meta = load_finetuned(tmp_path)
    assert loaded_meta["kind"] == "classifier" and loaded_meta["pooling"] == "last"
    assert tuple(loaded.out_head.weight.shape) == (3, 16) and loaded.out_head.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx), expected, rtol=1e-5, atol=1e-5)
    # init_from=<run dir>: the existing loader takes the classification head too (here the chosen
    # config says nothing of it: the weights decide the head's size and the qkv bias).
    built = build_model({**TINY, "drop_rate": 0.0}, tmp_path)
    assert built.cfg["num_classes"] == 3 and built.cfg["qkv_bias"] is True
    with torch.no_grad():
        torch.testing.assert_close(built.eval()(idx), expected, rtol=1e-5, atol=1e-5)
    # The file is the book's layout: its mask buffers are there.
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    assert "trf_blocks.0.att.mask" in state and not any("lora" in k for k in state)


def test_load_finetuned_without_sidecar_is_an_init_from_error(tmp_path: Path) -> None:
    torch.save(GPTModel(TINY).state_dict(), tmp_path / "model.pth")
    with pytest.raises(InitFromError, match=r"no model.json"):
        load_finetuned(tmp_path)


def test_next_token_training_with_lora_saves_merged_weights_and_model_json(tmp_path: Path, compose_config) -> None:
    from configs import TINY_RUN

    from gpt_lab.run.job import run_task

    text = tmp_path / "story.txt"
    text.write_text("The cat sat on the mat. The dog lay by the door. " * 20, encoding="utf-8")
    out = tmp_path / "run"
    cfg = compose_config(
        "task=train",
        *TINY_RUN,
        f"data.path={text}",
        "finetune=lora",
        "lora.rank=2",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "callbacks.sample_text.max_new_tokens=2",
        "max_new_tokens=2",
        "logger=csv",
        run_dir=out,
    )
    r = run_task(cfg)
    # One block of width 16 (TINY_RUN): 4 attention Linears, ff 16->64 and 64->16, the 50257-way head.
    assert r["trainable_params"] == 4 * (16 * 2 + 2 * 16) + (16 * 2 + 2 * 64) + (64 * 2 + 2 * 16) + (16 * 2 + 2 * 50257)
    meta = json.loads((out / "model.json").read_text())
    assert meta["finetune"] == "lora" and meta["lora"]["rank"] == 2
    model, _ = load_finetuned(out)
    assert not any("lora" in k for k in model.state_dict())
    # The merged file and the run's last checkpoint (adapters folded in by the loader) are the same model.
    from_ckpt = build_model(dict(cfg.model), out / "checkpoints" / "last.ckpt")
    idx = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), from_ckpt.eval()(idx), rtol=1e-5, atol=1e-5)


def test_lora_under_autocast_reuses_the_frozen_cast_until_the_weight_changes() -> None:
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(8, 6), rank=2, alpha=4)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(3, 8)

    def autocast_linear() -> torch.Tensor:  # what autocast computes for the base layer on its own
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.nn.functional.linear(x, layer.weight, layer.bias)

    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16), lora_disabled(layer):
            assert torch.equal(layer(x), autocast_linear())
        with torch.no_grad():
            layer.weight.add_(0.5)  # an in-place change (e.g. load_state_dict): the next cast follows it
    with torch.no_grad():
        layer.lora_B.normal_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x).float()
    written_out = x @ layer.weight.T + layer.bias + 2.0 * (x @ layer.lora_A @ layer.lora_B)
    torch.testing.assert_close(got, written_out, rtol=0.05, atol=0.05)  # bf16's rounding


# --- the LoRA product's own backward and the grouped query/key/value (speed paths, same function) ----------------


def _written_out(x: torch.Tensor, layer: LoRALinear) -> torch.Tensor:
    """Appendix E's LoRA layer as plain autograd sees it."""
    out = x @ layer.weight.T + layer.scale * (x @ layer.lora_A @ layer.lora_B)
    return out if layer.bias is None else out + layer.bias


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
def test_lora_gradients_equal_autograd_of_the_written_out_layer(bias: bool, frozen: bool) -> None:
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(6, 5, bias=bias).double(), rank=3, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    for p in (layer.weight, layer.bias):
        if p is not None:
            p.requires_grad_(not frozen)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    params = [x, *(p for p in layer.parameters() if p.requires_grad)]
    g = torch.randn(2, 4, 5, dtype=torch.float64)
    layer(x).backward(g)
    ours = _grads(params)
    _written_out(x, layer).backward(g)
    for got, expected in zip(ours, _grads(params), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _qkv_lora(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    att = GPTModel({**TINY, "drop_rate": 0.0, "qkv_bias": True}).trf_blocks[0].att
    apply_lora(att, rank=2, alpha=4, targets=["W_query", "W_key", "W_value"])
    with torch.no_grad():
        for _, m in att.named_children():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
    return att


def test_lora_forward_is_the_plain_expression_under_autocast_too() -> None:
    """Issue 29: no separate fast path; under autocast the layer computes the formula in bf16 (its inputs
    rounded to bf16, as autocast does), within bf16's rounding of the float64 result."""
    att = _qkv_lora()
    x = torch.randn(2, 5, att.W_query.in_features)
    for m in (att.W_query, att.W_key, att.W_value):
        with torch.no_grad():
            torch.nn.init.normal_(m.lora_B)  # B starts at zero: the update would vanish
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = m(x)
            x64, w64, b64, a64, bb64 = (t.bfloat16().double() for t in (x, m.weight, m.bias, m.lora_A, m.lora_B))
            expected = torch.nn.functional.linear(x64, w64, b64) + m.scale * (x64 @ a64 @ bb64)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), expected, rtol=2**-7, atol=2**-7 * expected.abs().max().item())
        with torch.no_grad():
            torch.testing.assert_close(m(x), _written_out(x, m))
    assert not any(name.startswith("_") for name in vars(att.W_query) if name not in vars(nn.Linear(1, 1)))
