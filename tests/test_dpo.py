"""DPO (the book's chapter-7 bonus): preference pairs, the objective, experiment=dpo end to end, resume,
bad input. Expected values are written out here: per-token log-softmax loops, the loss formula in
float64, the Alpaca prompt text, hand-built batches."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from gpt_lab.config import validate_config
from gpt_lab.data.preferences import (
    PreferenceDataError,
    PreferenceDataModule,
    PreferencePair,
    collate_preferences,
    encode_pair,
    read_preference_entries,
)
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.model.book_checkpoint import save_book_checkpoint
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.tokenizer import get_tokenizer
from gpt_lab.training.dpo import DPOLitModule, dpo_loss, response_logprobs

LN2 = math.log(2.0)
EOT = 50256
MODEL = {"vocab_size": 50257, "context_length": 64, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0}
MODEL_OVERRIDES = ("model=tiny", "model.emb_dim=16", "model.n_heads=2", "model.n_layers=1")
ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]


def _entries(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "instruction": f"Name a {rng.choice(WORDS)}.",
            "input": "" if i % 2 else rng.choice(WORDS),
            "chosen": " ".join(rng.choices(WORDS, k=2)),
            "rejected": " ".join(rng.choices(WORDS, k=4)),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    save_book_checkpoint(GPTModel({**MODEL, "qkv_bias": False}), root / "init.pth")
    (root / "pairs.json").write_text(json.dumps(_entries(20)), encoding="utf-8")
    return {"root": root, "init": root / "init.pth", "pairs": root / "pairs.json"}


@pytest.fixture
def dpo_config(compose_config: Callable[..., DictConfig], files: dict[str, Path]) -> Callable[..., DictConfig]:
    def _compose(out: Path, *overrides: str) -> DictConfig:
        return compose_config(
            "experiment=dpo",
            *MODEL_OVERRIDES,
            f"init_from={files['init']}",
            f"data.path={files['pairs']}",
            "data.batch_size=4",
            "optim.lr=0.01",
            "max_response_tokens=3",
            "dpo.test_responses=2",
            "trainer.val_check_interval=2",
            "callbacks.progress_bar=null",
            "+trainer.enable_model_summary=false",
            *overrides,
            run_dir=out,
        )

    return _compose


def _alpaca_prompt(entry: dict[str, str]) -> str:
    text = f"{ALPACA}\n\n### Instruction:\n{entry['instruction']}"
    if entry["input"]:
        text += f"\n\n### Input:\n{entry['input']}"
    return text + "\n\n### Response:\n"


def _written_out_logprob(model: GPTModel, prompt: list[int], response: list[int], reduction: str) -> float:
    """log p(response | prompt), one token at a time from the model's log-softmax (float64 sums)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(ids)[0].double(), dim=-1)
    total = sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response))
    return total / len(response) if reduction == "mean" else total


def _written_out_dpo(policy_c: float, policy_r: float, ref_c: float, ref_r: float, beta: float) -> float:
    z = beta * ((policy_c - ref_c) - (policy_r - ref_r))
    return math.log1p(math.exp(-z))  # -log(sigmoid(z))


# ---------------------------------------------------------------------------------------------
# Data


def test_encode_pair_is_the_alpaca_prompt_then_each_response_and_one_end_of_text() -> None:
    tok = get_tokenizer()
    entry = {"instruction": "Say hi.", "input": "twice", "chosen": "hi hi", "rejected": "bye <|endoftext|>"}
    pair, cut = encode_pair(entry, "alpaca", 64 * 4)
    assert not cut
    assert tok.decode(pair.prompt) == _alpaca_prompt(entry)
    assert pair.chosen == [*tok.encode("hi hi"), EOT]
    # Text spelling <|endoftext|> is ordinary text: the only 50256 is the one appended.
    assert pair.rejected[-1] == EOT and EOT not in pair.rejected[:-1]
    assert tok.decode(pair.rejected[:-1]) == "bye <|endoftext|>"


def test_phi3_prompt_is_exercise_7_1s_layout_up_to_the_assistant_marker() -> None:
    from gpt_lab.data.preferences import prompt_text

    entry = {"instruction": "Say hi.", "input": "twice", "chosen": "hi", "rejected": "no"}
    assert prompt_text(entry, "phi3") == "<|user|>\nSay hi.\ntwice\n<|assistant|>:\n"
    assert prompt_text({**entry, "input": ""}, "phi3") == "<|user|>\nSay hi.\n<|assistant|>:\n"


