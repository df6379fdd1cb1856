"""The real command line: a run's files, the chapter's output, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt_lab.run.job import run_task
from gpt_lab.tasks import sample
from scripts.book_reference import GPT_CONFIG_124M

# The chapter's golden generation: what the book's own code prints for seed 123.
BOOK_OUTPUT_IDS = [15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267, 49706, 43231, 47062, 34657]
BOOK_OUTPUT_TEXT = "Hello, I am Featureiman Byeswickattribute argue logger Normandy Compton analogous"
RESULTS_KEYS = {
    "model",
    "total_params",
    "total_params_tied",
    "size_mb",
    "prompt",
    "output_ids",
    "output_text",
    "generation_tokens_per_second",
}


def test_cli_run_writes_the_run_directory_and_nothing_else(run_cli, tmp_path: Path) -> None:
    proc = run_cli("model=tiny", "max_new_tokens=4", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    assert "Total number of parameters: 3,243,776" in proc.stdout
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= RESULTS_KEYS
    assert results["model"] == "tiny" and results["status"] == "completed"
    assert results["overrides"] == ["model=tiny", "max_new_tokens=4"]  # hydra.* overrides are Hydra's
    assert len(results["output_ids"]) == 4 + 4 and results["output_text"].startswith("Hello, I am")
    assert results["output_text"] in proc.stdout
    assert "Hello, I am" in (run_dir / "run.log").read_text()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing outside the run directory


def test_cli_default_run_reproduces_chapter_4(compose_config, tmp_path: Path, book_model, monkeypatch) -> None:
    """The default run builds gpt2_small right after seeding 123, as the book does, and prints its output.

    The suite's one build of that model (``book_model``) stands in for the task's: the task must ask
    for it with the random generator exactly as ``torch.manual_seed(123)`` leaves it, which is what
    makes its weights the book's.
    """
    torch.manual_seed(123)
    fresh_seed_123 = torch.get_rng_state()
    builds = []

    def build_model(model_cfg, init_from):
        builds.append(torch.equal(torch.get_rng_state(), fresh_seed_123))
        assert init_from is None
        assert {k: model_cfg[k] for k in GPT_CONFIG_124M} == GPT_CONFIG_124M
        assert not model_cfg["tie_weights"]
        return book_model

    monkeypatch.setattr(sample, "build_model", build_model)
    results = run_task(compose_config("logger=none"))  # no graph trace: just the book's numbers
    assert builds == [True]
    assert results["output_ids"] == BOOK_OUTPUT_IDS
    assert results["output_text"] == BOOK_OUTPUT_TEXT
    assert (results["total_params"], results["total_params_tied"]) == (163_009_536, 124_412_160)
    assert round(results["size_mb"], 2) == 621.83
    assert json.loads((tmp_path / "results.json").read_text())["output_ids"] == BOOK_OUTPUT_IDS


def test_cli_config_error_is_one_paragraph_without_traceback(run_cli, tmp_path: Path) -> None:
    proc = run_cli("model.n_heads=5", "max_new_tokens=-1", "hydra.run.dir=run")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    message = proc.stderr.strip()
    assert message.startswith("gpt_lab: error: model.n_heads=5 must divide model.emb_dim=768")
    assert "max_new_tokens=-1 must be >= 0" in message and "\n" not in message
    # Nothing was built; the failure is on record in the run directory.
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"


def test_cli_unknown_option_lists_the_options_without_traceback(run_cli) -> None:
    proc = run_cli("model=gpt2_huge")
    assert proc.returncode == 2  # a user error since issue 21 (case 6), like every other bad value
    assert "Traceback" not in proc.stderr
    assert "gpt2_huge is not an option of the model group" in proc.stderr
    assert "gpt2_medium" in proc.stderr and "tiny" in proc.stderr
