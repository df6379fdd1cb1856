"""Chapter 7 (issue 19): entries, the book's split, prompt styles, the book's collate, a tiny experiment=ch07
run end to end (losses, files, test responses, resume), task=respond."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from gpt_lab.data.entries import InstructionDataError, read_entries, split_entries
from gpt_lab.data.instructions import collate_instructions, encode_entry
from gpt_lab.errors import UserError
from gpt_lab.generation.prompt_styles import PromptStyleError, extract_response, format_example, format_prompt
from gpt_lab.generation.sampling import generate_text_simple
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.tokenizer import get_tokenizer
from gpt_lab.training.loss import mean_loss

EOT = 50256
# The book's Alpaca text, written out (BOOK_FIGURES.md, chapter 7).
HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def _entries(n: int) -> list[dict[str, str]]:
    """Short generated entries; every third without input."""
    words = ["cat", "dog", "sun", "tree", "book", "rain", "fish", "star"]
    return [
        {
            "instruction": f"Name the plural of {words[i % 8]}.",
            "input": "" if i % 3 == 0 else f"word {i}",
            "output": f"The plural is {words[i % 8]}s.",
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# Prompt styles


def test_alpaca_prompt_is_the_books_text_byte_for_byte() -> None:
    entry = {"instruction": "Rewrite the sentence.", "input": "The car is fast.", "output": "The car is quick."}
    assert format_prompt(entry, "alpaca") == (
        HEADER + "\n\n### Instruction:\nRewrite the sentence." + "\n\n### Input:\nThe car is fast."
    )
    assert format_example(entry, "alpaca") == (
        HEADER
        + "\n\n### Instruction:\nRewrite the sentence."
        + "\n\n### Input:\nThe car is fast."
        + "\n\n### Response:\nThe car is quick."
    )
    no_input = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    assert format_example(no_input, "alpaca") == HEADER + "\n\n### Instruction:\nSay hi.\n\n### Response:\nHi."


def test_phi3_prompt_is_exercise_7_1s_plain_text() -> None:
    entry = {"instruction": "Rewrite the sentence.", "input": "The car is fast.", "output": "The car is quick."}
    assert format_example(entry, "phi3") == (
        "<|user|>\nRewrite the sentence.\nThe car is fast.\n<|assistant|>:\nThe car is quick."
    )
    assert format_prompt({"instruction": "Say hi.", "output": "Hi."}, "phi3") == "<|user|>\nSay hi."
    # Plain text: GPT-2 has no <|user|> token.
    assert EOT not in get_tokenizer().encode(format_example(entry, "phi3"), disallowed_special=())


def test_response_is_cut_out_as_the_book_does() -> None:
    prompt = HEADER + "\n\n### Instruction:\nSay hi."
    assert extract_response(prompt + "\n\n### Response:\n  Hi there. \n", prompt, "alpaca") == "Hi there."
    assert extract_response("<|user|>\nSay hi.\n<|assistant|>:\nHi.", "<|user|>\nSay hi.", "phi3") == "Hi."


def test_unknown_prompt_style_names_the_choices() -> None:
    with pytest.raises(
        PromptStyleError, match=r"prompt_style=chatml is not a prompt style; choose one of alpaca, gemma3"
    ):
        format_prompt({"instruction": "x", "output": "y"}, "chatml")


# ---------------------------------------------------------------------------------------------
# The book's batches


def test_collate_reproduces_the_books_worked_example() -> None:
    inputs, targets = collate_instructions([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, EOT, EOT, EOT], [7, 8, 9, EOT, EOT]]
    assert targets.tolist() == [[1, 2, 3, 4, EOT], [6, EOT, -100, -100, -100], [8, 9, EOT, -100, -100]]


def test_collate_truncates_to_max_length_and_masks_the_prompt() -> None:
    inputs, targets = collate_instructions([[0, 1, 2, 3, 4], [5, 6]], allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, EOT]]
    assert targets.tolist() == [[1, 2, 3], [6, EOT, -100]]
    # Exercise 7.2: prompts of 3 and 1 tokens; the targets predicting prompt tokens (positions < length - 1) go.
    _, masked = collate_instructions([[0, 1, 2, 3, 4], [5, 6]], prompt_lengths=[3, 1])
    assert masked.tolist() == [[-100, -100, 3, 4, EOT], [6, EOT, -100, -100, -100]]


def test_endoftext_in_an_entry_is_ordinary_text_not_padding() -> None:
    tok = get_tokenizer()
    entry = {"instruction": "Echo this.", "input": "a <|endoftext|> b", "output": "a <|endoftext|> b"}
    ids, prompt_len = encode_entry(entry, "alpaca", tok)
    assert EOT not in ids
    assert tok.decode(ids) == format_example(entry, "alpaca")
    assert ids[:prompt_len] == tok.encode(format_prompt(entry, "alpaca"), disallowed_special=())
    _, targets = collate_instructions([ids, [1, 2]])
    assert (targets[0] == EOT).sum() == 1 and targets[0, -1] == EOT  # the one end-of-text, last
    assert (targets[1] != -100).sum() == 2  # [2, EOT]; the rest is padding, ignored


def test_mean_loss_counts_only_targets_that_are_not_ignored() -> None:
    torch.manual_seed(0)
    model = GPTModel({"vocab_size": 64, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
                      "drop_rate": 0.0, "qkv_bias": False})  # fmt: skip
    a = (torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, -100, -100]]))
    b = (torch.tensor([[5, 6, 7, 8]]), torch.tensor([[6, 7, 8, 9]]))
    with torch.no_grad():
        la = F.cross_entropy(model(a[0])[0, :2], a[1][0, :2], reduction="sum")
        lb = F.cross_entropy(model(b[0])[0], b[1][0], reduction="sum")
    assert mean_loss(model, [a, b]) == pytest.approx(float((la + lb) / 6), rel=1e-6)  # 2 + 4 real targets
    assert mean_loss(model, [a, b], per_batch=True) == pytest.approx(float((la / 2 + lb / 4) / 2), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Entries and the split


def test_split_follows_the_books_arithmetic() -> None:
    sizes = {n: {k: len(v) for k, v in split_entries(list(range(n))).items()} for n in (1100, 20)}
    # int(1100 * 0.85) = 935 train, int(1100 * 0.1) = 110 test, 1100 - 935 - 110 = 55 validation.
    assert sizes[1100] == {"train": 935, "test": 110, "val": 55}
    assert sizes[20] == {"train": 17, "test": 2, "val": 1}
    split = split_entries(list(range(20)))
    assert split["train"] == list(range(17)) and split["test"] == [17, 18] and split["val"] == [19]  # file order
    shuffled = split_entries(list(range(20)), seed=123)
    again = split_entries(list(range(20)), seed=123)
    assert shuffled == again and shuffled["train"] != list(range(17))
    assert sorted(shuffled["train"] + shuffled["test"] + shuffled["val"]) == list(range(20))


def test_read_entries_takes_a_json_list_or_jsonl_with_mapped_fields(tmp_path: Path) -> None:
    listed = tmp_path / "a.json"
    listed.write_text(json.dumps([{"instruction": "I", "output": "O", "chosen": "C"}]), encoding="utf-8")
    assert read_entries(listed) == [{"instruction": "I", "input": "", "output": "O", "chosen": "C"}]
    lines = tmp_path / "b.jsonl"
    lines.write_text('{"q": "I1", "ctx": "X", "a": "O1"}\n\n{"q": "I2", "ctx": null, "a": "O2"}\n', encoding="utf-8")
    mapped = read_entries(lines, {"instruction": "q", "input": "ctx", "output": "a"})
    assert mapped == [
        {"instruction": "I1", "input": "X", "output": "O1"},
        {"instruction": "I2", "input": "", "output": "O2"},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("instruction,output\nI,O\n", r"neither a JSON list nor JSON Lines: line 1 is not JSON"),
        ('[{"instruction": "I", "output": "O"}, {"instruction": "I"}]', r"entry 1 \(counting from 0\) has no 'output'"),
        ('[{"instruction": "I", "output": 3}]', r"entry 0 \(counting from 0\) has 'output' of type int"),
        ("[]", r"holds no entries"),
        ('{"instruction": "I", "output": "O"}\n[1]\n', r"entry 1 \(counting from 0\) is a list"),
    ],
)
def test_bad_entries_name_the_entry(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InstructionDataError, match=message):
        read_entries(path)


# ---------------------------------------------------------------------------------------------
# experiment=ch07, tiny


SMALL = (
    "experiment=ch07",
    "model=tiny",
    "model.context_length=64",
    "model.emb_dim=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "data.batch_size=4",
    "data.eval_max_batches=2",
    "max_response_tokens=4",
    "optim.lr=0.01",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "logger=none",
)


def test_ch07_preset_has_the_books_settings(compose_config: Callable[..., DictConfig]) -> None:
    cfg = compose_config("experiment=ch07")
    assert cfg.model.name == "gpt2_medium" and cfg.model.qkv_bias is True and cfg.model.drop_rate == 0.0
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.batch_size, cfg.trainer.max_epochs) == (5e-5, 0.1, 8, 2)
    assert (cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches, cfg.data.eval_max_batches) == (5, 5, 5)
    assert (cfg.seed, cfg.data.prompt_style, cfg.max_response_tokens, cfg.temperature) == (123, "alpaca", 256, 0.0)
    assert (cfg.data.train_ratio, cfg.data.test_ratio, cfg.data.shuffle) == (0.85, 0.10, False)


@pytest.fixture(scope="module")
def entries_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "entries.json"
    path.write_text(json.dumps(_entries(20)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, entries_file: Path) -> tuple[Path, dict[str, Any], DictConfig]:
    """One tiny ch07 run (2 epochs of 4 steps), shared by the tests that read what it wrote."""
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("ch07")
    paths = [f"paths.root_dir={out}", f"paths.project_dir={out}", f"paths.output_dir={out}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        cfg = compose("config", overrides=[*SMALL, f"data.path={entries_file}", *paths])
    return out, run_task(cfg), cfg


def _book_batches(entries: list[dict[str, str]], batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, ...]]:
    """The book's InstructionDataset and custom_collate_fn written out (one 50256 added, pad, mask)."""
    tok = get_tokenizer()
    items = []
    for e in entries:
        text = HEADER + f"\n\n### Instruction:\n{e['instruction']}"
        text += f"\n\n### Input:\n{e['input']}" if e["input"] else ""
        items.append(tok.encode(text + f"\n\n### Response:\n{e['output']}"))
    batches = []
    for start in range(0, min(len(items), batch_size * n_batches), batch_size):
        group = items[start : start + batch_size]
        longest = max(len(x) + 1 for x in group)
        xs, ys = [], []
        for item in group:
            padded = item + [EOT] * (longest - len(item))
            x, y = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
            pads = torch.nonzero(y == EOT).squeeze(1)
            y[pads[1:]] = -100
            xs.append(x)
            ys.append(y)
        batches.append((torch.stack(xs), torch.stack(ys)))
    return batches