def test_encode_pair_cuts_to_the_context_and_says_so() -> None:
    entry = {"instruction": "Say hi.", "input": "", "chosen": "hi " * 50, "rejected": "no"}
    pair, cut = encode_pair(entry, "phi3", 20)
    assert cut
    assert len(pair.prompt) + len(pair.chosen) == 20
    assert pair.rejected == [*get_tokenizer().encode("no"), EOT]


def test_collate_masks_the_prompt_and_the_padding() -> None:
    # Pair 0: prompt [1, 2, 3], chosen [4, 5, EOT], rejected [6, EOT].
    # Pair 1: prompt [7], chosen [8, EOT], rejected [9, 9, 9, EOT].
    pairs = [PreferencePair([1, 2, 3], [4, 5, EOT], [6, EOT]), PreferencePair([7], [8, EOT], [9, 9, 9, EOT])]
    inputs, targets = collate_preferences(pairs)
    x = -100
    assert inputs.tolist() == [
        [1, 2, 3, 4, 5],  # chosen of pair 0: 6 tokens, inputs are the first 5
        [7, 8, EOT, EOT, EOT],  # chosen of pair 1, padded
        [1, 2, 3, 6, EOT],  # rejected of pair 0 (its own EOT, then padding)
        [7, 9, 9, 9, EOT],  # rejected of pair 1: the longest, 5 tokens of inputs
    ]
    assert targets.tolist() == [
        [x, x, 4, 5, EOT],
        [8, EOT, x, x, x],
        [x, x, 6, EOT, x],
        [9, 9, 9, EOT, x],
    ]


def test_read_refuses_entries_without_responses_and_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = {"instruction": "a", "chosen": "b", "rejected": "c"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"instruction": "a", "chosen": "b"}) + "\n")
    with pytest.raises(PreferenceDataError, match=r"entry 1 has no rejected field"):
        read_preference_entries(path)


def test_read_says_an_instruction_file_belongs_to_data_instructions(tmp_path: Path) -> None:
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    with pytest.raises(PreferenceDataError, match=r"looks like instruction data.*data=instructions"):
        read_preference_entries(path)


def test_a_preference_file_given_to_data_instructions_says_data_preferences(tmp_path: Path) -> None:
    from gpt_lab.data.entries import InstructionDataError, read_entries

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "chosen": "b", "rejected": "c"}]))
    with pytest.raises(InstructionDataError, match=r"looks like preference data.*experiment=dpo"):
        read_entries(path)


def test_read_maps_field_names(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"question": "a", "context": "x", "good": "b", "bad": "c"}]))
    fields = {"instruction": "question", "input": "context"}
    (entry,) = read_preference_entries(path, chosen_key="good", rejected_key="bad", fields=fields)
    assert (entry["instruction"], entry["input"], entry["chosen"], entry["rejected"]) == ("a", "x", "b", "c")


def test_prompt_style_is_carried_over_from_the_init_from_run(tmp_path: Path) -> None:
    from gpt_lab.data.preferences import carried_prompt_style

    run = tmp_path / "sft"
    run.mkdir()
    (run / "model.pth").write_bytes(b"")
    (run / "model.json").write_text(json.dumps({"kind": "language_model", "prompt_style": "phi3"}))
    assert carried_prompt_style(None, run) == "phi3"
    assert carried_prompt_style(None, run / "model.pth") == "phi3"
    assert carried_prompt_style("alpaca", run) == "alpaca"  # given wins (with a warning)
    assert carried_prompt_style(None, tmp_path / "book.pth") == "alpaca"  # nothing saved: the book's


def test_identical_pairs_are_warned_counted_and_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entries = _entries(20)
    for i in (0, 3):
        entries[i]["rejected"] = entries[i]["chosen"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(entries))
    dm = PreferenceDataModule(path, max_length=64, batch_size=4)
    dm.setup()
    sizes = dm.split_sizes()
    # 20 entries: 17 train, 2 test, 1 validation (the book's int(0.85 n) / int(0.1 n) / rest).
    assert sizes["split_sizes"] == {"train": 15, "val": 1, "test": 2}
    assert sizes["skipped_pairs"]["train"]["identical"] == 2
    assert "2 train pair(s) have chosen == rejected" in caplog.text


# ---------------------------------------------------------------------------------------------
# The objective


