"""Issue 30's audit of the fine-tuning inputs: labelled files read as pandas reads them, resumes that
check what they resume, labels and class names that make sense, messages that name the right thing.

Independent expectations: pandas' documented behaviour written out (a row with more fields than the
header, or a quote left open, is a parse error naming the line; a named column must be in the
header), hand-built files and hand-counted class sets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from configs import TINY_RUN, write_sms
from omegaconf import DictConfig

from gpt_lab.data.labelled import read_labelled
from gpt_lab.data.text import DataError
from gpt_lab.errors import UserError
from gpt_lab.run.job import run_task
from gpt_lab.training.resume import ResumeError

C6 = ("experiment=ch06", *TINY_RUN, "trainer.max_steps=2", "classifier.initial_eval_batches=1", "logger=csv")


# ---------------------------------------------------------------------------------------------
# 5. A resumed fine-tuning run checks its data, its classes and its batch size


@pytest.mark.slow  # one tiny classifier run, then four refused resumes
def test_case_5_resuming_a_classifier_checks_data_file_classes_and_batch_size(
    compose_config: Callable[..., DictConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sms(tmp_path / "sms.tsv")
    run = tmp_path / "run"
    first = run_task(compose_config(*C6, f"data.path={data}", run_dir=run))
    assert first["status"] == "completed"
    # Case 12: the full-set evaluation after training shows its progress, split by split.
    err = capsys.readouterr().err
    assert all(f"Evaluating the full {split} split" in err for split in ("train", "val", "test"))
    record = (run / "results.json").read_bytes()
    splits = (run / "train.csv").read_bytes()

    def resume(*overrides: str) -> None:
        run_task(compose_config(*C6, "trainer.max_steps=4", "ckpt_path=last", *overrides, run_dir=run))

    other = write_sms(tmp_path / "other.tsv")
    with pytest.raises(ResumeError, match=r"trained on data.path=.*sms.tsv, and this run reads data.path=.*other.tsv"):
        resume(f"data.path={other}")
    with pytest.raises(ResumeError, match=r"data.batch_size=8, and this run asks for data.batch_size=4"):
        resume(f"data.path={data}", "data.batch_size=4")
    write_sms(data, spam="junk")  # the same file, relabelled: class 1 would mean "junk"
    with pytest.raises(DataError, match=r"trained on the classes \['ham', 'spam'\].*gives \['ham', 'junk'\]"):
        resume(f"data.path={data}")
    # Nothing of the run changed: its record, its splits.
    assert (run / "results.json").read_bytes() == record
    assert (run / "train.csv").read_bytes() == splits


@pytest.mark.slow  # one tiny instruction run, then a refused resume
def test_case_5_resuming_chapter_7_on_another_file_is_refused(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    def entries(path: Path, word: str) -> Path:
        items = [{"instruction": f"{word} {i}", "input": "", "output": f"{i}"} for i in range(20)]
        path.write_text(json.dumps(items), encoding="utf-8")
        return path

    c7 = ("experiment=ch07", *TINY_RUN, "trainer.max_steps=2", "data.batch_size=2", "logger=csv")
    run = tmp_path / "run"
    assert run_task(compose_config(*c7, f"data.path={entries(tmp_path / 'a.json', 'Say')}", run_dir=run))
    other = entries(tmp_path / "b.json", "Repeat")
    with pytest.raises(ResumeError, match=r"trained on data.path=.*a.json, and this run reads data.path=.*b.json"):
        run_task(compose_config(*c7, f"data.path={other}", "ckpt_path=last", "trainer.max_steps=4", run_dir=run))


def test_case_5_a_fine_tuning_checkpoint_from_before_the_check_still_resumes(tmp_path: Path) -> None:
    from gpt_lab.data.classification import ClassificationDataModule
    from gpt_lab.training.resume import ResumePlan, check_resume_data, trained_data

    # What such a checkpoint holds: the resumable loader's state, no data module hyper-parameters.
    old = {"loops": {"fit_loop": {"state_dict": {"combined_loader": [{"batches_done": 3}]}}}}
    plan = ResumePlan(tmp_path / "old.ckpt", data=trained_data(old))
    dm = ClassificationDataModule(context_length=32, path=write_sms(tmp_path / "sms.tsv"))
    check_resume_data(plan, dm)  # nothing to compare with: not refused
    # One written now names its files and batch size, and another batch size is refused.
    new = {"datamodule_hyper_parameters": dict(dm.hparams)}
    other = ClassificationDataModule(context_length=32, path=tmp_path / "sms.tsv", batch_size=4)
    with pytest.raises(ResumeError, match=r"data.batch_size=8, and this run asks for data.batch_size=4"):
        check_resume_data(ResumePlan(tmp_path / "new.ckpt", data=trained_data(new)), other)


# ---------------------------------------------------------------------------------------------
# 3, 4. Labelled files read as pandas reads them


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_case_3_a_named_column_missing_from_the_header_lists_the_header(tmp_path: Path) -> None:
    rows = "".join(f"{i},{'spam' if i % 2 else 'ham'},text {i},web\n" for i in range(6))
    path = _write(tmp_path, "d.csv", "id,label,text,source\n" + rows)
    # A misspelled column: pandas' df["lable"] is a KeyError; never the header-less reading of the id column.
    with pytest.raises(DataError, match=r"no column data.label_column=lable; its header names id, label, text, source"):
        read_labelled(path, "data.path", label_column="lable")
    # Neither default name in a header of four columns: the same paragraph, not id read as the label.
    other = _write(tmp_path, "e.csv", "id,category,message,source\n" + rows)
    with pytest.raises(DataError, match=r"data.label_column=label and data.text_column=text; its header names id, cat"):
        read_labelled(other, "data.path")
    # The right names read the right columns.
    got = read_labelled(path, "data.path")
    assert [(e.label, e.text) for e in got[:2]] == [("ham", "text 0"), ("spam", "text 1")]


def test_case_4_more_fields_than_the_header_or_an_open_quote_is_an_error_naming_the_line(tmp_path: Path) -> None:
    # pandas: "Expected 2 fields in line 3, saw 4" (a comma inside an unquoted text).
    cut = _write(tmp_path, "c.csv", "label,text\nham,see you\nspam,hello, and more words\n")
    with pytest.raises(DataError, match=r"line 3 has 3 fields, more than its header's 2 columns"):
        read_labelled(cut, "data.path")
    bare = _write(tmp_path, "b.tsv", "ham\tsee you\nspam\thello\tand more\n")
    with pytest.raises(DataError, match=r"line 2 has 3 fields, more than label and text \(no header\)"):
        read_labelled(bare, "data.path")
    # pandas: "EOF inside string starting at row 2": the open quote is refused, not 3 rows read as one text.
    body = 'ham\tsee you\nspam\t"hello there\nham\tcall me\nspam\twin now\n'
    open_quote = _write(tmp_path, "q.tsv", "label\ttext\n" + body)
    with pytest.raises(DataError, match=r"line 3 opens a quote .* never closed, so the rest of the file \(3 line"):
        read_labelled(open_quote, "data.path")
    # A quoted text that spans lines and is closed is one text, as pandas reads it; quoted commas stay.
    fine = _write(tmp_path, "f.csv", 'label,text\nham,"two\nlines"\nspam,"hello, and more words"\nham,x\n')
    got = read_labelled(fine, "data.path")
    assert [(e.label, e.text) for e in got] == [("ham", "two\nlines"), ("spam", "hello, and more words"), ("ham", "x")]


# ---------------------------------------------------------------------------------------------
# 6. Labels, class names, and a classifier where a language model is needed


def _module(tmp_path: Path, **kwargs):  # type: ignore[no-untyped-def]
    from gpt_lab.data.classification import ClassificationDataModule

    dm = ClassificationDataModule(context_length=32, batch_size=2, output_dir=tmp_path / "out", **kwargs)
    dm.setup("fit")
    return dm


def _split_files(tmp_path: Path, train: str, val: str, test: str) -> dict[str, Path]:
    return {k: _write(tmp_path, f"{k}.tsv", body) for k, body in (("train", train), ("val", val), ("test", test))}


def test_case_6_a_label_only_in_validation_or_test_and_duplicate_class_names_are_refused(tmp_path: Path) -> None:
    import numpy as np

    # 21 texts, one of class 'c', placed where pandas' sample(frac=1, random_state=123) puts it last:
    # in the test split (rows 14 + 2 onwards), never in training.
    last = int(np.random.RandomState(123).permutation(21)[-1])
    labels = ["a" if i % 2 else "b" for i in range(20)]
    labels.insert(last, "c")
    data = _write(tmp_path, "d.tsv", "".join(f"{label}\ttext {i}\n" for i, label in enumerate(labels)))
    with pytest.raises(DataError, match=r"the test split has label\(s\) 'c' that the training split never has"):
        _module(tmp_path, path=data)
    files = _split_files(tmp_path, "a\tx\nb\ty\n", "a\tv\n", "b\tu\n")
    with pytest.raises(DataError, match=r"data.class_names=\['a', 'a', 'b'\] names 'a' more than once"):
        _module(tmp_path, split_paths=files, class_names=["a", "a", "b"])


@pytest.mark.parametrize("task", ["task=generate", "task=respond instruction=Hi prompt_style=alpaca"])
def test_case_6_generate_and_respond_refuse_a_classifier(
    compose_config: Callable[..., DictConfig], tmp_path: Path, task: str
) -> None:
    import torch

    from gpt_lab.model.finetuned import save_finetuned
    from gpt_lab.model.gpt import GPTModel

    torch.manual_seed(0)
    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0}
    classifier = GPTModel({**cfg, "qkv_bias": False, "num_classes": 3})
    save_finetuned(classifier, tmp_path / "clf", {"kind": "classifier", "class_names": ["a", "b", "c"]})
    overrides = [*task.split(), *TINY_RUN, f"init_from={tmp_path / 'clf'}"]
    with pytest.raises(UserError, match=r"holds a classifier \(a head of 3 classes.*needs a language model"):
        run_task(compose_config(*overrides, run_dir=tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# 8. Hydra's grammar errors: one paragraph saying how to quote, exit 2


@pytest.mark.parametrize(
    ("word", "advice"),
    [
        ("text=hello,world", "\"text='hello,world'\""),
        ("text=it's", "'text=\"it'\"'\"'s\"'"),
        ("instruction=Solve: x=2", "\"instruction='Solve: x=2'\""),
    ],
)
def test_case_8_hydra_grammar_errors_say_how_to_quote_and_exit_2(run_cli, word: str, advice: str) -> None:
    done = run_cli("model=tiny", word, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"gpt_lab: error: {word} ")
    assert advice in lines[0]
    # The advice, as the shell passes it, is what Hydra reads as one plain value.
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    (passed,) = shlex.split(advice)
    (override,) = OverridesParser.create().parse_overrides([passed])
    assert override.value() == word.partition("=")[2]


# ---------------------------------------------------------------------------------------------
# 10. User errors that were tracebacks


@pytest.mark.parametrize("experiment", ["task=train", "experiment=ch07", "experiment=dpo"])
def test_case_10_a_classifier_cannot_start_language_model_training(
    compose_config: Callable[..., DictConfig], tmp_path: Path, experiment: str
) -> None:
    import torch

    from gpt_lab.model.gpt import GPTModel

    cfg = {"vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0}
    torch.manual_seed(0)
    # A classifier's model.pth without its model.json: the head's 2 rows give it away.
    torch.save(GPTModel({**cfg, "qkv_bias": False, "num_classes": 2}).state_dict(), tmp_path / "clf.pth")
    entries = [{"instruction": "Say 1.", "input": "", "output": "1.", "chosen": "1.", "rejected": "No."}]
    data = {
        "task=train": _write(tmp_path, "story.txt", "The cat sat on the mat. " * 40),
        "experiment=ch07": _write(tmp_path, "entries.json", json.dumps(entries * 12)),
        "experiment=dpo": _write(tmp_path, "pairs.json", json.dumps(entries * 12)),
    }[experiment]
    overrides = [experiment, *TINY_RUN, f"data.path={data}", f"init_from={tmp_path / 'clf.pth'}", "logger=csv"]
    with pytest.raises(UserError, match=r"holds a classifier \(a head of 2 classes.* needs a language model"):
        run_task(compose_config(*overrides, "trainer.max_steps=1", run_dir=tmp_path / "run"))


def test_case_10_resuming_with_or_without_lora_against_the_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    from gpt_lab.model.gpt import GPTModel
    from gpt_lab.training.resume import check_resume

    cfg = {"vocab_size": 64, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 1, "drop_rate": 0.0}
    model_cfg = {**cfg, "qkv_bias": False, "tie_weights": False}
    state = {f"model.{k}": v for k, v in GPTModel(model_cfg).state_dict().items()}
    plain, adapted = tmp_path / "plain.ckpt", tmp_path / "lora.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"model_cfg": model_cfg}}, plain)
    lora = {
        "model.trf_blocks.0.att.W_query.lora_A": torch.zeros(16, 2),
        "model.trf_blocks.0.att.W_query.lora_B": torch.zeros(2, 16),
    }
    torch.save({"state_dict": {**state, **lora}, "hyper_parameters": {"model_cfg": model_cfg}}, adapted)
    with pytest.raises(ResumeError, match=r"trained without LoRA adapters, and this run asks for finetune=lora"):
        check_resume(plain, model_cfg, {}, "lora")
    with pytest.raises(ResumeError, match=r"trained finetune=lora .* and this run asks for finetune=all"):
        check_resume(adapted, model_cfg, {}, "all")
    assert check_resume(adapted, model_cfg, {}, "lora").path == adapted


def test_case_10_a_lora_rank_too_large_for_memory_is_refused_before_building(
    compose_config: Callable[..., DictConfig],
) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError
    from gpt_lab.run.preflight import check_resources, machine_memory_bytes

    cfg = validate_config(
        compose_config("experiment=ch06_lora", *TINY_RUN, "lora.rank=100000000", "lora.targets=[head]")
    )
    # The head alone: rank x (16 inputs + 2 classes... the vocabulary head before the classifier's: 50257 outputs).
    adapters = 100_000_000 * (16 + 50257)
    assert adapters * 16 > (machine_memory_bytes() or 0)  # 16 bytes a trained parameter: far beyond any machine
    with pytest.raises(ConfigError, match=r"LoRA adapters of lora.rank=100000000 included.*smaller lora.rank"):
        check_resources(cfg)


def test_case_10_json_nested_too_deep_is_one_paragraph(tmp_path: Path) -> None:
    from gpt_lab.data.entries import InstructionDataError, read_entries

    path = _write(tmp_path, "deep.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(InstructionDataError, match=r"nests JSON arrays / objects deeper than"):
        read_entries(path)


# ---------------------------------------------------------------------------------------------
# 11. Messages that blamed the wrong thing


def test_case_11_lora_alpha_inf_and_dpo_beta_out_of_range_are_config_errors(
    compose_config: Callable[..., DictConfig],
) -> None:
    from gpt_lab.config import validate_config
    from gpt_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lora.alpha=inf must be a positive finite number"):
        validate_config(compose_config("experiment=ch06_lora", "lora.alpha=inf"))
    with pytest.raises(ConfigError, match=r"dpo.beta=1e\+30 must be a number in \(0, 100\]"):
        validate_config(compose_config("experiment=dpo", "dpo.beta=1e30"))


def test_case_11_class_names_and_balance_messages_name_the_class(tmp_path: Path) -> None:
    data = _write(tmp_path, "d.tsv", "".join(f"a\ttext {i}\n" for i in range(10)) + "b\tonly one\n")
    with pytest.raises(DataError, match=r"data.class_names=\['a', 'b', 'c'\] names 'c', which no text of"):
        _module(tmp_path, path=data, class_names=["a", "b", "c"])
    # Balanced to 1 text per class: 2 texts, int(2 * 0.1) = 0 for validation; the cause is class 'b'.
    with pytest.raises(DataError, match=r"class 'b' has 1 text\(s\).*give 'b' more texts, or set data.balance=false"):
        _module(tmp_path, path=data, balance=True)


def test_case_11_json_files_an_object_holding_a_list_and_a_byte_order_mark(tmp_path: Path) -> None:
    from gpt_lab.data.entries import InstructionDataError, read_entries

    entries = [{"instruction": "Say 1", "input": "", "output": "1"}, {"instruction": "Say 2", "output": "2"}]
    wrapped = _write(tmp_path, "w.json", json.dumps({"data": entries}, indent=2))
    with pytest.raises(InstructionDataError, match=r"holds one JSON object whose key 'data' holds a list"):
        read_entries(wrapped)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(entries).encode("utf-8"))  # as some editors save UTF-8
    assert [e["output"] for e in read_entries(bom)] == ["1", "2"]


def test_case_11_a_binary_init_from_is_one_sentence_without_torchs_advice(tmp_path: Path) -> None:
    import torch

    from gpt_lab.errors import InitFromError
    from gpt_lab.model.weights import load_pretrained

    torch.save({"tok_emb.weight": torch.zeros(2, 2), "extra": Path("x")}, tmp_path / "pickled.pth")
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    for name in ("pickled.pth", "noise.pth"):
        with pytest.raises(InitFromError) as err:
            load_pretrained(tmp_path / name)
        text = str(err.value)
        assert "\n" not in text and "weights_only" not in text and "not a weights file gpt_lab can read" in text


def test_case_10_resuming_with_another_class_count_is_refused_before_any_file(tmp_path: Path) -> None:
    """Resumed on data with a third class, the checkpoint's 2-row head met a 3-row one (``size mismatch
    out_head``): the data's classes are checked against the checkpoint's first, by name and count."""
    from gpt_lab.data.classification import ClassificationDataModule

    rows = "".join(f"{label}\ttext {i}\n" for i in range(30) for label in ("ham", "spam", "junk")[i % 3 : i % 3 + 1])
    dm = ClassificationDataModule(
        context_length=32, batch_size=2, output_dir=tmp_path / "out", path=_write(tmp_path, "d.tsv", rows)
    )
    dm.expect_class_names(["ham", "spam"], "checkpoints/last.ckpt")
    with pytest.raises(DataError, match=r"trained on the classes \['ham', 'spam'\].*gives \['ham', 'junk', 'spam'\]"):
        dm.setup("fit")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no split file written


def test_case_11_a_dpo_data_error_carries_no_context_length_hint(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """Every DPO data error once ended with "(here init_from=... fixes model.context_length=...)"."""
    import torch

    from gpt_lab.model.finetuned import save_finetuned
    from gpt_lab.model.gpt import GPTModel

    base = {"vocab_size": 50257, "context_length": 64, "emb_dim": 16, "n_heads": 2, "n_layers": 1, "drop_rate": 0.0}
    torch.manual_seed(0)
    save_finetuned(GPTModel({**base, "qkv_bias": False}), tmp_path / "sft", {"prompt_style": "alpaca"})
    pairs = _write(tmp_path, "pairs.json", json.dumps([{"instruction": "Hi.", "chosen": "a", "rejected": "a"}] * 3))
    cfg = compose_config(
        "experiment=dpo", f"init_from={tmp_path / 'sft'}", f"data.path={pairs}", run_dir=tmp_path / "r"
    )
    with pytest.raises(DataError, match=r"has no usable pairs") as err:
        run_task(cfg)
    assert "context_length" not in str(err.value) and "init_from" not in str(err.value)


def test_case_11_no_message_asks_for_a_python_call_on_the_command_line() -> None:
    """A message once advised ``build_model(...)`` to a command-line user: string literals of gpt_lab (docstrings
    aside) name keys and commands, never a Python call."""
    import ast

    from conftest import PROJECT_DIR

    found = []
    for path in sorted((PROJECT_DIR / "gpt_lab").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
            if isinstance(text, str) and ("build_model(" in text or "load_finetuned(" in text):
                found.append(f"{path.relative_to(PROJECT_DIR)}:{node.lineno}: {text[:80]!r}")
    assert not found, found


def test_case_11_dpo_pairs_without_room_say_max_length_and_cut_pairs_are_not_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """data.max_length=5 once said "give more entries"; pairs only cut to the context read as skipped
    (issue 27 point 6): they are counted apart, and a warning says when all of them were cut."""
    import logging

    from gpt_lab.data.preferences import PreferenceDataError, PreferenceDataModule

    words = " ".join(["word"] * 40)  # 40 tokens a response: beyond 60 with the alpaca prompt
    entries = [{"instruction": f"Say {i}.", "chosen": f"{i} {words}", "rejected": words} for i in range(20)]
    path = _write(tmp_path, "pairs.json", json.dumps(entries))
    with pytest.raises(PreferenceDataError, match=r"fits data.max_length=5 tokens .*raise data.max_length") as err:
        PreferenceDataModule(path, max_length=5, batch_size=4).setup()
    assert "give more entries" not in str(err.value)
    dm = PreferenceDataModule(path, max_length=60, batch_size=4)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    sizes = dm.split_sizes()
    # The book's split of 20: 17 train, 2 test, the 1 left validates; every pair kept, every pair cut.
    assert sizes["split_sizes"] == {"train": 17, "val": 1, "test": 2}
    assert sizes["truncated_pairs"] == {"train": 17, "val": 1, "test": 2}
    assert all(set(counts.values()) == {0} for counts in sizes["skipped_pairs"].values())
    assert "all 17 train pair(s) are cut to the context of 60 tokens (kept" in caplog.text


# ---------------------------------------------------------------------------------------------
# 12. Smaller


def test_case_12_validation_and_test_texts_longer_than_the_context_are_cut_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    words = " ".join(f"word{i}" for i in range(60))  # far more than 32 tokens
    files = _split_files(tmp_path, "a\tshort\nb\ttiny\na\tsmall\nb\tbrief\n", f"a\t{words}\n", f"b\t{words}\nb\tok\n")
    with caplog.at_level(logging.WARNING):
        dm = _module(tmp_path, split_paths=files)
    assert dm.max_length < 32  # the longest training text: the training split fits the context
    assert "Truncating 0 training, 1 validation and 1 test text(s) longer than the model's context of 32" in caplog.text
