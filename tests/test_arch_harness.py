"""Every architecture variant through the harness (issue 25, point 4): chapter 5's training, model.pth with
model.json, TensorBoard's hparams, resume, bf16, compile, LoRA on the new projections, FSDP's wrap unit,
and weights of one variant refused by another."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.errors import InitFromError, UserError
from gpt_lab.generation.sampling import generate
from gpt_lab.model.book_checkpoint import save_book_checkpoint
from gpt_lab.model.finetuned import load_finetuned
from gpt_lab.model.gpt import GPTModel, TransformerBlock
from gpt_lab.model.lora import LoRALinear, apply_lora
from gpt_lab.run.job import run_task

TRAIN = ["task=train", *TINY_RUN, "model.n_layers=2", "trainer.max_steps=4", "callbacks.sample_text=null"]
TRAIN += ["max_new_tokens=3"]
VARIANTS = {
    "gqa_sliding_rope": ["attention=gqa", "model.n_kv_heads=1", "window=sliding", "model.sliding_window=4",
                         "model.sliding_pattern=1:1", "pos_emb=rope"],
    "mla_moe_rmsnorm_qknorm": ["attention=mla", "model.latent_dim=8", "ffn=moe", "model.num_experts=3",
                               "model.moe_hidden_dim=16", "norm=rmsnorm", "qk_norm=on"],
    "deltanet_swiglu": ["attention=deltanet", "model.full_attention_every=2", "ffn=swiglu", "model.hidden_dim=32"],
}  # fmt: skip


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "story.txt"
    path.write_text("The cat sat on the mat. The dog lay by the door. " * 30, encoding="utf-8")
    return path


@pytest.fixture
def train(compose_config: Callable[..., DictConfig], story: Path) -> Callable[..., dict]:
    return lambda out, *overrides: run_task(compose_config(*TRAIN, f"data.path={story}", *overrides, run_dir=out))


def _hparam_names(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return set(plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_saves_with_its_config_and_loads(name: str, tmp_path: Path, train) -> None:
    results = train(tmp_path, *VARIANTS[name])
    assert results["train_loss"] < results["initial_train_loss"]
    model, meta = load_finetuned(tmp_path)  # model.pth with the variant's config in model.json
    assert meta["finetune"] == "all" and meta["model"]["attention"] == model.cfg["attention"] != "mha"
    saved = torch.load(tmp_path / "model.pth", weights_only=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    prompt = torch.tensor([[464, 3797, 3332, 319, 262, 2603, 13]])  # longer than the sliding window
    assert torch.equal(generate(model, prompt, 8, 16), generate(model, prompt, 8, 16, use_cache=False))
    columns = _hparam_names(tmp_path)
    assert {f"model/{group}" for group in ("attention", "window", "ffn", "norm", "qk_norm", "pos_emb")} <= columns


def test_variant_resumes_exactly(tmp_path: Path, train) -> None:
    variant = [*VARIANTS["deltanet_swiglu"], "data.batch_size=8"]
    whole = train(tmp_path / "whole", *variant, "trainer.max_steps=-1", "trainer.max_epochs=2")
    train(tmp_path / "first", *variant, "trainer.max_steps=-1", "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = train(tmp_path / "second", *variant, "trainer.max_steps=-1", "trainer.max_epochs=2", f"ckpt_path={last}")
    for key in ("train_loss", "val_loss", "global_step"):
        assert resumed[key] == whole[key], key
    with pytest.raises(UserError, match=r"model\.attention=gqa \(checkpoint: deltanet\)"):
        train(tmp_path / "other", *VARIANTS["gqa_sliding_rope"], "data.batch_size=8", f"ckpt_path={last}")


def test_variant_in_bf16(tmp_path: Path, train) -> None:
    variant = [*VARIANTS["mla_moe_rmsnorm_qknorm"], "dropout=none"]
    fp32 = train(tmp_path / "fp32", *variant)
    bf16 = train(tmp_path / "bf16", *variant, "trainer=cpu_bf16")
    for key in ("initial_train_loss", "train_loss", "val_loss"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.01), key  # bf16's 8 bits: within 1 %
    assert bf16["train_loss"] != fp32["train_loss"]


@pytest.mark.slow  # torch.compile of forward and backward: minutes on a busy 2-core machine
def test_variant_compiled_equals_eager(tmp_path: Path, train) -> None:
    variant = [*VARIANTS["gqa_sliding_rope"], "dropout=none", "trainer.max_steps=2"]
    compiled = train(tmp_path / "compiled", *variant, "compile=true")
    eager = train(tmp_path / "eager", *variant)
    for key in ("initial_train_loss", "train_loss", "val_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-4), key


def test_lora_targets_name_the_new_projections(tmp_path: Path, train) -> None:
    results = train(tmp_path, *VARIANTS["mla_moe_rmsnorm_qknorm"], "finetune=lora", "lora.targets=[W_DKV,W_UV,fc1]")
    assert results["train_loss"] < results["initial_train_loss"]
    model, meta = load_finetuned(tmp_path)  # the adapters merged into plain weights
    assert meta["finetune"] == "lora" and not any("lora_" in k for k in model.state_dict())
    torch.manual_seed(0)
    model = GPTModel({"vocab_size": 64, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
                      "drop_rate": 0.0, "qkv_bias": False, "attention": "mla", "latent_dim": 4, "ffn": "moe",
                      "num_experts": 2, "experts_per_token": 1})  # fmt: skip
    apply_lora(model, 2, 2.0, ["W_DKV", "W_UK", "W_UV", "fc1", "fc2", "fc3"])
    wrapped = {name for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    att, ff = "trf_blocks.0.att", "trf_blocks.0.ff"
    expected = {f"{att}.{p}" for p in ("W_DKV", "W_UK", "W_UV")} | {
        f"{ff}.fc{i}.{e}" for i in (1, 2, 3) for e in (0, 1)
    }
    assert wrapped == expected
    torch.manual_seed(0)
    for cfg, names in (
        (model.cfg, ("W_query", "W_DKV", "W_UK", "W_UV", "out_proj")),
        (
            {**model.cfg, "attention": "deltanet"},
            ("W_query", "W_key", "W_value", "W_gate", "W_beta", "W_alpha", "out_proj"),
        ),
    ):
        other = GPTModel(cfg)
        apply_lora(other, 2, 2.0, ["attention"])
        wrapped = {name for name, m in other.named_modules() if isinstance(m, LoRALinear)}
        assert wrapped == {f"{att}.{p}" for p in names}


def test_fsdp_wraps_every_variants_blocks() -> None:
    """FSDP's unit is the TransformerBlock (gpt_lab.training.fsdp): every variant's blocks are one, and
    they hold every parameter but the embeddings, the final norm and the head."""
    from gpt_lab.training.fsdp import fsdp_strategy

    assert fsdp_strategy().kwargs["auto_wrap_policy"]._module_classes == {TransformerBlock}
    variants = [{"attention": "mla", "latent_dim": 4}, {"attention": "deltanet"}]
    variants += [{"ffn": "moe", "num_experts": 2, "experts_per_token": 1}, {"window": "sliding", "sliding_window": 2}]
    for overrides in variants:
        cfg = {"vocab_size": 64, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0}
        model = GPTModel({**cfg, "qkv_bias": False, **overrides})
        outside = {n for n, _ in model.named_parameters() if not n.startswith("trf_blocks.")}
        assert all(isinstance(b, TransformerBlock) for b in model.trf_blocks)
        assert outside <= {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "final_norm.scale",
                           "final_norm.shift", "out_head.weight"}  # fmt: skip


def test_weights_of_another_variant_are_refused(tmp_path: Path, train, run_cli, compose_config, story) -> None:
    train(tmp_path / "gqa", *VARIANTS["gqa_sliding_rope"], "trainer.max_steps=1")
    # With the command line's overrides (Hydra's node), as a run gets them: the groups named there are
    # the user's choice, not replaced by init_from's saved model (which carries the rest).
    other = [*TRAIN, f"data.path={story}", *VARIANTS["mla_moe_rmsnorm_qknorm"], f"init_from={tmp_path / 'gqa'}"]
    with pytest.raises(InitFromError) as err:
        run_task(compose_config(*other, run_dir=tmp_path / "mla", return_hydra_config=True))
    message = str(err.value)
    assert "model.attention=mla (weights: gqa)" in message and "model.ffn=moe (weights: gelu)" in message
    assert "\n" not in message
    torch.manual_seed(0)
    book = GPTModel({"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 2,
                     "drop_rate": 0.0, "qkv_bias": False})  # fmt: skip
    save_book_checkpoint(book, tmp_path / "book.pth")
    proc = run_cli(
        *TINY_RUN, "model.n_layers=2", "attention=gqa", "model.n_kv_heads=1", f"init_from={tmp_path / 'book.pth'}"
    )
    assert proc.returncode == 2, proc.stderr
    assert "holds GPT-2 weights (book format), which only the book's parts can hold" in proc.stderr
    assert "this run asks for attention=gqa window=full" in proc.stderr and "Traceback" not in proc.stderr


def test_variant_with_appendix_d_schedule_and_clipping(tmp_path: Path, train) -> None:
    """Appendix D's warmup, cosine decay and clipping over a MoE whose unrouted experts get no gradient."""
    overrides = ["scheduler=warmup_cosine", "scheduler.warmup_steps=2", "optim.clip_grad_norm=1.0", "optim.lr=0.001"]
    results = train(tmp_path, *VARIANTS["mla_moe_rmsnorm_qknorm"], *overrides)
    assert results["train_loss"] < results["initial_train_loss"]


def test_presets_compose_with_every_group(compose_config) -> None:
    from gpt_lab.config import validate_config

    for preset in ("ch05", "appendix_d", "pretrain"):
        cfg = validate_config(compose_config(f"experiment={preset}", "attention=gqa", "ffn=moe", "pos_emb=rope"))
        assert (cfg.model.attention, cfg.model.ffn, cfg.model.pos_emb) == ("gqa", "moe", "rope"), preset
