"""Multirun sweeps: one directory per job, the summary at the sweep root, failed jobs as rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gpt_lab.run.sweep import summarise_sweep, write_summary


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
        "dropout=book,max_new_tokens=2,model.n_heads=2,model=tiny",
        "dropout=book,max_new_tokens=2,model.n_heads=3,model=tiny",
        "dropout=none,max_new_tokens=2,model.n_heads=2,model=tiny",
        "dropout=none,max_new_tokens=2,model.n_heads=3,model=tiny",
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
