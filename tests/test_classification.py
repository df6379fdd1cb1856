"""Chapter 6: labelled data (the book's balance / shuffle / split), pooling, the classifier, task=classify.

Independent expectations: the book's split sizes (1,045 / 149 / 300), pandas' ``sample`` written as
its own numpy call (``RandomState(seed).choice(n, k, replace=False)``), attention written out,
precision / recall / F1 counted by hand, the book's ``classify_review`` steps spelled out.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from configs import TINY, TINY_RUN
from omegaconf import DictConfig
from torch import nn

from gpt_lab.config import validate_config
from gpt_lab.data.classification import ClassificationDataModule
from gpt_lab.data.labelled import Example, read_labelled, split_examples
from gpt_lab.data.text import DataError
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.model.classifier import NotAClassifierError, classify, pooled_logits
from gpt_lab.model.gpt import GPTModel, MultiHeadAttention
from gpt_lab.run.job import run_task
from gpt_lab.tokenizer import get_tokenizer
from gpt_lab.training.classification_report import class_metrics
from gpt_lab.training.classifier import ClassifierLitModule

HAM = ["see you at lunch", "how was the game", "call me later", "the meeting moved", "thanks for dinner"]
SPAM = ["win a prize now", "free money click here", "urgent offer call now", "you won cash"]


def _sms_file(path: Path, n_ham: int = 30, n_spam: int = 10) -> Path:
    """A header-less SMS-layout file: label<TAB>text, ham first as in the real file, each text unique."""
    lines = [f"ham\t{HAM[i % len(HAM)]} {i}" for i in range(n_ham)]
    lines += [f"spam\t{SPAM[i % len(SPAM)]} {i}" for i in range(n_spam)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _module(tmp_path: Path, **kwargs) -> ClassificationDataModule:
    kwargs.setdefault("context_length", 32)
    kwargs.setdefault("batch_size", 2)
    dm = ClassificationDataModule(output_dir=tmp_path, **kwargs)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------------------------
# The book's data procedure


def test_balance_shuffle_split_are_pandas_sample_with_random_state_123(tmp_path: Path) -> None:
    path = _sms_file(tmp_path / "sms.tsv", n_ham=30, n_spam=10)
    dm = _module(tmp_path, path=path, balance=True, header=False)
    # The book, written with the numpy call pandas' sample makes (RandomState(seed).choice without replacement):
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    ham = [r for r in rows if r[0] == "ham"]
    spam = [r for r in rows if r[0] == "spam"]
    ham_subset = [ham[i] for i in np.random.RandomState(123).choice(len(ham), size=len(spam), replace=False)]
    balanced = ham_subset + spam  # pd.concat([ham_subset, spam])
    shuffled = [balanced[i] for i in np.random.RandomState(123).choice(len(balanced), len(balanced), replace=False)]
    train_end = int(len(shuffled) * 0.7)
    val_end = train_end + int(len(shuffled) * 0.1)
    expected = {"train": shuffled[:train_end], "val": shuffled[train_end:val_end], "test": shuffled[val_end:]}
    for split, want in expected.items():
        assert [[e.label, e.text] for e in dm.splits[split]] == want, split
    assert dm.class_names == ["ham", "spam"]  # ham -> 0, spam -> 1 as the book maps them
    # The run directory holds the splits, readable back as files already split.
    for split, name in (("train", "train.csv"), ("val", "validation.csv"), ("test", "test.csv")):
        back = read_labelled(tmp_path / name, "data.train_path")
        assert [[e.label, e.text] for e in back] == expected[split]


def test_split_sizes_of_the_balanced_sms_data_are_the_books() -> None:
    examples = [Example(f"t{i}", "ham" if i % 2 else "spam") for i in range(747 * 2)]
    sizes = {k: len(v) for k, v in split_examples(examples, 0.7, 0.1, 123).items()}
    assert sizes == {"train": 1045, "val": 149, "test": 300}


def test_header_csv_with_named_columns_and_three_presplit_files(tmp_path: Path) -> None:
    def write(name: str, rows: list[tuple[str, str]]) -> Path:
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "Text", "Label"])
            w.writerows([(i, text, label) for i, (label, text) in enumerate(rows)])
        return tmp_path / name

    train = write("a.csv", [("neg", 'bad, "awful"'), ("pos", "good"), ("neg", "meh"), ("pos", "great")])
    val = write("b.csv", [("pos", "fine")])
    test = write("c.csv", [("neg", "poor")])
    out = tmp_path / "run"
    dm = _module(out, split_paths={"train": train, "val": val, "test": test}, label_column="Label", text_column="Text")
    assert dm.splits["train"][0].text == 'bad, "awful"'  # CSV quoting
    assert dm.class_names == ["neg", "pos"]
    assert dm.split_sizes() == {"split_sizes": {"train": 4, "val": 1, "test": 1}}


def test_padding_to_the_longest_training_text_and_truncation(tmp_path: Path, caplog) -> None:
    long_text = " ".join(["word"] * 40)  # 40 tokens: longer than the 16-token context below
    files = {}
    for split, body in (
        ("train", f"a\tone two three\nb\tfour\na\t{long_text}\n"),
        ("val", "b\tfive six seven eight nine ten\n"),
        ("test", "a\televen\n"),
    ):
        files[split] = tmp_path / f"{split}.tsv"
        files[split].write_text(body, encoding="utf-8")
    enc = get_tokenizer().encode
    dm = _module(tmp_path / "run", split_paths=files, context_length=64)
    assert dm.max_length == 40  # the longest training text
    ids, labels = next(iter(dm.eval_dataloader("train")))
    assert ids.shape == (2, 40)
    assert ids[0].tolist() == enc("one two three") + [50256] * 37
    assert labels.tolist() == [0, 1]
    # A context shorter than the longest text: cut to the context, with a warning that counts the texts.
    with caplog.at_level(logging.WARNING):
        short = _module(tmp_path / "short", split_paths=files, context_length=4)
    assert short.max_length == 4 and short.truncated == {"train": 1, "val": 1, "test": 0}
    assert "Truncating 1 training, 1 validation and 0 test text(s)" in caplog.text
    val_ids = next(iter(short.eval_dataloader("val")))[0]
    assert val_ids.tolist() == [enc("five six seven eight nine ten")[:4]]
    # max_length=context pads everything to the context (the bonus table's "pad to 1024").
    padded = _module(tmp_path / "ctx", split_paths=files, context_length=64, max_length="context")
    assert next(iter(padded.eval_dataloader("val")))[0].shape == (1, 64)
    # pad=false: each batch padded to its own longest text only (batch 1: no padding).
    own = _module(tmp_path / "own", split_paths=files, context_length=64, pad=False, batch_size=1)
    assert [b[0].shape[1] for b in own.eval_dataloader("train")] == [3, 1, 40]


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (None, {}, "does not exist"),
        ("", {}, r"is empty"),
        ("label,body\nx,y\n", {"header": True}, r"no column data.text_column=text"),
        ("a\tone\na\ttwo\na\tthree\na\tfour\n", {}, r"one class only"),
        ("a\tone\nb\t \na\tthree\n", {}, r"line 2 has an empty text"),
    ],
)
def test_bad_labelled_files_are_data_errors_naming_the_setting(tmp_path: Path, content, kwargs, message) -> None:
    path = tmp_path / ("f.csv" if "," in (content or "") else "f.tsv")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        _module(tmp_path, path=path, **kwargs)


def test_label_in_validation_that_training_never_saw_is_a_data_error(tmp_path: Path) -> None:
    files = {}
    for split, body in (("train", "a\tx\nb\ty\n"), ("val", "c\tz\n"), ("test", "a\tw\n")):
        files[split] = tmp_path / f"{split}.tsv"
        files[split].write_text(body, encoding="utf-8")
    with pytest.raises(DataError, match=r"the val split has label.*'c'.*never"):
        _module(tmp_path, split_paths=files, batch_size=1)


# ---------------------------------------------------------------------------------------------
# The model side


def test_pooling_reads_the_configured_position() -> None:
    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": 0.0, "num_classes": 3}).eval()
    idx = torch.tensor([[5, 6, 7, 50256 % 64, 50256 % 64], [1, 2, 3, 4, 5]])
    pad = 50256 % 64  # a padding id inside the tiny vocabulary
    full = model(idx)  # (2, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(pooled_logits(model, idx, "last"), full[:, -1])
        torch.testing.assert_close(pooled_logits(model, idx, "first"), full[:, 0])
        torch.testing.assert_close(pooled_logits(model, idx, "mean"), full.mean(dim=1))
        torch.testing.assert_close(
            pooled_logits(model, idx, "last_nonpad", pad_token_id=pad), torch.stack([full[0, 2], full[1, 4]])
        )


def test_causal_mask_off_lets_every_position_see_the_whole_text(compose_config) -> None:
    cfg = validate_config(compose_config("model=tiny", "causal_mask=off"))
    assert cfg.model.causal_mask is False and GPTModel(cfg.model).trf_blocks[0].att.causal is False
    assert GPTModel(validate_config(compose_config("model=tiny")).model).trf_blocks[0].att.causal is True
    torch.manual_seed(0)
    att = MultiHeadAttention(8, 8, context_length=6, dropout=0.0, num_heads=2, causal=False)
    x = torch.randn(1, 5, 8)
    # Attention without a mask, written out.
    q, k, v = (lin(x).view(1, 5, 2, 4).transpose(1, 2) for lin in (att.W_query, att.W_key, att.W_value))
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1)
    expected = att.out_proj((weights @ v).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(att(x), expected)
    # The default stays the book's causal model: the first position ignores later ones.
    torch.manual_seed(0)
    causal = GPTModel({**TINY, "drop_rate": 0.0}).eval()
    torch.manual_seed(0)
    open_ = GPTModel({**TINY, "drop_rate": 0.0, "causal_mask": False}).eval()
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 9, 9]])
    with torch.no_grad():
        assert torch.equal(causal(a)[:, 0], causal(b)[:, 0])
        assert not torch.allclose(open_(a)[:, 0], open_(b)[:, 0])


def test_classifier_replaces_the_head_after_seeding_and_trains_the_books_part() -> None:
    cfg = {**TINY, "drop_rate": 0.0, "qkv_bias": True}
    torch.manual_seed(1)
    pretrained = GPTModel(cfg).state_dict()
    lit = ClassifierLitModule(cfg, ["ham", "spam"], lr=5e-5, weight_decay=0.1, seed=123, init_state=pretrained)
    torch.manual_seed(123)
    expected_head = nn.Linear(16, 2)  # the book: torch.manual_seed(123); model.out_head = Linear(768, 2)
    torch.testing.assert_close(lit.model.out_head.weight, expected_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(lit.model.out_head.bias, expected_head.bias, rtol=0, atol=0)
    torch.testing.assert_close(lit.model.tok_emb.weight, pretrained["tok_emb.weight"])
    block = sum(p.numel() for p in lit.model.trf_blocks[-1].parameters())
    assert lit.trainable_params == (16 * 2 + 2) + block + 2 * 16  # head + last block + final norm


def test_class_metrics_are_the_hand_counted_ones() -> None:
    preds = torch.tensor([0, 0, 1, 1, 1, 2])
    targets = torch.tensor([0, 1, 1, 1, 2, 2])
    m = class_metrics(preds, targets, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 1, 1]]
    assert m["precision"] == pytest.approx({"a": 1 / 2, "b": 2 / 3, "c": 1.0})
    assert m["recall"] == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 1 / 2})
    assert m["f1"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 2 / 3})


# ---------------------------------------------------------------------------------------------
# Runs

SMALL = [
    "experiment=ch06",
    *TINY_RUN,
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "trainer.val_check_interval=3",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "logger=csv",
]


@pytest.fixture
def classify_run(compose_config: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., dict]:
    data = _sms_file(tmp_path / "sms.tsv", n_ham=24, n_spam=12)
    return lambda out, *overrides: run_task(compose_config(*SMALL, f"data.path={data}", *overrides, run_dir=out))


def test_ch06_run_writes_accuracies_splits_figures_and_a_classifier_that_loads(
    tmp_path: Path, classify_run, compose_config
) -> None:
    out = tmp_path / "run"
    r = classify_run(out)
    assert r["status"] == "completed"
    assert r["split_sizes"] == {"train": 16, "val": 2, "test": 6}  # 12 + 12 balanced: int(16.8), int(2.4), rest
    assert r["class_names"] == ["ham", "spam"]
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "initial_train_accuracy"):
        assert 0.0 <= r[key] <= 1.0
    assert sum(map(sum, r["test_metrics"]["confusion_matrix"])) == 6
    for name in ("train.csv", "validation.csv", "test.csv", "model.pth", "model.json"):
        assert (out / name).is_file(), name
    for name in ("loss-plot.png", "accuracy-plot.png", "confusion-matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # save -> load -> classify, against the book's classify_review written out.
    texts = ["win a prize now 99", "see you at lunch 99"]
    got = classify(out, texts)
    meta = json.loads((out / "model.json").read_text())
    model = GPTModel(meta["model"]).eval()
    state = torch.load(out / "model.pth", weights_only=True)
    model.load_state_dict(state)
    tok = get_tokenizer()
    for text, pred in zip(texts, got, strict=True):
        ids = tok.encode(text)[: min(meta["max_length"], 16)]
        ids += [50256] * (meta["max_length"] - len(ids))
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids]))[:, -1, :], dim=-1)[0]
        assert pred["label"] == meta["class_names"][int(probs.argmax())]
        assert pred["probability"] == pytest.approx(float(probs.max()), abs=1e-6)
    # task=classify: the same through the config.
    cfg = compose_config("task=classify", f"init_from={out}", f"text='{texts[0]}'", run_dir=tmp_path / "classify")
    done = run_task(cfg)
    assert done["predictions"][0]["label"] == got[0]["label"]


def test_accuracy_before_training_reads_the_books_shuffled_batches(
    tmp_path: Path, classify_run, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = ClassificationDataModule.book_shuffled_dataloader

    def recording(self):  # type: ignore[no-untyped-def]
        for batch in original(self):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(ClassificationDataModule, "book_shuffled_dataloader", recording)
    r = classify_run(tmp_path / "run", "classifier.initial_eval_batches=2", "trainer.max_steps=1")
    # The book: torch.manual_seed(123), then its train_loader (shuffle=True, drop_last=True, batch 4
    # here). Iterating a DataLoader draws its workers' base seed from torch's generator, then the
    # sampler draws a seed and permutes the 16 training texts with it.
    torch.manual_seed(123)
    torch.empty((), dtype=torch.int64).random_()  # the loader's base seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    order = torch.randperm(16, generator=torch.Generator().manual_seed(seed)).tolist()
    rows = list(csv.DictReader((tmp_path / "run" / "train.csv").open(encoding="utf-8")))
    tok = get_tokenizer()
    read = [tok.decode([t for t in ids.tolist() if t != 50256]) for inputs, _ in seen[:2] for ids in inputs]
    assert read == [rows[i]["text"] for i in order[:8]]
    labels = torch.cat([labels for _, labels in seen[:2]]).tolist()
    assert labels == [["ham", "spam"].index(rows[i]["label"]) for i in order[:8]]
    assert 0.0 <= r["initial_train_accuracy"] <= 1.0


@pytest.mark.slow  # three tiny training runs
def test_lora_classifier_resumes_exactly_from_last_checkpoint(tmp_path: Path, classify_run) -> None:
    lora = ("finetune=lora", "lora.rank=2", "optim.lr=1e-3")
    whole = classify_run(tmp_path / "whole", *lora)
    # One block (TINY_RUN): 4 attention Linears 16->16, ff 16->64 and 64->16; then the 2-class head.
    assert whole["trainable_params"] == 4 * (16 * 2 + 2 * 16) + (16 * 2 + 2 * 64) + (64 * 2 + 2 * 16) + (16 * 2 + 2 * 2)
    classify_run(tmp_path / "first", *lora, "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = classify_run(tmp_path / "second", *lora, f"ckpt_path={last}")
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "global_step", "initial_val_accuracy"):
        assert resumed[key] == whole[key], key
    a = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "second" / "model.pth", weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_classify_with_a_language_model_or_without_text_is_a_user_error(tmp_path: Path, compose_config) -> None:
    from gpt_lab.model.finetuned import save_finetuned

    # GPT-2's vocabulary: init_from's model.json is checked against the tokenizer before the text is.
    save_finetuned(GPTModel({**TINY, "vocab_size": 50257}), tmp_path, {"finetune": "all"})
    with pytest.raises(NotAClassifierError, match=r"no classification head"):
        classify(tmp_path, "hello")
    assert issubclass(NotAClassifierError, UserError)
    cfg = compose_config("task=classify", f"init_from={tmp_path}", run_dir=tmp_path / "run")
    with pytest.raises(UserError, match=r"task=classify needs text="):
        run_task(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("classifier.pooling=middle", "classifier.pooling=middle is not a pooling"),
        ("finetune.name=some", "finetune=some is not a choice"),
        ("data.max_length=-3", "data.max_length=-3 must be a positive integer, context"),
        ("data.val_ratio=0.4", "data.val_ratio=0.4 must be in"),
    ],
)
def test_bad_classification_settings_are_config_errors(compose_config, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config("experiment=ch06", override))


def test_ch06_presets_have_the_books_settings(compose_config) -> None:
    cfg = validate_config(compose_config("experiment=ch06"))
    assert (cfg.model.name, cfg.model.qkv_bias, cfg.model.drop_rate) == ("gpt2_small", True, 0.0)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_epochs, cfg.data.batch_size) == (5e-5, 0.1, 5, 8)
    assert (cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches, cfg.seed) == (50, 5, 123)
    assert cfg.finetune.name == "last_block" and cfg.classifier.pooling == "last" and cfg.data.balance
    lora = validate_config(compose_config("experiment=ch06_lora"))
    assert (lora.finetune.name, lora.optim.lr, lora.lora.rank, lora.lora.alpha) == ("lora", 8e-4, 16, 16)


def test_cli_one_class_file_exits_2_with_one_paragraph(tmp_path: Path, run_cli) -> None:
    (tmp_path / "one.tsv").write_text("ham\thello\nham\tthere\n", encoding="utf-8")
    done = run_cli("experiment=ch06", *TINY_RUN, "data.path=one.tsv", "hydra.run.dir=out")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "one class only" in done.stderr and "Traceback" not in done.stderr


def test_preset_group_choices_count_for_command_line_keys() -> None:
    from gpt_lab.run.options import misplaced_group_keys

    # experiment=ch06 picks data=classification, so its keys are not "keys of another option".
    assert misplaced_group_keys(["experiment=ch06", "data.label_column=section"]) == []
    assert misplaced_group_keys(["experiment=ch06_lora", "data.balance=false"]) == []
    assert misplaced_group_keys(["data.label_column=section"])  # data=text has no such key


@pytest.mark.gpu
def test_ch06_lora_run_on_the_gpu(tmp_path: Path, classify_run) -> None:
    r = classify_run(tmp_path / "gpu", "trainer=gpu", "finetune=lora", "lora.rank=2", "optim.lr=1e-3")
    assert r["status"] == "completed" and 0.0 <= r["test_accuracy"] <= 1.0
    assert classify(tmp_path / "gpu", ["win a prize now"])[0]["label"] in ("ham", "spam")


@pytest.mark.slow  # two tiny training jobs through the command line
def test_cli_sweep_of_bonus_rows_summarises_accuracies(tmp_path: Path, run_cli) -> None:
    _sms_file(tmp_path / "sms.tsv", n_ham=16, n_spam=8)
    done = run_cli(
        "-m",
        "experiment=ch06",
        *TINY_RUN,
        "data.path=sms.tsv",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "logger=csv",
        "finetune=head,lora",
        "lora.rank=2",
        "hydra.sweep.dir=sw",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with (tmp_path / "sw" / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    for row in rows:
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0 and float(row["train_seconds"]) > 0
    assert [int(r["trainable_params"]) for r in rows] == [16 * 2 + 2, 4 * 64 + 160 + 160 + (16 * 2 + 2 * 2)]
