"""Issue 27, second half: fine-tuning results checked against second computations written out here —
merged heads, classification heads under LoRA, batch-independent pooling, token-weighted losses,
DPO's log-probabilities, LoRA's initialisation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from configs import TINY

from gpt_lab.model.finetuned import save_finetuned
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.lora import apply_lora, lora_layers


def test_model_json_says_untied_after_a_merge_that_untied_the_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPTModel({**TINY, "tie_weights": True, "drop_rate": 0.0})
    apply_lora(model, rank=2, alpha=2, targets=["all"])
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B)  # a trained adapter: the head's update is not zero
    save_finetuned(model, tmp_path, {"finetune": "lora"})
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["model"]["tie_weights"] is False
    # The saved config rebuilds the merged model: x W^T + scale * x A B, the head's own update included.
    rebuilt = GPTModel(meta["model"]).eval()
    state = torch.load(tmp_path / "model.pth", weights_only=True)
    rebuilt.load_state_dict({k: v for k, v in state.items() if not k.endswith(".att.mask")})
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(idx), model.eval()(idx), atol=1e-4, rtol=1e-4)  # merged: round-off
    assert not torch.equal(rebuilt.out_head.weight, rebuilt.tok_emb.weight)


def test_a_new_classification_head_left_out_of_lora_targets_trains_whole() -> None:
    from gpt_lab.training.classifier import ClassifierLitModule

    cfg = {**TINY, "drop_rate": 0.0}
    lora = {"rank": 2, "alpha": 2, "targets": ["attention"]}
    lit = ClassifierLitModule(cfg, ["ham", "spam"], lr=1e-3, weight_decay=0.0, finetune="lora", lora=lora)
    head = lit.model.out_head
    assert all(p.requires_grad for p in head.parameters())
    # Hand count: rank-2 adapters on 4 attention Linears (16 -> 16) in 2 blocks, plus the whole 16 -> 2 head.
    adapters = 2 * 4 * (16 * 2 + 2 * 16)
    assert lit.trainable_params == adapters + (16 * 2 + 2)
    # Appendix E's targets=all wraps the new head too: it trains through its adapter, as the book counts.
    lit_all = ClassifierLitModule(
        cfg, ["ham", "spam"], lr=1e-3, weight_decay=0.0, finetune="lora", lora={**lora, "targets": ["all"]}
    )
    assert not lit_all.model.out_head.weight.requires_grad and lit_all.model.out_head.lora_B.requires_grad


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (("classifier.pooling=last",), True),
        (("classifier.pooling=mean",), True),
        (("classifier.pooling=last_nonpad", "causal_mask=off"), True),
        (("classifier.pooling=last_nonpad",), False),
        (("classifier.pooling=first",), False),
        (("classifier.pooling=last", "data.batch_size=1"), False),
    ],
)
def test_pad_false_with_a_pooling_that_reads_padding_is_refused(compose_config, overrides, refused) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError

    cfg = compose_config("experiment=ch06", "model=tiny", "data.pad=false", "data.batch_size=4", *overrides)
    if refused:
        with pytest.raises(ConfigError, match=r"data.pad=false with .* a text's class would depend on its batch"):
            validate_config(cfg)
    else:
        validate_config(cfg)


@pytest.mark.parametrize("pooling", ["last_nonpad", "first"])
def test_the_poolings_pad_false_allows_give_a_text_the_same_logits_alone_and_batched(pooling: str) -> None:
    from gpt_lab.model.classifier import pooled_logits, replace_head

    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": 0.0, "vocab_size": 50257})
    replace_head(model, 2)
    model.eval()
    short, longer = [11, 12, 13], [21, 22, 23, 24, 25, 26]
    batch = torch.tensor([short + [50256] * 3, longer])  # pad=false: padded to the batch's longest text
    with torch.no_grad():
        alone = pooled_logits(model, torch.tensor([short]), pooling)
        batched = pooled_logits(model, batch, pooling)
    torch.testing.assert_close(batched[0:1], alone)


def test_logged_val_loss_of_instruction_tuning_is_results_val_loss_over_unequal_batches() -> None:
    """Batches of 3 and 1 entries with different target counts: the logged val/loss is the book's
    calc_loss_loader (mean of batch means), written out here, as results.json's val_loss is."""
    import lightning as L

    from gpt_lab.data.instructions import collate_instructions
    from gpt_lab.training.instruction_module import InstructionLitModule

    torch.manual_seed(0)
    cfg = {**TINY, "vocab_size": 50257, "context_length": 32, "drop_rate": 0.0}
    lit = InstructionLitModule(cfg, lr=1e-3, weight_decay=0.0)
    items = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [19, 20, 21]]
    batches = [collate_instructions(items[:3]), collate_instructions(items[3:])]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the two batches as they are
    (logged,) = trainer.validate(lit, dataloaders=loader, verbose=False)
    lit.model.eval()
    with torch.no_grad():
        means = []
        for inputs, targets in batches:
            logits = lit.model(inputs)
            keep = targets != -100
            logp = torch.log_softmax(logits.double(), dim=-1)
            means.append(float(-logp[keep].gather(-1, targets[keep].unsqueeze(-1)).mean()))
    assert logged["val/loss"] == pytest.approx(sum(means) / 2, rel=1e-5)
    assert lit.mean_loss(batches) == pytest.approx(sum(means) / 2, rel=1e-5)


ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def _book_dpo_logprob(model: GPTModel, entry: dict[str, str], response: str) -> float:
    """The book's DPO notebook, written out: the whole text tokenized at once, no end-of-text; the mask
    starts 2 tokens after the instruction's own tokens (prompt_len + 2); the mean over the masked labels."""
    from gpt_lab.tokenizer import get_tokenizer

    tok = get_tokenizer()
    instruction = f"{ALPACA}\n\n### Instruction:\n{entry['instruction']}"
    instruction += f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    full = tok.encode(f"{instruction}\n\n### Response:\n{response}")
    first = len(tok.encode(instruction)) + 2
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(torch.tensor([full]))[0].double(), dim=-1)
    picked = [float(logp[i - 1, full[i]]) for i in range(first, len(full))]
    return sum(picked) / len(picked)


