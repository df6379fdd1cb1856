"""task=export: gpt_lab's models as Hugging Face directories that transformers loads and that give
gpt_lab's logits (GPT-2, tied and untied, with query/key/value biases and without; LoRA merged)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.hf_export import ExportError, write_hf_directory
from gpt_lab.model.lora import LoRALinear, apply_lora

transformers = pytest.importorskip("transformers")
TINY = {"vocab_size": 50257, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}


def _hf_logits(directory: Path, idx: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize(("qkv_bias", "tie"), [(False, False), (True, True)])
def test_gpt2_export_gives_our_logits_in_transformers(tmp_path: Path, qkv_bias: bool, tie: bool) -> None:
    torch.manual_seed(0)
    model = GPTModel({**TINY, "qkv_bias": qkv_bias, "tie_weights": tie}).eval()
    files = write_hf_directory(model.cfg, model.state_dict(), tmp_path / "hf")
    assert {f.name for f in files} >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = model(idx)
    torch.testing.assert_close(_hf_logits(tmp_path / "hf", idx), ours, rtol=1e-5, atol=1e-5)
    # The tokenizer files are GPT-2's: the book's ids for "Hello, I am".
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok("Hello, I am")["input_ids"] == [15496, 11, 314, 716]
    assert tok.eos_token_id == 50256


def test_export_task_merges_lora_of_a_finetuned_run(tmp_path: Path, compose_config: Callable[..., DictConfig]) -> None:
    from gpt_lab.model.finetuned import save_finetuned
    from gpt_lab.tasks.export import run

    torch.manual_seed(0)
    model = GPTModel({**TINY, "qkv_bias": True})
    apply_lora(model, rank=4, alpha=8)
    with torch.no_grad():  # as if trained: B away from zero
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
    model.eval()
    save_finetuned(model, tmp_path / "run", {"finetune": "lora"})
    cfg = compose_config("task=export", "init_from=run", "export.dir=exported")
    result = run(cfg)
    assert result["export_dir"] == str(tmp_path / "exported")
    idx = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        live = model(idx)  # the adapters computed beside the weights, not merged
    torch.testing.assert_close(_hf_logits(tmp_path / "exported", idx), live, rtol=1e-5, atol=1e-5)


def test_export_refuses_a_directory_holding_a_model(tmp_path: Path) -> None:
    model = GPTModel({**TINY, "qkv_bias": False})
    (tmp_path / "config.json").write_text(json.dumps({"keep": "me"}))
    with pytest.raises(ExportError, match=r"already holds config\.json"):
        write_hf_directory(model.cfg, model.state_dict(), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == {"keep": "me"}
    assert not (tmp_path / "model.safetensors").exists()


def test_export_refuses_a_classifier(tmp_path: Path) -> None:
    model = GPTModel({**TINY, "qkv_bias": False, "num_classes": 2})
    with pytest.raises(ExportError, match="classification head"):
        write_hf_directory(model.cfg, model.state_dict(), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_without_a_directory_is_a_user_error(run_cli: Callable[..., object]) -> None:
    done = run_cli("task=export", "model=tiny")
    assert done.returncode == 2
    assert "task=export needs the model and where to write it" in done.stderr


def test_a_lora_fine_tuned_llama_run_exports_to_transformers(tmp_path: Path, run_cli: Callable[..., object]) -> None:
    """Point 6 for a family: a tiny Llama 3 directory (tied head, RoPE scaling), LoRA-trained on a short
    chapter-5 text with its own tokenizer, exported: transformers gives gpt_lab's logits, the tokenizer travels."""
    from hf_files import TEXT, save_hf_model, write_tokenizer

    from gpt_lab.model.finetuned import load_finetuned

    base = save_hf_model("llama", tmp_path / "llama", seed=4, vocab_size=320)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    write_tokenizer(tmp_path / "llama", specials, bos="<|begin_of_text|>", vocab_size=300)
    (tmp_path / "story.txt").write_text(" ".join(TEXT[:3] * 12), encoding="utf-8")
    done = run_cli(
        "task=train",
        "finetune=lora",
        "lora.rank=4",
        "init_from=llama",
        "data.path=story.txt",
        "optim.lr=0.01",
        "trainer.max_steps=3",
        "callbacks.sample_text.max_new_tokens=2",
        "hydra.run.dir=run",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("task=export", "init_from=run", "export.dir=exported", "hydra.run.dir=export")
    assert done.returncode == 0, done.stderr[-3000:]
    exported = tmp_path / "exported"
    assert (exported / "tokenizer.json").read_bytes() == (tmp_path / "llama" / "tokenizer.json").read_bytes()
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_scaling"]["rope_type"] == "llama3"
    assert config["tie_word_embeddings"] is False  # the head's adapter, merged, unties it from the embedding

    ours, _ = load_finetuned(tmp_path / "run")
    idx = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        expected = ours(idx)
        before = base(idx).logits
    theirs = _hf_logits(exported, idx)
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)
    assert (theirs - before).abs().max() > 1e-3  # the fine-tuning is in the export, not the base weights
