"""Issue 27: fine-tuning as a new user meets it — a run directory carries its model, a refused run leaves
its directory free, runs say where they wrote and which model they used."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from gpt_lab.errors import ConfigError
from gpt_lab.run.job import run_task

SFT = (
    "experiment=ch07",
    "model=tiny",
    "model.context_length=64",
    "model.emb_dim=16",
    "model.n_heads=2",
    "model.n_layers=1",
    "data.batch_size=4",
    "data.eval_max_batches=1",
    "max_response_tokens=2",
    "trainer.max_epochs=1",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "logger=csv",
)


def _instruction_entries(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"Say {i}.", "input": "", "output": f"{i} it is."} for i in range(n)]


def _pairs(n: int) -> list[dict[str, str]]:
    return [
        {"instruction": f"Say {i}.", "input": "", "chosen": f"{i}.", "rejected": f"No {i} at all."} for i in range(n)
    ]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny instruction-tuned run: tiny model, 16-wide, one block, a 64-token context."""
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("sft")
    data = out / "entries.json"
    data.write_text(json.dumps(_instruction_entries(12)), encoding="utf-8")
    paths = [f"paths.root_dir={out}", f"paths.project_dir={out}", f"paths.output_dir={out}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        cfg = compose("config", overrides=[*SFT, f"data.path={data}", *paths])
    assert run_task(cfg)["status"] == "completed"
    return out


def _dpo(compose_config: Callable[..., DictConfig], sft: Path, out: Path, *overrides: str) -> DictConfig:
    pairs = out.parent / "pairs.json"
    pairs.write_text(json.dumps(_pairs(12)), encoding="utf-8")
    return compose_config(
        "experiment=dpo",
        f"init_from={sft}",
        f"data.path={pairs}",
        "data.batch_size=4",
        "max_response_tokens=2",
        "dpo.test_responses=1",
        "trainer.val_check_interval=2",
        "trainer.max_steps=2",
        "callbacks.progress_bar=null",
        "+trainer.enable_model_summary=false",
        "logger=csv",
        *overrides,
        run_dir=out,
        return_hydra_config=True,
    )


def test_dpo_from_an_sft_run_directory_builds_the_saved_model(
    sft_run: Path, compose_config: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented two-command flow: no model=... repeated; the run's model.json gives the architecture."""
    saved = json.loads((sft_run / "model.json").read_text())["model"]
    assert (saved["name"], saved["emb_dim"], saved["n_layers"], saved["context_length"]) == ("tiny", 16, 1, 64)
    with caplog.at_level("INFO"):
        results = run_task(_dpo(compose_config, sft_run, tmp_path / "dpo"))
    # The book's progress line, margins included (issue 27, point 6).
    line = (
        r"Ep 1 \(Step 000002\): Train loss \d\.\d{3}, Val loss \d\.\d{3}, Train reward margins -?\d+\.\d{3}, Val reward"
    )
    assert any(re.match(line, r.getMessage()) for r in caplog.records), [r.getMessage() for r in caplog.records][-5:]
    # Pairs cut to the context are kept and counted apart from those left out.
    assert set(results["skipped_pairs"]["train"]) == {"identical", "no_room"}
    assert set(results["truncated_pairs"]) == {"train", "val", "test"}
    assert results["status"] == "completed"
    assert results["model"] == "tiny"
    built = results["model_config"]
    assert (built["emb_dim"], built["n_heads"], built["n_layers"], built["context_length"]) == (16, 2, 1, 64)


def test_generate_from_a_fine_tuned_run_directory_needs_no_model(
    sft_run: Path, compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_config("task=generate", f"init_from={sft_run}", "max_new_tokens=2", "logger=none")
    results = run_task(cfg)
    assert results["status"] == "completed" and results["model"] == "tiny"
    # 16-wide, one block, 64 positions: the embedding, one block and the final norm counted by hand.
    emb, ctx, vocab = 16, 64, 50257
    block = 4 * emb * emb + emb + 2 * (emb * 4 * emb) + 4 * emb + emb + 4 * emb  # attention + ffn + 2 norms
    expected = vocab * emb + ctx * emb + block + 2 * emb + vocab * emb
    if json.loads((sft_run / "model.json").read_text())["model"]["qkv_bias"]:
        expected += 3 * emb
    assert results["total_params"] == expected


@pytest.mark.parametrize("override", ["model=gpt2_small", "model.emb_dim=32"])
def test_an_explicit_model_that_disagrees_with_the_saved_one_is_one_paragraph(
    sft_run: Path, compose_config: Callable[..., DictConfig], tmp_path: Path, override: str
) -> None:
    cfg = _dpo(compose_config, sft_run, tmp_path / "dpo", override)
    with pytest.raises(
        ConfigError, match=r"init_from=.* carries its model \(tiny: .*emb_dim=16.*leave model=\.\.\. out"
    ):
        run_task(cfg)


def test_an_explicit_model_that_agrees_with_the_saved_one_is_fine(
    sft_run: Path, compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    from gpt_lab.config import validate_config

    cfg = _dpo(compose_config, sft_run, tmp_path / "dpo", "model.emb_dim=16", "model.n_layers=1")
    assert validate_config(cfg).model.emb_dim == 16


def _results(path: Path) -> dict[str, Any]:
    return json.loads((path / "results.json").read_text())


def test_sweep_job_directories_stay_short_and_flat_with_many_overrides_and_a_path(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    """11 overrides (one a data.path with '/') once made a name past 255 bytes and nested directories."""
    (tmp_path / "some" / "deep").mkdir(parents=True)
    data = tmp_path / "some" / "deep" / "text.txt"
    data.write_text("Every effort moves you forward. " * 20, encoding="utf-8")
    overrides = [
        "model=tiny",
        "model.emb_dim=16",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.context_length=16",
        "max_new_tokens=1",
        f"data.path={data}",
        "optim.lr=0.0001234567890123456789",
        "optim.weight_decay=0.0123456789012345",
        "prompt=" + "a_rather_long_prompt_" * 8,
        "seed=1,2",
    ]
    done = run_cli("-m", *overrides, "logger=none", "hydra.sweep.dir=sw")
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "sw"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    assert all(len(p.name) <= 16 for p in jobs)  # <num>_<8 hex digits>
    assert all((p / "results.json").is_file() for p in jobs)  # flat: the job's files right under its name
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert all(f"data.path={data}" in r["overrides"] and "seed=" in r["overrides"] for r in rows)


def test_a_run_refused_before_it_starts_leaves_its_directory_free(run_cli: Callable[..., Any], tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("Every effort moves you forward. " * 40, encoding="utf-8")
    common = ("task=train", "model=tiny", "model.context_length=16", "trainer.max_steps=1", "logger=none")
    bad = run_cli(*common, "data.path=missing.txt", "hydra.run.dir=r")
    assert bad.returncode == 2 and "data.path" in bad.stderr
    assert _results(tmp_path / "r")["status"] == "failed"
    good = run_cli(*common, f"data.path={text}", "hydra.run.dir=r")
    assert good.returncode == 0, good.stderr[-2000:]
    assert _results(tmp_path / "r")["status"] == "completed"
    assert f"Run directory: {tmp_path / 'r'}" in good.stdout + good.stderr  # a training run says where it wrote
    assert (good.stdout + good.stderr).count("GPU available") == 1  # Lightning's messages once, not twice
    # A run that wrote something (a completed one) still keeps its directory.
    again = run_cli(*common, f"data.path={text}", "hydra.run.dir=r")
    assert again.returncode == 2 and "already holds another run" in again.stderr


def test_respond_run_is_named_and_recorded_with_the_saved_model_and_prints_its_directory(
    sft_run: Path, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    done = run_cli(
        "task=respond", f"init_from={sft_run}", "instruction=Say 1.", "max_response_tokens=1", "paths.project_dir=."
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*_respond_*")
    assert run_dir.name.endswith("_respond_tiny")  # not the model group's default, gpt2_small
    assert _results(run_dir)["model"] == "tiny"
    assert f"Run directory: {run_dir}" in done.stdout + done.stderr
    assert "-" * 40 + "\nResponse:\n" in done.stdout  # the prompt and the answer told apart


def test_run_model_name_is_the_judge_the_saved_model_or_the_option(sft_run: Path, tmp_path: Path) -> None:
    from gpt_lab.config.saved_model import run_model_name

    assert run_model_name("gpt2_small", "judge", None, "llama3:8b") == "llama3-8b"
    assert run_model_name("gpt2_small", "respond", str(sft_run)) == "tiny"
    assert run_model_name("gpt2_small", "generate", str(tmp_path / "no-such-run")) == "gpt2_small"
    assert run_model_name("gpt2_medium", "generate", None) == "gpt2_medium"


@pytest.mark.parametrize(
    ("override", "nearest"),
    [("max_new_token=5", "max_new_tokens"), ("optim.lrr=5", "optim.lr"), ("model.emb_dims=8", "model.emb_dim")],
)
def test_an_unknown_key_is_one_paragraph_naming_the_nearest_keys_exit_2(
    run_cli: Callable[..., Any], override: str, nearest: str
) -> None:
    done = run_cli("model=tiny", override)
    assert done.returncode == 2
    key = override.split("=")[0]
    assert f"{key} is not a key of the config (did you mean {nearest}" in done.stderr
    assert "Traceback" not in done.stderr and "Could not override" not in done.stderr
    assert done.stderr.strip().count("\n") == 0  # one paragraph


def test_unknown_keys_leaves_groups_free_form_nodes_and_additions_alone() -> None:
    from gpt_lab.run.options import unknown_keys

    fine = ["experiment=ch06", "trainer.max_steps=3", "callbacks.progress_bar=null", "+trainer.foo=1", "lora.rank=4"]
    fine += ["hydra.run.dir=x", "hydra/launcher=parallel", "model.n_heads=2", "dpo.beta=0.2", "~logger"]
    assert unknown_keys(fine) == []
    (message,) = unknown_keys(["foo=1"])
    assert message.startswith("foo is not a key of the config (the top level has callbacks, ckpt_path,")
