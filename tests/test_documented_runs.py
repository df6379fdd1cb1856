"""Issue 27's "done when": the documented commands of docs/classification.md, instructions.md and
preferences.md run as written, on a tiny model.

Every command of the three pages composes with ``model=tiny`` and passes the config checks. The
essential chain then runs, each command as the page writes it (read from the page, not copied here)
plus only what makes it small (a few steps, one evaluation batch, two response tokens): the
"pretrained" directories the pages name (``gpt2/``, ``gpt2-medium/``) hold a tiny model with its
``model.json``, which gives every run its architecture, and the data files they name are written
here, small. Chapter 6 trains and classifies, chapter 7 trains and responds, the preference page
tunes a model and runs DPO from its directory. The Python API page's example then runs on the two
fine-tuned directories.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from configs import write_sms
from conftest import CONF_DIR, PROJECT_DIR
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from test_docs import commands, jobs, split_page

from gpt_lab.config import validate_config
from gpt_lab.model.finetuned import save_finetuned
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task

PAGES = ("docs/classification.md", "docs/instructions.md", "docs/preferences.md")
# Each "pretrained" directory the pages name: a tiny language model (GPT-2's vocabulary) and its model.json.
TINY_BASE = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 16,
    "n_heads": 2,
    "n_layers": 1,
    "drop_rate": 0.0,
    "qkv_bias": True,
    "name": "tiny",
}
QUIET = ("logger=none", "callbacks.progress_bar=null", "+trainer.enable_model_summary=false")
# What makes each kind of documented run small; none of it changes what the command says.
SMALL = {
    "ch06": ("trainer.max_steps=2", "data.batch_size=4", "classifier.initial_eval_batches=1"),
    "ch07": ("trainer.max_steps=2", "data.batch_size=2", "data.eval_max_batches=1", "max_response_tokens=2"),
    "dpo": ("trainer.max_steps=2", "data.batch_size=2", "data.eval_max_batches=1", "max_response_tokens=2"),
}


def _page_commands(page: str) -> list[list[str]]:
    return [c.args for c in commands() if c.where.split(":")[0] == page]


def _find(page: str, *words: str, without: tuple[str, ...] = ()) -> list[str]:
    """The first command of ``page`` holding every one of ``words`` and none of ``without``."""
    for args in _page_commands(page):
        if all(w in args for w in words) and not any(a.split("=")[0] in without for a in args):
            return args
    raise AssertionError(f"{page} no longer documents a command with {words}")


def _compose(root: Path, args: list[str], *extra: str) -> tuple[DictConfig, Path]:
    """A documented command's config as that command gets it, run from ``root``; its run directory."""
    overrides = [a for a in args if not a.startswith("hydra.run.dir=")]
    named = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    run_dir = root / (named[0] if named else f"outputs/run-{len(list(root.glob('outputs/*')))}")
    paths = [f"paths.root_dir={root}", f"paths.project_dir={root}", f"paths.output_dir={run_dir}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="docs"):
        return compose("config", overrides=[*overrides, *extra, *paths]), run_dir


def _run(root: Path, args: list[str], *extra: str) -> dict[str, Any]:
    cfg, _ = _compose(root, args, *extra)
    results = run_task(cfg)
    assert results["status"] == "completed", results
    return results


@pytest.mark.parametrize("page", PAGES)
def test_every_command_of_the_fine_tuning_pages_composes_on_the_tiny_model_and_passes_the_checks(
    page: str, tmp_path: Path
) -> None:
    args_list = _page_commands(page)
    assert len(args_list) >= 6
    for args in args_list:
        for overrides in jobs(args):
            cfg, _ = _compose(tmp_path, [*overrides, "model=tiny"])
            validate_config(cfg)  # the checks every run makes first (nothing here opens a file)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The pages' chain, run as written from a directory holding the files they name."""
    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    for name in ("gpt2", "gpt2-medium"):
        save_finetuned(GPTModel(TINY_BASE), root / name, {})
    (root / "sms_spam_collection").mkdir()
    write_sms(root / "sms_spam_collection" / "SMSSpamCollection.tsv", n=12)
    (root / "messages.txt").write_text("win a prize now\nsee you at lunch\n", encoding="utf-8")
    entries = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} it is."} for i in range(12)]
    (root / "instruction-data.json").write_text(json.dumps(entries), encoding="utf-8")
    pairs = [{**e, "chosen": e["output"], "rejected": f"No {i}."} for i, e in enumerate(entries)]
    (root / "preference-data.json").write_text(json.dumps(pairs), encoding="utf-8")
    out: dict[str, Any] = {"root": root}

    # docs/classification.md: train (into the directory its classify commands name), then classify.
    clf = "docs/classification.md"
    classify = [a for a in _page_commands(clf) if "task=classify" in a]
    assert len(classify) == 2
    clf_dir = next(a.split("=", 1)[1] for a in classify[0] if a.startswith("init_from="))
    train = _find(clf, "experiment=ch06", "init_from=gpt2/", without=("finetune",))
    out["ch06"] = _run(root, [*train, f"hydra.run.dir={clf_dir}"], *SMALL["ch06"], *QUIET)
    out["classified"] = [_run(root, args, "logger=none") for args in classify]

    # docs/instructions.md: train into outputs/run (its respond command's outputs/<run>), then respond.
    ins = "docs/instructions.md"
    train = _find(ins, "experiment=ch07", "init_from=gpt2-medium/", without=("ckpt_path", "finetune"))
    out["ch07"] = _run(root, [*train, "hydra.run.dir=outputs/run"], *SMALL["ch07"], *QUIET)
    out["responded"] = _run(root, _find(ins, "task=respond"), "max_response_tokens=2", "logger=none")

    # docs/preferences.md: the two-command flow, with its own hydra.run.dir values.
    pref = "docs/preferences.md"
    out["sft"] = _run(root, _find(pref, "experiment=ch07", "hydra.run.dir=outputs/sft"), *SMALL["ch07"], *QUIET)
    dpo = _find(pref, "experiment=dpo", "hydra.run.dir=outputs/dpo", without=("ckpt_path",))
    out["dpo"] = _run(root, dpo, *SMALL["dpo"], "dpo.test_responses=1", *QUIET)
    out["dirs"] = {"ch06": root / clf_dir, "ch07": root / "outputs" / "run"}
    yield out