def test_dpo_mean_logprob_is_the_books_by_default_and_response_mean_is_the_other(tmp_path: Path) -> None:
    from gpt_lab.data.preferences import PreferenceDataModule
    from gpt_lab.training.dpo import response_logprobs

    entries = [
        {"instruction": "Name a colour.", "input": "", "chosen": "Red.", "rejected": "A colour is a thing."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "It is six."},
    ] * 5
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    torch.manual_seed(0)
    model = GPTModel({**TINY, "vocab_size": 50257, "context_length": 96, "drop_rate": 0.0}).eval()
    got = {}
    for logprob in ("mean", "response_mean"):
        data = PreferenceDataModule(path, max_length=96, batch_size=2, logprob=logprob)
        data.setup("fit")
        inputs, targets = next(iter(data.eval_dataloader("train")))
        with torch.no_grad():
            got[logprob] = response_logprobs(model(inputs), targets, "mean")
    train = data.entries["train"][:2]
    book = [_book_dpo_logprob(model, e, e[side]) for side in ("chosen", "rejected") for e in train]
    torch.testing.assert_close(got["mean"].double(), torch.tensor(book, dtype=torch.float64), atol=1e-5, rtol=1e-5)
    # response_mean: the response and its end-of-text, nothing of the header (instruction tuning's targets).
    assert not torch.allclose(got["response_mean"].double(), torch.tensor(book, dtype=torch.float64), atol=1e-3)


def test_a_text_spelling_endoftext_is_text_in_classification_not_padding(tmp_path: Path) -> None:
    from gpt_lab.data.classification import ClassificationDataModule
    from gpt_lab.model.classifier import encode_for_classification, last_nonpad_positions
    from gpt_lab.tokenizer import get_tokenizer

    tok = get_tokenizer()
    text = "win <|endoftext|> now"
    ids = encode_for_classification(tok, text, max_length=12, context_length=64)
    assert ids[: len(tok.encode_ordinary(text))] == tok.encode_ordinary(text) and 50256 not in ids[:5]
    # last_nonpad reads the last token of the text ("now"), not the token before a 50256 inside it.
    assert int(last_nonpad_positions(torch.tensor([ids]))[0]) == len(tok.encode_ordinary(text)) - 1
    rows = [("ham", "see you <|endoftext|> later"), ("spam", "win money")] * 10
    path = tmp_path / "sms.tsv"
    path.write_text("".join(f"{label}\t{t}\n" for label, t in rows), encoding="utf-8")
    data = ClassificationDataModule(context_length=64, path=path, batch_size=2, output_dir=tmp_path)
    data.setup("fit")
    encoded = [x for x, _ in data.datasets["train"]]
    assert all(50256 not in x[: len(tok.encode_ordinary("see you <|endoftext|> later"))] for x in encoded)


