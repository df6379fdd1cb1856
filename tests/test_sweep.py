"""Multirun sweeps: one directory per job, the summary at the sweep root, failed jobs as rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from gpt_lab.run.sweep import summarise_sweep, write_summary
from gpt_lab.run.sweep_plot import job_labels, plot_summary


def _rows(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_two_by_two_gives_four_jobs_and_a_summary(run_cli, tmp_path: Path) -> None:
    # n_heads=3 does not divide the tiny model's emb_dim=32: those two jobs fail, the others run.
    proc = run_cli(
        "-m", "model=tiny", "max_new_tokens=2", "model.n_heads=2,3", "dropout=book,none", "hydra.sweep.dir=sw"
    )
    sweep = tmp_path / "sw"
    assert proc.returncode == 1  # some job failed; every row is still there
    assert "Traceback" not in proc.stderr
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == [
        "0_dropout=book,max_new_tokens=2,model.n_heads=2,model=tiny",
        "1_dropout=none,max_new_tokens=2,model.n_heads=2,model=tiny",
        "2_dropout=book,max_new_tokens=2,model.n_heads=3,model=tiny",
        "3_dropout=none,max_new_tokens=2,model.n_heads=3,model=tiny",
    ]
    rows = _rows(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    by_heads = {h: [r for r in rows if f"model.n_heads={h}" in r["overrides"]] for h in (2, 3)}
    assert all(r["status"] == "completed" and r["total_params"] == "3243776" for r in by_heads[2])
    assert all(
        r["output_text"].startswith("Hello, I am") and float(r["generation_tokens_per_second"]) > 0 for r in by_heads[2]
    )
    assert all(r["status"] == "failed" and "model.n_heads=3 must divide" in r["error"] for r in by_heads[3])
    # The row records the sizes the job built (the tiny option with its n_heads overridden), not just the option.
    assert all(r["model"] == "tiny" and " n_heads=2 " in r["model_config"] for r in by_heads[2])
    # Each job re-seeds itself: the same model gives the same text whatever ran before it.
    assert by_heads[2][0]["output_text"] == by_heads[2][1]["output_text"]
    for name in names:
        assert json.loads((sweep / name / "results.json").read_text())["status"] in {"completed", "failed"}
    md = (sweep / "summary.md").read_text()
    assert "4 jobs, 2 completed." in md and md.count("| failed |") == 2


@pytest.mark.slow
def test_sweep_through_submitit_local_executor(run_cli, tmp_path: Path) -> None:
    proc = run_cli(
        "-m",
        "hydra/launcher=slurm_local",
        "model=tiny",
        "max_new_tokens=2",
        "weight_tying=off,on",
        "hydra.sweep.dir=sw",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(tmp_path / "sw")
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("model=tiny max_new_tokens=2 weight_tying=off", "completed"),
        ("model=tiny max_new_tokens=2 weight_tying=on", "completed"),
    ]
    assert int(rows[1]["total_params"]) < int(rows[0]["total_params"])  # the tied head is counted once
    assert (tmp_path / "sw" / ".submitit").is_dir()


def test_sweep_summary_marks_jobs_without_results_failed(tmp_path: Path) -> None:
    for name, results in (("a=1", {"status": "completed", "job_num": 0, "output_text": "x | y"}), ("a=2", None)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- {name}\n")
        if results is not None:
            (tmp_path / name / "results.json").write_text(json.dumps(results))
    rows = summarise_sweep(tmp_path)
    assert [(r["overrides"], r["status"]) for r in rows] == [("a=1", "completed"), ("a=2", "failed")]
    assert "without writing results.json" in rows[1]["error"]
    _, md = write_summary(tmp_path, rows)
    assert "x \\| y" in md.read_text()


@pytest.mark.slow  # two training sweeps of three jobs and two refusals: about a minute on two busy cores
def test_an_interrupted_sweep_continues_in_place_with_ckpt_path_last(run_cli, tmp_path: Path) -> None:
    """Issue 21: the same -m command plus ckpt_path=last keeps done jobs, resumes interrupted ones, runs the rest."""
    (tmp_path / "story.txt").write_text("The cat sat on the mat. The dog lay by the door. " * 60, encoding="utf-8")
    sweep = [
        "-m",
        "task=train",
        "model=tiny",
        "model.emb_dim=16",
        "model.n_heads=2",
        "model.n_layers=1",
        "model.context_length=16",
        "data.path=story.txt",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.sample_text=null",
        "callbacks.lr_monitor=null",
        "++trainer.max_steps=2",
        "optim.lr=0.001,0.002,0.003",
        "hydra.sweep.dir=sw",
    ]
    first = run_cli(*sweep)
    assert first.returncode == 0, first.stderr[-2000:]
    jobs = {int(json.loads(p.read_text())["job_num"]): p.parent for p in (tmp_path / "sw").glob("*/results.json")}
    assert sorted(jobs) == [0, 1, 2]
    # As a preempted sweep leaves it: job 0 done, job 1 stopped at a checkpoint, job 2 never started.
    kept = (jobs[0] / "results.json").read_bytes()
    stopped = json.loads((jobs[1] / "results.json").read_text())
    stopped.update(status="interrupted", signal="SIGTERM")
    (jobs[1] / "results.json").write_text(json.dumps(stopped))
    assert (jobs[1] / "checkpoints" / "last.ckpt").exists()
    shutil.rmtree(jobs[2])

    assert run_cli(*sweep).returncode == 2  # the same directory without ckpt_path=last: refused, as before
    again = run_cli(*sweep, "ckpt_path=last")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (jobs[0] / "results.json").read_bytes() == kept  # not run again
    for job in (1, 2):
        results = json.loads((jobs[job] / "results.json").read_text())
        assert results["status"] == "completed" and results["global_step"] == 2
    assert sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(
        p.name for p in jobs.values()
    )  # the jobs kept their directories
    rows = _rows(tmp_path / "sw")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed"), ("2", "completed")]
    other = run_cli(*sweep[:-2], "optim.lr=0.005", "hydra.sweep.dir=sw", "ckpt_path=last")
    assert other.returncode == 2 and "already holds a sweep" in other.stderr  # another sweep is not a continuation


def test_sweep_summary_compares_variants_by_size_cache_and_speed(tmp_path: Path) -> None:
    # Issue 25's columns come from results.json's nested figures (a training run writes them).
    figures = {
        "status": "completed",
        "job_num": 0,
        "parameters": {"total": 300, "unique": 200, "active": 120},
        "kv_cache": {"bytes": 4096, "bytes_per_token": 64},
        "train_tokens_per_second": 1500.5,
        "generation_tokens_per_second": 80.25,
        "val_loss": 6.5,
    }
    (tmp_path / "attention=mla" / ".hydra").mkdir(parents=True)
    (tmp_path / "attention=mla" / ".hydra" / "overrides.yaml").write_text("- attention=mla\n")
    (tmp_path / "attention=mla" / "results.json").write_text(json.dumps(figures))
    write_summary(tmp_path, summarise_sweep(tmp_path))
    (row,) = _rows(tmp_path)
    assert (row["parameters"], row["active_parameters"], row["kv_bytes_per_token"]) == ("300", "120", "64")
    assert (row["train_tokens_per_second"], row["generation_tokens_per_second"], row["val_loss"]) == (
        "1500.5",
        "80.25",
        "6.5",
    )
    md = (tmp_path / "summary.md").read_text()
    assert "| parameters | active_parameters | kv_bytes_per_token | train_tokens_per_second |" in md
    assert "| 300 | 120 | 64 | 1500.50 |" in md


def test_sweep_plot_labels_jobs_by_what_differs(tmp_path: Path) -> None:
    rows = [
        {"job": 0, "overrides": "+ablation=mha experiment=ablation", "status": "completed", "val_loss": 7.0},
        {"job": 1, "overrides": "+ablation=mla experiment=ablation", "status": "completed", "val_loss": 6.9},
        {"job": 2, "overrides": "+ablation=moe experiment=ablation", "status": "failed", "val_loss": None},
    ]
    assert job_labels(rows) == ["+ablation=mha", "+ablation=mla", "+ablation=moe"]
    assert plot_summary(tmp_path, rows).read_bytes().startswith(b"\x89PNG")
    assert plot_summary(tmp_path / "one", rows[:1]) is None  # nothing to compare


def test_summary_names_shared_overrides_once_drops_empty_columns_and_shows_accuracy_in_percent(
    tmp_path: Path,
) -> None:
    """Issue 27 point 7: a training sweep's summary repeated `experiment=ch06 model=tiny` on every row, carried
    empty generation columns and printed 0.975 where the console prints 97.50%."""
    for job, lr, accuracy in ((0, "1e-3", 0.975), (1, "5e-5", 0.5)):
        job_dir = tmp_path / f"{job}_x"
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- experiment=ch06\n- model=tiny\n- optim.lr={lr}\n")
        results = {"status": "completed", "job_num": job, "model": "tiny", "val_loss": 0.25, "test_accuracy": accuracy}
        (job_dir / "results.json").write_text(json.dumps(results))
    csv_path, md_path = write_summary(tmp_path, summarise_sweep(tmp_path))
    md = md_path.read_text()
    assert "Every job: `experiment=ch06 model=tiny`" in md
    header, _, first, second = [line for line in md.splitlines() if line.startswith("|")]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert "output_text" not in cells and "generation_tokens_per_second" not in cells and "total_params" not in cells
    assert cells[:3] == ["job", "overrides", "status"] and "test_accuracy" in cells
    at = cells.index("test_accuracy")
    assert [c.strip() for c in first.strip("|").split("|")][1] == "optim.lr=1e-3"
    assert [[c.strip() for c in row.strip("|").split("|")][at] for row in (first, second)] == ["97.50%", "50.00%"]
    # The CSV keeps what a program reads: every job's full overrides, fractions; no empty column either.
    rows = _rows(tmp_path)
    assert [r["overrides"] for r in rows] == [
        "experiment=ch06 model=tiny optim.lr=1e-3",
        "experiment=ch06 model=tiny optim.lr=5e-5",
    ]
    assert [float(r["test_accuracy"]) for r in rows] == [0.975, 0.5] and "output_text" not in rows[0]
    assert csv_path.name == "summary.csv"


def test_a_sweep_over_family_presets_records_each_familys_model(run_cli, tmp_path: Path) -> None:
    """Issue 26 point 5 (sweeps): one -m line runs two families' tiny presets; each row records the family's
    model with its own parameter count (against transformers' model of the same config.json)."""
    transformers = pytest.importorskip("transformers")
    from gpt_lab.model.hf_families import family_hf_config

    proc = run_cli("-m", "model=llama3_2_tiny,gemma3_tiny", "max_new_tokens=2", "hydra.sweep.dir=sw")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(tmp_path / "sw")
    assert [(r["model"], r["status"]) for r in rows] == [("llama3_2_tiny", "completed"), ("gemma3_tiny", "completed")]
    for row in rows:
        assert row["output_text"].startswith("Hello, I am")
        cfg = json.loads((tmp_path / row["dir"] / "results.json").read_text())["model_config"]
        hf_config = family_hf_config(cfg)
        config_class = {"llama": transformers.LlamaConfig}.get(hf_config["model_type"], transformers.Gemma3TextConfig)
        with torch.device("meta"):
            reference = getattr(transformers, hf_config["architectures"][0])(config_class(**hf_config))
        assert int(row["total_params_tied"]) == sum(p.numel() for p in reference.parameters())  # tied head once