def test_response_logprobs_mean_and_sum_against_a_token_loop() -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 11)
    targets = torch.tensor([[-100, 2, 3, -100, -100], [-100, -100, -100, 7, 1], [4, 4, 4, 4, 4]])
    got_sum = response_logprobs(logits, targets, "sum")
    got_mean = response_logprobs(logits, targets, "mean")
    logp = torch.log_softmax(logits.double(), dim=-1)
    for row in range(3):
        picked = [float(logp[row, t, targets[row, t]]) for t in range(5) if targets[row, t] != -100]
        assert float(got_sum[row]) == pytest.approx(sum(picked), rel=1e-6)
        assert float(got_mean[row]) == pytest.approx(sum(picked) / len(picked), rel=1e-6)


def test_dpo_loss_is_minus_logsigmoid_of_beta_times_the_margin() -> None:
    pc, pr, rc, rr = (
        torch.tensor([-1.0, -2.5]),
        torch.tensor([-3.0, -1.0]),
        torch.tensor([-1.5, -2.0]),
        torch.tensor([-2.0, -2.0]),
    )
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    for i in range(2):
        expected = _written_out_dpo(float(pc[i]), float(pr[i]), float(rc[i]), float(rr[i]), 0.1)
        assert float(out.loss[i]) == pytest.approx(expected, rel=1e-6)
    # The book's rewards: policy minus reference log-probabilities, not scaled by beta.
    assert out.chosen_reward.tolist() == pytest.approx([0.5, -0.5])
    assert out.margin.tolist() == pytest.approx([0.5 - -1.0, -0.5 - 1.0])


def _module(logprob: str = "mean") -> DPOLitModule:
    torch.manual_seed(0)
    lit = DPOLitModule({**MODEL, "qkv_bias": False}, lr=1e-3, weight_decay=0.0, beta=0.1, logprob=logprob)
    lit.attach_reference()
    return lit


def _batch() -> tuple[list[dict[str, str]], list[PreferencePair], tuple[torch.Tensor, torch.Tensor]]:
    entries = _entries(3, seed=5)
    pairs = [encode_pair(e, "alpaca", 65)[0] for e in entries]
    return entries, pairs, collate_preferences(pairs)


def test_first_step_loss_is_ln2_and_the_margin_zero() -> None:
    lit = _module().train()  # training mode, as at the first step (the book's DPO model has no dropout)
    _, _, batch = _batch()
    out = lit.pair_losses(batch)
    means = out.means()
    assert torch.equal(out.loss, torch.full_like(out.loss, LN2))  # policy == reference: -logsigmoid(0)
    assert float(means["reward_margin"]) == 0.0
    assert float(means["chosen_reward"]) == 0.0 and float(means["rejected_reward"]) == 0.0
    means["loss"].backward()  # a gradient flows into the policy only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lit.model.parameters())
    assert all(p.grad is None for p in lit.reference.parameters())


@pytest.mark.parametrize("logprob", ["mean", "sum"])
def test_eval_metrics_against_a_written_out_computation(logprob: str) -> None:
    lit = _module(logprob)
    with torch.no_grad():  # move the policy away from the reference
        for p in lit.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _, pairs, batch = _batch()
    got = lit.eval_metrics([batch])
    losses, margins = [], []
    for pair in pairs:
        pc = _written_out_logprob(lit.model, pair.prompt, pair.chosen, logprob)
        pr = _written_out_logprob(lit.model, pair.prompt, pair.rejected, logprob)
        rc = _written_out_logprob(lit.reference, pair.prompt, pair.chosen, logprob)
        rr = _written_out_logprob(lit.reference, pair.prompt, pair.rejected, logprob)
        losses.append(_written_out_dpo(pc, pr, rc, rr, 0.1))
        margins.append((pc - rc) - (pr - rr))
    assert got["loss"] == pytest.approx(sum(losses) / 3, rel=1e-4)
    assert got["reward_margin"] == pytest.approx(sum(margins) / 3, rel=1e-4, abs=1e-6)
    assert got["loss"] != pytest.approx(LN2, abs=1e-4)  # the check above is not the trivial start


LORA = {"rank": 2, "alpha": 4, "targets": ["all"], "scaling": "rank"}