def test_a_sharded_models_file_is_written_from_the_gathered_state(tmp_path: Path) -> None:
    """Under FSDP rank 0's own parameters are shards: the file comes from the gathered whole state dict,
    its adapters merged as W + scale * (A @ B)^T, written out here."""
    from types import SimpleNamespace

    from gpt_lab.training.fsdp import gathered_model_state

    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": 0.0})
    apply_lora(model, rank=2, alpha=4, targets=["W_query"])
    whole = {k: torch.randn_like(v) for k, v in model.state_dict().items()}  # what the gather returns
    with torch.no_grad():  # the rank's own copy: not the model (a shard, here zeros)
        for p in model.parameters():
            p.zero_()
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(
            lightning_module_state_dict=lambda: {
                **{f"model.{k}": v for k, v in whole.items()},
                "reference.tok_emb.weight": torch.zeros(1),
            }
        )
    )
    state = gathered_model_state(trainer)
    assert set(state) == set(whole)
    save_finetuned(model, tmp_path, {"finetune": "lora"}, state)
    saved = torch.load(tmp_path / "model.pth", weights_only=True)
    key = "trf_blocks.0.att.W_query"
    expected = whole[f"{key}.weight"] + (4 / 2) * (whole[f"{key}.lora_A"] @ whole[f"{key}.lora_B"]).T
    torch.testing.assert_close(saved[f"{key}.weight"], expected)
    torch.testing.assert_close(saved["tok_emb.weight"], whole["tok_emb.weight"])
    assert not any(k.endswith(("lora_A", "lora_B")) for k in saved)


def test_lora_init_book_draws_a_with_bound_one_over_sqrt_rank_and_peft_over_sqrt_in() -> None:
    """Appendix E stores A as (in, rank): Kaiming-uniform's fan_in is the rank (bound 1/sqrt(16) = 0.25);
    peft / litgpt / torchtune draw A as (rank, in): bound 1/sqrt(768) = 0.036, their values for a seed."""
    from gpt_lab.model.lora import LoRALinear

    base = torch.nn.Linear(768, 768)
    torch.manual_seed(1)
    book = LoRALinear.from_linear(base, rank=16, alpha=16).lora_A.detach()
    torch.manual_seed(1)
    peft = LoRALinear.from_linear(base, rank=16, alpha=16, init="peft").lora_A.detach()
    assert book.shape == peft.shape == (768, 16)
    assert 0.24 < float(book.abs().max()) <= 0.25
    bound = 1 / math.sqrt(768)
    assert 0.95 * bound < float(peft.abs().max()) <= bound
    # The anchors' draw written out: uniform(-1/sqrt(in), 1/sqrt(in)) over a (rank, in) tensor, transposed.
    torch.manual_seed(1)
    expected = torch.empty(16, 768).uniform_(-bound, bound).T
    torch.testing.assert_close(peft, expected)


def test_lora_init_is_a_config_key_and_a_bad_value_names_the_choices(compose_config) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError
    from gpt_lab.model.finetune import select_trainable

    assert validate_config(compose_config("finetune=lora")).lora.init == "book"
    cfg = validate_config(compose_config("finetune=lora", "lora.init=peft", "lora.rank=2", "lora.targets=[W_query]"))
    model = GPTModel({**TINY, "emb_dim": 64, "n_heads": 4})
    torch.manual_seed(3)
    select_trainable(model, "lora", cfg.lora)
    assert float(model.trf_blocks[0].att.W_query.lora_A.abs().max()) <= 1 / math.sqrt(64)  # not 1/sqrt(2)
    with pytest.raises(ConfigError, match=r"lora.init=kaiming is not an initialisation; choose one of book, peft"):
        validate_config(compose_config("finetune=lora", "lora.init=kaiming"))


def test_classifier_loss_curve_starts_at_step_0_with_the_initial_losses(compose_config, tmp_path: Path) -> None:
    from configs import TINY_RUN

    from gpt_lab.run.job import run_task

    rows = [("ham", f"see you at {i} today") for i in range(12)] + [("spam", f"win {i} prizes now") for i in range(12)]
    data = tmp_path / "sms.tsv"
    data.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    cfg = compose_config(
        "experiment=ch06",
        *TINY_RUN,
        f"data.path={data}",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.val_check_interval=4",  # one evaluation, at the epoch's last step
        "callbacks.progress_bar=null",
        "+trainer.enable_model_summary=false",
        "logger=csv",
        run_dir=tmp_path / "run",
    )
    results = run_task(cfg)
    history = results["eval_history"]
    assert [r["step"] for r in history] == [0, 4]
    assert (history[0]["examples_seen"], history[0]["epoch"]) == (0, 0.0)
    assert history[0]["val_loss"] == results["initial_val_loss"]
    assert history[0]["train_loss"] == results["initial_train_loss"]
    assert (tmp_path / "run" / "loss-plot.png").is_file()