def test_the_documented_chain_runs_as_written_on_a_tiny_model(chain: dict[str, Any]) -> None:
    # Every run took the tiny architecture from the directory it started from: no model=... was given.
    for key in ("ch06", "ch07", "sft", "dpo"):
        built = chain[key]["model_config"]
        assert (built["emb_dim"], built["n_layers"], built["context_length"]) == (16, 1, 64), key
    assert chain["ch06"]["class_names"] == ["ham", "spam"]
    texts = [row["text"] for result in chain["classified"] for row in result["predictions"]]
    assert texts == ["You are a winner! Claim your prize now", "win a prize now", "see you at lunch"]
    assert all(row["label"] in ("ham", "spam") for r in chain["classified"] for row in r["predictions"])
    assert isinstance(chain["responded"]["response"], str)
    assert chain["dpo"]["initial_val_loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # ln 2: policy = reference


def test_the_python_api_example_runs_on_fine_tuned_run_directories(
    chain: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (PROJECT_DIR / "docs" / "python-api.md").read_text(encoding="utf-8")
    (code,) = [
        text.partition("\n")[2]
        for _, text, _ in split_page(page)[1]
        if text.startswith("python") and "classify(" in text
    ]
    # The two run directories the example names are the chain's, under the names the example gives them.
    names = [
        n.value
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Constant) and str(n.value).startswith("outputs/")
    ]
    assert len(names) == 2
    workdir = chain["root"] / "api"
    for name, key in zip(names, ("ch06", "ch07"), strict=True):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).symlink_to(chain["dirs"][key])
    monkeypatch.chdir(workdir)
    exec(compile(code, "docs/python-api.md", "exec"), {})  # the page's own example
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3
    assert [line.split()[0] in ("ham", "spam") for line in lines[:2]] == [True, True]
    assert lines[0].endswith("You won a prize!") and lines[1].endswith("See you at lunch")


def test_docs_name_a_single_runs_directory_with_its_task_and_model() -> None:
    """A run's default directory is outputs/<date>/<time>_<task>_<model>/ (conf/hydra/default.yaml); the pages
    once showed outputs/<date>/<time>/, which no run writes (a sweep's is outputs/multirun/<date>/<time>/)."""
    import re

    assert "${now:%H-%M-%S}_${hydra.runtime.choices.task}_" in (CONF_DIR / "hydra" / "default.yaml").read_text()
    bare = re.compile(r"outputs/(<date>|\d{4}-\d\d-\d\d)/(<time>|\d\d-\d\d-\d\d)(?![\w-])")
    found = [
        f"{page.relative_to(PROJECT_DIR)}:{i}: {m.group(0)}"
        for page in [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        for m in bare.finditer(line)
    ]
    assert not found, found