def test_lora_reference_is_the_frozen_copy_exactly() -> None:
    """finetune=lora keeps no second model: the base with its adapters off gives the frozen copy's numbers,
    bit for bit, before and after the adapters have moved."""
    torch.manual_seed(0)
    state = GPTModel({**MODEL, "qkv_bias": False}).state_dict()
    full = DPOLitModule({**MODEL, "qkv_bias": False}, lr=1e-3, weight_decay=0.0)
    full.model.load_state_dict(state)
    full.attach_reference(state)
    lora = DPOLitModule(
        {**MODEL, "qkv_bias": False}, lr=1e-3, weight_decay=0.0, shared_reference=True, finetune="lora", lora=LORA
    )
    lora.model.load_state_dict(state, strict=False)  # the base weights; the adapters keep B = 0
    lora.attach_reference(state)
    assert lora.reference is None
    _, _, (inputs, targets) = _batch()
    copy_ref = full._reference_logprobs(inputs, targets)
    assert torch.equal(lora._reference_logprobs(inputs, targets), copy_ref)
    assert torch.equal(lora.pair_losses((inputs, targets)).loss, torch.full((3,), LN2))  # B = 0: policy == base
    with torch.no_grad():  # the adapters after some training
        for name, param in lora.model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.1)
    assert torch.equal(lora._reference_logprobs(inputs, targets), copy_ref)
    assert not torch.equal(response_logprobs(lora.model(inputs), targets), copy_ref)  # the policy has moved
    assert all(layer.lora_enabled for layer in lora.model.modules() if hasattr(layer, "lora_enabled"))


def test_reference_stays_frozen_in_eval_mode_and_out_of_checkpoints() -> None:
    lit = _module()
    lit.train()
    assert not lit.reference.training and lit.model.training
    assert not any(k.startswith("reference.") for k in lit.state_dict())
    assert all(not p.requires_grad for p in lit.reference.parameters())
    before = {k: v.clone() for k, v in lit.reference.state_dict().items()}
    lit.load_state_dict(lit.state_dict())  # a checkpoint without the reference loads, strict
    for key, value in lit.reference.state_dict().items():
        assert torch.equal(value, before[key])


def test_resume_against_another_reference_is_refused() -> None:
    saved: dict = {}
    _module().on_save_checkpoint(saved)
    other = _module()
    with torch.no_grad():
        next(other.reference.parameters()).add_(1.0)
    with pytest.raises(UserError, match="another reference model"):
        other.on_load_checkpoint(saved)


# ---------------------------------------------------------------------------------------------
# experiment=dpo


