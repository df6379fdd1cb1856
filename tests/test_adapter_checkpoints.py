"""Issue 29, point 3: a LoRA run's checkpoints hold its own tensors and a reference to the base weights;
they resume bit for bit, refuse a base that changed or moved, and adapter.safetensors loads onto the base."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.config import GPT2_SIZES
from gpt_lab.errors import UserError
from gpt_lab.model.book_checkpoint import save_book_checkpoint
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.weights import load_pretrained
from gpt_lab.run.job import run_task
from gpt_lab.training.lit_module import GPTLitModule


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_a_gpt2_small_lora_checkpoint_is_under_5_percent_of_a_full_one() -> None:
    """Counted on the meta device: the checkpoint's tensors (weights and AdamW's two moments per trainable one)."""
    cfg = {**GPT2_SIZES["gpt2_small"], "vocab_size": 50257, "drop_rate": 0.0, "qkv_bias": True}
    with torch.device("meta"):
        full = GPTLitModule(cfg, lr=1e-4, weight_decay=0.1, finetune="all")
        lora = GPTLitModule(cfg, lr=1e-4, weight_decay=0.1, finetune="lora", lora={"rank": 16, "alpha": 16})
        lora.remember_base("gpt2/model.safetensors", GPTModel(cfg).state_dict())  # the base read from a file

    def checkpoint_bytes(lit: GPTLitModule) -> int:
        trainable = sum(p.numel() * p.element_size() for p in lit.parameters() if p.requires_grad)
        return _nbytes(lit.state_dict()) + 2 * trainable  # + AdamW's exp_avg and exp_avg_sq

    assert set(lora.state_dict()) == {k for k, _ in lora.named_parameters() if "lora_" in k}
    assert checkpoint_bytes(lora) < 0.05 * checkpoint_bytes(full)
    # Against the same LoRA run holding its frozen base too (today's checkpoints before issue 29):
    assert _nbytes(lora.state_dict()) < 0.05 * _nbytes(lora.model.state_dict())


@pytest.fixture
def lora_run(compose_config: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., dict]:
    text = tmp_path / "story.txt"
    text.write_text("The cat sat on the mat. The dog lay by the door. " * 20, encoding="utf-8")
    base = tmp_path / "base" / "model.pth"
    base.parent.mkdir()
    model_cfg = dict(compose_config(*TINY_RUN).model)
    torch.manual_seed(5)
    save_book_checkpoint(GPTModel(model_cfg), base)

    def _run(out: Path, *overrides: str, init_from: Path = base) -> dict:
        cfg = compose_config(
            "task=train",
            *TINY_RUN,
            f"data.path={text}",
            f"init_from={init_from}",
            "finetune=lora",
            "lora.rank=2",
            "lora.train_also=[final_norm]",
            "callbacks.progress_bar=null",
            "callbacks.sample_text=null",
            "max_new_tokens=2",
            "logger=none",
            *overrides,
            run_dir=out,
        )
        return run_task(cfg)

    _run.base, _run.model_cfg = base, model_cfg  # type: ignore[attr-defined]
    return _run


def test_lora_checkpoint_holds_the_adapters_and_resumes_bit_identically(lora_run: Callable, tmp_path: Path) -> None:
    whole = lora_run(tmp_path / "whole", "trainer.max_epochs=2")
    lora_run(tmp_path / "resumed", "trainer.max_epochs=1")
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys and all(k.endswith((".lora_A", ".lora_B")) or k.startswith("model.final_norm.") for k in keys)
    base = ckpt["base_weights"]
    assert base["path"] == str(lora_run.base) and "model.tok_emb.weight" not in keys
    assert "tok_emb.weight" in base["keys"] and len(base["fingerprint"]) == 32
    resumed = lora_run(tmp_path / "resumed", "trainer.max_epochs=2", "ckpt_path=last")
    for key in ("train_loss", "val_loss", "tokens_seen", "global_step"):
        assert resumed[key] == whole[key], key
    a = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # adapter.safetensors + adapter.json load onto the base (init_from) as the merged model.pth.
    loaded = load_pretrained(tmp_path / "whole" / "adapter.safetensors").state_dict
    merged = load_pretrained(tmp_path / "whole" / "model.pth").state_dict
    assert set(loaded) == set(merged)
    for key in merged:
        torch.testing.assert_close(loaded[key], merged[key], rtol=1e-6, atol=1e-6)
    settings = json.loads((tmp_path / "whole" / "adapter.json").read_text())
    assert settings["lora"]["rank"] == 2 and settings["base"]["path"] == str(lora_run.base)


def test_resuming_on_a_changed_or_moved_base_is_refused(lora_run: Callable, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lora_run(out, "trainer.max_epochs=1")
    moved = tmp_path / "elsewhere" / "model.pth"
    moved.parent.mkdir()
    shutil.copy(lora_run.base, moved)
    with pytest.raises(UserError, match=r"holds the adapters only; its base weights were init_from=.*base/model.pth"):
        lora_run(out, "trainer.max_epochs=2", "ckpt_path=last", init_from=moved)
    torch.manual_seed(6)  # other weights under the same name
    save_book_checkpoint(GPTModel(lora_run.model_cfg), lora_run.base)
    with pytest.raises(UserError, match=r"not the ones it was trained on \(their checksum differs"):
        lora_run(out, "trainer.max_epochs=2", "ckpt_path=last")
