"""Training a family's weights with its own tokenizer (issue 26, point 5): chapter 7's LoRA
instruction tuning of a small random Qwen3 directory in Qwen3's chat format, DPO on the result,
and the data pipelines' ids (the family's, never GPT-2's 50256) checked against the template
written out here and encoded with the ``tokenizers`` library directly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_files import save_hf_model, write_tokenizer

from gpt_lab.data.instructions import InstructionDataModule
from gpt_lab.data.preferences import PreferenceDataModule
from gpt_lab.hf_tokenizer import tokenizer_for
from gpt_lab.tokenizer import IGNORE_INDEX

pytest.importorskip("transformers")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
ENDOFTEXT, IM_END = 0, 2
VOCAB = 320  # model rows; the tokenizer has 300 tokens


def qwen3_template(instruction: str, output: str) -> tuple[str, str]:
    """Qwen3's chat template with enable_thinking=False, as its tokenizer_config.json renders one
    user turn and the assistant's answer: (prompt, response)."""
    prompt = f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    return prompt, f"{output}<|im_end|>"


def entries(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"Say word {i}.", "input": "", "output": f"Word {i} is here."} for i in range(n)]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 directory whose end-of-sequence id (<|endoftext|>, as Qwen3's base models
    name it) differs from its chat format's end of turn (<|im_end|>)."""
    directory = tmp_path_factory.mktemp("qwen")
    save_hf_model("qwen3", directory, seed=3, vocab_size=VOCAB)
    write_tokenizer(directory, SPECIALS, vocab_size=300)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    return directory


def raw_ids(directory: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def test_instruction_batches_train_on_the_qwen3_response_tokens(qwen: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries(20)))
    module = InstructionDataModule(
        data, max_length=64, batch_size=2, prompt_style="qwen3_nothink", mask_prompt=True, tokenizer=tokenizer_for(qwen)
    )
    module.setup("fit")
    loader = module._loader("val", shuffle=False, drop_last=False)
    inputs, targets = next(iter(loader))
    for row, entry in enumerate(module.splits["val"][: len(inputs)]):
        prompt, response = qwen3_template(entry["instruction"], entry["output"])
        prompt_ids, full = raw_ids(qwen, prompt), raw_ids(qwen, prompt + response)
        assert full[: len(prompt_ids)] == prompt_ids
        counted = targets[row][targets[row] != IGNORE_INDEX].tolist()
        assert counted == full[len(prompt_ids) :]  # the answer and <|im_end|>, nothing appended after it
        assert counted[-1] == IM_END
        assert inputs[row, : len(full) - 1].tolist() == full[:-1]
    assert int(inputs.max()) < 300  # padding is the family's id (<|im_end|>), never GPT-2's 50256
    assert set(inputs[0, len(full) - 1 :].tolist()) <= {IM_END}