def test_experiment_dpo_has_the_books_settings(dpo_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = validate_config(dpo_config(tmp_path, "optim.lr=5e-6", "data.batch_size=8", "trainer.val_check_interval=5"))
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.batch_size) == (5e-6, 0.01, 8)
    assert (cfg.trainer.max_epochs, cfg.dpo.beta, cfg.dpo.logprob, cfg.model.drop_rate) == (1, 0.1, "mean", 0.0)
    assert cfg.task.name == "train" and cfg.objective.lit_module.endswith("DPOLitModule")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dpo.beta=0", r"dpo.beta=0.0 must be a number in \(0, 100\]"),
        ("dpo.beta=-0.1", r"dpo.beta=-0.1 must be a number in \(0, 100\]"),
        ("dpo.logprob=median", r"dpo.logprob=median must be one of mean, response_mean, sum"),
        ("init_from=null", r"data=preferences \(DPO\) needs a starting model: init_from="),
    ],
)
def test_bad_dpo_settings_are_config_errors(
    dpo_config: Callable[..., DictConfig], tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(dpo_config(tmp_path, override))


def test_dpo_run_writes_metrics_plot_and_both_responses(
    dpo_config: Callable[..., DictConfig], files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    # response_mean: the written-out check below averages over the response and its end-of-text (the
    # default, the book's mask, is checked in test_finetune_results.py).
    results = run_task(dpo_config(out, "dpo.logprob=response_mean"))
    # Before the first step the policy is the reference.
    assert abs(results["initial_val_loss"] - LN2) < 1e-7 and abs(results["initial_train_loss"] - LN2) < 1e-7
    assert results["initial_val_reward_margin"] == 0.0
    # Trained on its pairs, the policy prefers the chosen responses.
    assert results["train_reward_margin"] > 0 and results["train_loss"] < LN2
    assert results["split_sizes"] == {"train": 17, "val": 1, "test": 2}
    assert results["dpo_reference"] == "frozen_copy"

    # The final validation metrics, written out from the saved policy and the starting weights.
    policy = GPTModel({**MODEL, "qkv_bias": False})
    policy.load_state_dict(torch.load(out / "model.pth", weights_only=True), strict=False)
    reference = GPTModel({**MODEL, "qkv_bias": False})
    reference.load_state_dict(torch.load(files["init"], weights_only=True), strict=False)
    (val_entry,) = _entries(20)[19:]  # 17 train, 2 test, then validation
    pair, _ = encode_pair(val_entry, "alpaca", 65)
    lp = {
        (who, side): _written_out_logprob(model, pair.prompt, getattr(pair, side), "mean")
        for who, model in (("p", policy), ("r", reference))
        for side in ("chosen", "rejected")
    }
    expected = _written_out_dpo(lp["p", "chosen"], lp["p", "rejected"], lp["r", "chosen"], lp["r", "rejected"], 0.1)
    assert results["val_loss"] == pytest.approx(expected, rel=1e-4)
    margin = (lp["p", "chosen"] - lp["r", "chosen"]) - (lp["p", "rejected"] - lp["r", "rejected"])
    assert results["val_reward_margin"] == pytest.approx(margin, rel=1e-4)

    assert (out / "dpo-plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    responses = json.loads((out / "test-responses.json").read_text())
    assert [r["instruction"] for r in responses] == [e["instruction"] for e in _entries(20)[17:19]]
    assert all(isinstance(r["model_response"], str) and isinstance(r["reference_response"], str) for r in responses)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (out / "tensorboard").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/reward_margin", "val/loss", "val/reward_margin", "val/chosen_reward"} <= tags
    first = events.Scalars("val/reward_margin")[0]
    assert (first.step, first.value) == (0, 0.0)


def test_dpo_with_lora_trains_the_adapters_against_the_base(
    dpo_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    out = tmp_path / "lora"
    results = run_task(dpo_config(out, "finetune=lora", "lora.rank=2", "logger=none", "dpo.test_responses=1"))
    assert results["dpo_reference"] == "lora_base"
    assert abs(results["initial_val_loss"] - LN2) < 1e-7 and results["initial_val_reward_margin"] == 0.0
    assert 0 < results["trainable_params"] < results["total_params"] // 10
    assert results["train_reward_margin"] > 0
    meta = json.loads((out / "model.json").read_text())
    assert (meta["prompt_style"], meta["finetune"]) == ("alpaca", "lora")
    responses = json.loads((out / "test-responses.json").read_text())
    assert set(responses[0]) >= {"model_response", "reference_response"}


def test_dpo_resumes_with_ckpt_path_last(dpo_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    quick = ("logger=none", "dpo.test_responses=0", "trainer.val_check_interval=4")
    whole = run_task(dpo_config(tmp_path / "whole", *quick, "trainer.max_epochs=2"))
    run_task(dpo_config(tmp_path / "resumed", *quick, "trainer.max_epochs=1"))
    resumed = run_task(dpo_config(tmp_path / "resumed", *quick, "trainer.max_epochs=2", "ckpt_path=last"))
    for key in ("initial_val_loss", "val_loss", "val_reward_margin", "train_loss", "tokens_seen", "global_step"):
        assert resumed[key] == whole[key], key
    assert resumed["dpo_curve"] == whole["dpo_curve"]
    a = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # three DPO runs (~30 s on two busy cores); test_finetune_inputs' case 7 covers the callback fast
def test_dpo_sigterm_on_an_evaluation_step_resumes_with_the_whole_curve(
    dpo_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """Issue 30 case 7: stopped during step 4, which is evaluated, the resumed run's curve lacked step 4."""
    from gpt_lab.run.status import RunInterrupted

    quick = (
        "logger=none",
        "dpo.test_responses=0",
        "trainer.val_check_interval=2",
        "trainer.max_steps=6",
        "trainer.max_epochs=2",
    )
    whole = run_task(dpo_config(tmp_path / "whole", *quick))
    sigterm = ("+callbacks.signal._target_=test_long_runs.SignalAtBatch", "+callbacks.signal.batch=3")
    with pytest.raises(RunInterrupted) as stopped:
        run_task(dpo_config(tmp_path / "resumed", *quick, *sigterm))
    assert stopped.value.step == 4
    resumed = run_task(dpo_config(tmp_path / "resumed", *quick, "ckpt_path=last"))
    assert [row["step"] for row in whole["dpo_curve"]] == [0, 2, 4, 6]
    assert resumed["dpo_curve"] == whole["dpo_curve"]


def test_cli_without_init_from_exits_2_with_one_paragraph(run_cli: Callable, files: dict[str, Path]) -> None:
    done = run_cli("experiment=dpo", *MODEL_OVERRIDES, f"data.path={files['pairs']}")
    assert done.returncode == 2
    assert "init_from=" in done.stderr and "Traceback" not in done.stderr