def test_ch07_run_writes_splits_losses_plot_and_test_responses(
    trained: tuple[Path, dict[str, Any], DictConfig],
) -> None:
    out, results, cfg = trained
    entries = _entries(20)
    assert results["split_sizes"] == {"train": 17, "val": 1, "test": 2}  # 85 / 10 / rest of 20
    assert json.loads((out / "train.json").read_text()) == entries[:17]
    assert json.loads((out / "test.json").read_text()) == entries[17:19]
    assert json.loads((out / "val.json").read_text()) == entries[19:]
    # Initial losses: the seeded model's mean of batch means over the first 2 batches, computed the book's way.
    torch.manual_seed(cfg.seed)
    model = GPTModel(OmegaConf.to_container(cfg.model)).eval()
    for split, key in ((entries[:17], "initial_train_loss"), (entries[19:], "initial_val_loss")):
        with torch.no_grad():
            losses = [
                F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in _book_batches(split, 4, 2)
            ]
        assert results[key] == pytest.approx(sum(losses) / len(losses), rel=1e-5), key
    assert results["global_step"] == 2 * (17 // 4)  # drop_last: 4 full batches per epoch, 2 epochs
    assert results["train_loss"] < results["initial_train_loss"]
    assert [r["epoch"] for r in results["epoch_responses"]] == [1, 2]
    responses = json.loads((out / "test-responses.json").read_text())
    assert [{k: v for k, v in r.items() if k != "model_response"} for r in responses] == entries[17:19]
    assert all(isinstance(r["model_response"], str) for r in responses)
    assert (out / "loss-plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "model.json").read_text())["prompt_style"] == "alpaca"
    assert results["trainable_params"] == results["total_params"]


def test_ch07_resumes_from_the_last_checkpoint_exactly(
    tmp_path: Path,
    compose_config: Callable[..., DictConfig],
    entries_file: Path,
    trained: tuple[Path, dict[str, Any], DictConfig],
) -> None:
    whole_dir, whole, _ = trained
    run = tmp_path / "resumed"
    first = run_task(compose_config(*SMALL, f"data.path={entries_file}", "trainer.max_epochs=1", run_dir=run))
    assert first["global_step"] == 4
    resumed = run_task(compose_config(*SMALL, f"data.path={entries_file}", "ckpt_path=last", run_dir=run))
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss", "global_step", "tokens_seen"):
        assert resumed[key] == whole[key], key
    assert resumed["epoch_responses"] == whole["epoch_responses"]
    assert (run / "test-responses.json").read_text() == (whole_dir / "test-responses.json").read_text()


def test_respond_answers_with_the_saved_prompt_style(
    compose_config: Callable[..., DictConfig], trained: tuple[Path, dict[str, Any], DictConfig], tmp_path: Path
) -> None:
    out, _, cfg = trained
    cfg_respond = compose_config(
        "task=respond", f"init_from={out}", "instruction=Name the plural of cat.", "input=word 3",
        "max_response_tokens=6",
    )  # fmt: skip
    results = run_task(cfg_respond)
    assert results["prompt_style"] == "alpaca"
    # The book's greedy loop written out on the saved weights: stop at 50256, cut the prompt, strip.
    model = GPTModel(OmegaConf.to_container(cfg.model)).eval()
    state = torch.load(out / "model.pth", weights_only=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(".mask")})
    prompt = HEADER + "\n\n### Instruction:\nName the plural of cat.\n\n### Input:\nword 3"
    ids = torch.tensor([get_tokenizer().encode(prompt)])
    for _ in range(6):
        nxt = generate_text_simple(model, ids, 1, cfg.model.context_length)[:, -1:]
        if nxt.item() == EOT:
            break
        ids = torch.cat([ids, nxt], dim=1)
    text = get_tokenizer().decode(ids[0].tolist())
    assert results["response"] == text[len(prompt) :].replace("### Response:", "").strip()


def test_respond_on_weights_without_a_prompt_style_says_how_to_give_one(
    compose_config: Callable[..., DictConfig], tmp_path: Path, trained: tuple[Path, dict[str, Any], DictConfig]
) -> None:
    out, _, _ = trained
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pth").write_bytes((out / "model.pth").read_bytes())
    cfg = compose_config("task=respond", f"init_from={bare}", "instruction=Say hi.", *SMALL[1:6])
    with pytest.raises(UserError, match=r"carries no prompt style.*add prompt_style=alpaca"):
        run_task(cfg)
    cfg = compose_config("task=respond", f"init_from={bare}", "instruction=Say hi.", "prompt_style=phi3",
                         "max_response_tokens=2", *SMALL[1:6])  # fmt: skip
    assert run_task(cfg)["prompt"] == "<|user|>\nSay hi."


def test_instruction_run_bad_input_is_one_paragraph_exit_2(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "few.json").write_text(json.dumps(_entries(5)), encoding="utf-8")
    done = run_cli(*SMALL, "data.path=few.json")
    assert done.returncode == 2, done.stderr
    assert "data.path=" in done.stderr and "its test split" in done.stderr and "is empty" in done.stderr
    assert "Traceback" not in done.stderr


def test_ch07_with_lora_trains_the_books_7_898_384_parameters(compose_config: Callable[..., DictConfig]) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.training.instruction_module import InstructionLitModule

    cfg = validate_config(compose_config("experiment=ch07", "finetune=lora"))
    with torch.device("meta"):  # gpt2_medium, qkv bias, rank 16 on every Linear: exercise 7.4's count
        lit = InstructionLitModule.from_config(cfg, OmegaConf.to_container(cfg.model), None)
    assert sum(p.numel() for p in lit.model.parameters() if not p.requires_grad) == 406_286_336
    assert sum(p.numel() for p in lit.model.parameters() if p.requires_grad) == 7_898_384


def test_ch07_lora_run_saves_merged_weights_that_respond_reads(
    tmp_path: Path, compose_config: Callable[..., DictConfig], entries_file: Path
) -> None:
    out = tmp_path / "lora"
    results = run_task(
        compose_config(*SMALL, f"data.path={entries_file}", "finetune=lora", "lora.rank=2", "trainer.max_steps=2",
                       "data.prompt_style=phi3", run_dir=out)
    )  # fmt: skip
    assert 0 < results["trainable_params"] < results["total_params"]
    meta = json.loads((out / "model.json").read_text())
    assert (meta["prompt_style"], meta["finetune"]) == ("phi3", "lora")
    state = torch.load(out / "model.pth", weights_only=True)
    assert not any("lora" in k for k in state)  # adapters merged into the book's layout
    answer = run_task(
        compose_config("task=respond", f"init_from={out}", "instruction=Say hi.", "max_response_tokens=2")
    )
    assert answer["prompt_style"] == "phi3" and answer["prompt"] == "<|user|>\nSay hi."


def test_an_experiment_that_picks_data_instructions_accepts_its_keys_on_the_command_line() -> None:
    from gpt_lab.run.options import misplaced_group_keys

    assert misplaced_group_keys(["experiment=ch07", "data.prompt_style=phi3", "data.mask_prompt=true"]) == []
    (problem,) = misplaced_group_keys(["data.mask_prompt=true"])
    assert problem.startswith("data.mask_prompt is a key of data=instructions") and "not of data=text" in problem


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.prompt_style=chatml"], r"prompt_style=chatml is not a prompt style; choose one of alpaca"),
        (["data.max_length=100"], r"data.max_length=100 exceeds the model's context length 64"),
        (["data.train_path=a.json"], r"give either data.path .* not both"),
        (["data.path=null"], r"data=instructions needs entries: data.path="),
        (
            ["data.test_ratio=0.2", "data.train_ratio=0.8"],
            r"data.train_ratio=0.8 plus data.test_ratio=0.2 must be below 1",
        ),
        (["+data.fields.answer=a"], r"data.fields.answer is not a field"),
    ],
)
def test_bad_instruction_settings_are_user_errors(
    compose_config: Callable[..., DictConfig], entries_file: Path, overrides: list[str], message: str
) -> None:
    cfg = compose_config(*SMALL, f"data.path={entries_file}", *overrides)
    with pytest.raises(UserError, match=message):
        run_task(cfg)


def test_max_response_tokens_is_a_key_of_every_run(compose_config: Callable[..., DictConfig]) -> None:
    assert compose_config("task=train", "data=instructions", "max_response_tokens=5").max_response_tokens == 5
    assert compose_config("task=respond").max_response_tokens is None  # the book's 256 (BOOK_RESPONSE_TOKENS)
    assert compose_config("experiment=ch07").max_response_tokens == 256