def test_preference_pairs_end_with_the_family_end_of_turn(qwen: Path, tmp_path: Path) -> None:
    pairs = [{"instruction": f"Say word {i}.", "chosen": f"Word {i}.", "rejected": "No."} for i in range(8)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    module = PreferenceDataModule(data, 64, batch_size=2, prompt_style="qwen3_nothink", tokenizer=tokenizer_for(qwen))
    module.setup("fit")
    pair = module.datasets["train"].pairs[0]
    entry = module.entries["train"][0]
    prompt, response = qwen3_template(entry["instruction"], entry["chosen"])
    assert pair.prompt == raw_ids(qwen, prompt)
    assert pair.chosen == raw_ids(qwen, response)  # ends with <|im_end|>, the one end id
    assert pair.rejected[-1] == IM_END and pair.rejected.count(IM_END) == 1


def _run_results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_lora_instruction_tuning_of_qwen3_then_respond_and_dpo(qwen: Path, tmp_path: Path, run_cli: Callable) -> None:
    from safetensors.torch import load_file

    (tmp_path / "data.json").write_text(json.dumps(entries(20)))
    done = run_cli(
        "experiment=ch07",
        "finetune=lora",
        f"init_from={qwen}",
        "data.path=data.json",
        "data.prompt_style=qwen3_nothink",
        "data.mask_prompt=true",
        "data.batch_size=4",
        "optim.lr=0.01",
        "trainer.max_epochs=3",
        "max_response_tokens=4",
        "hydra.run.dir=sft",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "sft"
    results = _run_results(run)
    assert results["train_loss"] < results["initial_train_loss"] - 0.5, results
    assert (run / "tokenizer.json").read_bytes() == (qwen / "tokenizer.json").read_bytes()
    # Named after the directory, not experiment=ch07's gpt2_medium preset (issue 27 point 5's rule).
    assert results["model"] == qwen.name
    assert json.loads((run / "model.json").read_text())["model"]["name"] == qwen.name

    # The saved model is the base weights plus the adapters, merged: W + (alpha / rank) * (A @ B)^T.
    base = load_file(str(qwen / "model.safetensors"))
    adapters = load_file(str(run / "adapter.safetensors"))
    lora = json.loads((run / "model.json").read_text())["lora"]
    merged = torch.load(run / "model.pth", map_location="cpu", weights_only=True)
    a, b = adapters["out_head.lora_A"], adapters["out_head.lora_B"]
    assert float(b.abs().sum()) > 0  # B starts at zero: training moved it
    expected = base["lm_head.weight"] + lora["alpha"] / lora["rank"] * (a @ b).T
    torch.testing.assert_close(merged["out_head.weight"], expected, rtol=1e-5, atol=1e-6)

    # The run reloads with its tokenizer; make <|im_end|> its first greedy answer token (its logit row
    # swapped with the one it would pick), so task=respond must stop there at once.
    from gpt_lab.model.finetuned import load_finetuned

    model, meta = load_finetuned(run)
    assert meta["prompt_style"] == "qwen3_nothink" and model.cfg["vocab_size"] == VOCAB
    prompt, _ = qwen3_template("Say word 3.", "")
    with torch.no_grad():
        first = int(model(torch.tensor([raw_ids(qwen, prompt)]))[0, -1].argmax())
    if first != IM_END:
        head = merged["out_head.weight"]
        head[[first, IM_END]] = head[[IM_END, first]]
        torch.save(merged, run / "model.pth")
    done = run_cli("task=respond", "init_from=sft", "instruction='Say word 3.'", "hydra.run.dir=answer")
    assert done.returncode == 0, done.stderr[-3000:]
    answer = _run_results(tmp_path / "answer")
    assert answer["output_ids"] == raw_ids(qwen, prompt) and answer["new_tokens"] == 0
    assert answer["response"] == ""

    pairs = [{"instruction": f"Say word {i}.", "chosen": f"Word {i}.", "rejected": "No."} for i in range(12)]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    done = run_cli(
        "experiment=dpo",
        "init_from=sft",
        "data.path=pairs.json",
        "data.batch_size=2",
        "trainer.max_steps=2",
        "max_response_tokens=2",
        "hydra.run.dir=dpo",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dpo = _run_results(tmp_path / "dpo")
    assert dpo["status"] == "completed" and dpo["model_config"]["vocab_size"] == VOCAB
    assert dpo["model"] == qwen.name  # carried by the run's model.json
    assert (tmp_path / "dpo" / "tokenizer.json").is_file()


def test_classification_of_qwen3_pads_with_its_end_of_sequence_id(
    qwen: Path, tmp_path: Path, run_cli: Callable
) -> None:
    from configs import write_sms

    write_sms(tmp_path / "sms.tsv", n=10)
    done = run_cli(
        "experiment=ch06",
        f"init_from={qwen}",
        "data.path=sms.tsv",
        "data.batch_size=4",
        "classifier.pooling=last_nonpad",
        "trainer.max_epochs=1",
        "hydra.run.dir=cls",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "cls" / "model.json").read_text())
    assert meta["pad_token_id"] == ENDOFTEXT  # generation_config.json's eos_token_id, never 50256
    done = run_cli("task=classify", "init_from=cls", "text='Hello, I am a small model.'", "hydra.run.dir=label")
    assert done.returncode == 0, done.stderr[-3000:]
    label = _run_results(tmp_path / "label")
    assert label["predictions"][0]["label"] in meta["class_names"]


def test_chapter5_training_reads_the_text_with_the_family_tokenizer(
    qwen: Path, tmp_path: Path, run_cli: Callable
) -> None:
    from hf_files import TEXT

    from gpt_lab.data.text import split_text

    text = " ".join(TEXT[:3] * 12)  # about 2,000 characters: a short chapter-5 text
    (tmp_path / "story.txt").write_text(text, encoding="utf-8")
    done = run_cli(
        "task=train",
        f"init_from={qwen}",
        "data.path=story.txt",
        "trainer.max_steps=2",
        "trainer=cpu_bf16",  # bf16 mixed precision (issue 26 point 5: bf16, TensorBoard)
        "callbacks.sample_text.max_new_tokens=3",
        "hydra.run.dir=ch05",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = _run_results(tmp_path / "ch05")
    # TensorBoard's HPARAMS columns hold the model as built from config.json, not the GPT-2 preset's sizes.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tmp_path / "ch05" / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    config = json.loads((qwen / "config.json").read_text())
    assert start.hparams["model/emb_dim"].number_value == config["hidden_size"]
    assert start.hparams["model/attention"].string_value == "gqa"
    assert start.hparams["model/name"].string_value == qwen.name
    train_text, val_text = split_text(text, 0.9)
    assert results["train_tokens"] == len(raw_ids(qwen, train_text))  # not GPT-2's count of the same text
    assert results["val_tokens"] == len(raw_ids(qwen, val_text))
    assert results["model_config"]["vocab_size"] == VOCAB and results["global_step"] == 2


def test_a_vocabulary_other_than_gpt2s_needs_its_tokenizer(qwen: Path, compose_config: Callable) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"vocab_size=151936 must be 50257.*unless the model comes with its own"):
        validate_config(compose_config("model=qwen3_0_6b"))  # GPT-2's tokenizer cannot decode its ids
    with pytest.raises(ConfigError, match=r"model.vocab_size=320 must be 50257.*no embedding"):
        validate_config(compose_config("model=qwen3_tiny", "model.vocab_size=320"))
    validate_config(compose_config("task=estimate", "model=qwen3_0_6b"))  # sizes only: no tokenizer read
    validate_config(compose_config("model=qwen3_tiny", "model.vocab_size=320", f"init_from={qwen}"))


def test_a_chat_style_the_tokenizer_lacks_is_warned_and_ends_with_its_eos(
    qwen: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gpt_lab.data.instructions import end_of_item

    with caplog.at_level("WARNING"):
        assert end_of_item(tokenizer_for(qwen), "llama3") == (ENDOFTEXT, True)  # no <|eot_id|> in Qwen3's
    assert "data.prompt_style=llama3 does not fit this model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert end_of_item(tokenizer_for(qwen), "alpaca") == (ENDOFTEXT, True)
        assert end_of_item(tokenizer_for(None), "qwen3") == (50256, True)  # GPT-2: the book's end-of-text
    assert caplog.text == ""


def test_a_family_lora_run_resumes_exactly(qwen: Path, tmp_path: Path, compose_config: Callable) -> None:
    """Its Lightning checkpoints hold the adapters only (the family's RoPE tables are not state): resuming
    rebuilds the base from init_from and ends where the uninterrupted run ends."""
    from gpt_lab.run.job import run_task

    (tmp_path / "data.json").write_text(json.dumps(entries(12)))
    settings = (
        "experiment=ch07", "finetune=lora", f"init_from={qwen}", f"data.path={tmp_path / 'data.json'}",
        "data.prompt_style=qwen3_nothink", "data.batch_size=4", "optim.lr=0.01", "max_response_tokens=2",
        "callbacks.progress_bar=null",
    )  # fmt: skip
    whole = run_task(compose_config(*settings, "trainer.max_epochs=2", run_dir=tmp_path / "whole"))
    run_task(compose_config(*settings, "trainer.max_epochs=1", run_dir=tmp_path / "part"))
    resumed = run_task(compose_config(*settings, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path / "part"))
    for key in ("global_step", "initial_train_loss", "train_loss", "val_loss"):
        assert resumed[key] == whole[key], key


def test_runs_from_a_family_directory_are_named_after_it(qwen: Path) -> None:
    from gpt_lab.config.saved_model import run_model_name

    assert run_model_name("gpt2_medium", "train", str(qwen)) == qwen.name  # the experiment's GPT-2 preset replaced
    assert run_model_name("qwen3_tiny", "train", str(qwen)) == "qwen3_tiny"  # a family preset named beside it
    assert run_model_name("gpt2_small", "generate", None) == "gpt2_small"
