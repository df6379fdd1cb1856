"""Benchmark corpus preparation and streaming (issue 11): ``make bench-data`` or

    python scripts/bench_data.py [--source DIR] [--mb 16] [--workers N] [--json PATH]

1. A corpus of ``--mb`` MB of UTF-8 files copied from ``--source`` (default: the Python standard
   library's ``.py`` files, which every install has), and one 4x larger (the same files 4 times).
2. Prepare throughput (MB/s, tokens/s) of ``task=prepare``'s code on the small corpus, against a
   single-process loop of ``encode_ordinary`` over the same files (the ratio is the parallel speed-up,
   net of the UTF-8 check and chunk writing).
3. Peak RSS of prepare on both corpora, each in a fresh process: the main process (VmHWM) and the
   largest worker (``RUSAGE_CHILDREN``).
4. The streaming loader's tokens/s (windows of 1025, batches of 8) against the tokens/s a gpt2_small
   training step consumes here (batch 2 x 256, chapter 5's run): the loader's headroom.

Timings are wall-clock on this machine; compare the ratios, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process per corpus size, so each peak RSS is that prepare's own.
PREPARE_CHILD = """
import json, resource, sys, time
import litdata  # imported before the clock starts: the figure is the work, not the imports
from gpt_lab.data.corpus_prepare import prepare_corpus
started = time.perf_counter()
meta = prepare_corpus(sys.argv[1], sys.argv[2], "/", 0.01, 123, num_workers=int(sys.argv[3]))
seconds = time.perf_counter() - started
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "tokens": sum(meta["tokens"].values()), "main_kib": hwm, "worker_kib": worker}))
"""


def build_corpus(source: Path, target: Path, megabytes: float) -> list[Path]:
    """Copy UTF-8 files of ``source`` into ``target`` until ``megabytes`` MB."""
    target.mkdir(parents=True)
    copied, total = [], 0
    for path in sorted(source.rglob("*.py")):
        if total >= megabytes * 1e6 or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not data:
            continue
        out = target / f"{len(copied):06d}.txt"
        out.write_bytes(data)
        copied.append(out)
        total += len(data)
    return copied


def replicate(files: list[Path], target: Path, times: int) -> None:
    """``times`` copies of every file (hard links: the same bytes, read again as other documents)."""
    target.mkdir(parents=True)
    for k in range(times):
        for path in files:
            os.link(path, target / f"{k}-{path.name}")


def single_process_baseline(files: list[Path]) -> dict[str, float]:
    from gpt_lab.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    started = time.perf_counter()
    n_bytes = tokens = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        tokens += len(tokenizer.encode_ordinary(text)) + 1
        n_bytes += len(text.encode("utf-8"))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "mb_per_s": n_bytes / 1e6 / seconds, "tokens_per_s": tokens / seconds}


def prepare_in_child(source: Path, out: Path, workers: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PREPARE_CHILD, str(source), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loader_tokens_per_s(data_dir: Path, context_length: int = 1024, batch_size: int = 8, batches: int = 300) -> float:
    from gpt_lab.data.corpus import CorpusDataModule

    dm = CorpusDataModule(str(data_dir), context_length=context_length, batch_size=batch_size)
    dm.setup()
    loader = dm.train_dataloader()
    started, n = time.perf_counter(), 0
    for i, (inputs, _) in enumerate(loader):
        n += inputs.numel()
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - started)


def training_tokens_per_s(batch_size: int = 2, context_length: int = 256, steps: int = 2) -> float:
    """gpt2_small (the book's config at chapter 5's context) forward + backward + AdamW, CPU, float32."""
    import torch

    from gpt_lab.model.gpt import GPTModel
    from gpt_lab.training.lit_module import batch_loss

    cfg = {
        "vocab_size": 50257,
        "context_length": context_length,
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 12,
        "drop_rate": 0.1,
        "qkv_bias": False,
    }
    torch.manual_seed(123)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    x = torch.randint(0, 50257, (batch_size, context_length + 1))

    def step() -> None:
        optimizer.zero_grad()
        batch_loss(model(x[:, :-1]), x[:, 1:]).backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * context_length / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--mb", type=float, default=16.0, help="size of the small corpus (the large is 4x)")
    parser.add_argument("--workers", type=int, default=None, help="prepare processes (default: usable cores)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from gpt_lab.data.corpus_prepare import usable_cores

    workers = args.workers or usable_cores()
    with tempfile.TemporaryDirectory(prefix="gpt_lab_bench_data_") as tmp:
        tmp_dir = Path(tmp)
        small = build_corpus(args.source, tmp_dir / "small", args.mb)
        replicate(small, tmp_dir / "large", 4)
        small_mb = sum(p.stat().st_size for p in small) / 1e6
        baseline = single_process_baseline(small)
        prepared = {}
        for name, factor in (("small", 1), ("large", 4)):
            prepared[name] = prepare_in_child(tmp_dir / name, tmp_dir / f"{name}-prepared", workers)
            prepared[name].update(mb=small_mb * factor)
        loader = loader_tokens_per_s(tmp_dir / "large-prepared")
        shutil.rmtree(tmp_dir / "large")
    training = training_tokens_per_s()

    p = prepared["small"]
    rows = {
        "corpus": f"{len(small)} files, {small_mb:.1f} MB (and 4x: {4 * small_mb:.1f} MB), {workers} workers",
        "encode_ordinary, 1 process": f"{baseline['mb_per_s']:.2f} MB/s, {baseline['tokens_per_s']:,.0f} tokens/s",
        "task=prepare / encode_ordinary": f"{p['tokens'] / p['seconds'] / baseline['tokens_per_s']:.2f}x tokens/s",
    }
    for name in ("small", "large"):
        q = prepared[name]
        rows[f"task=prepare, {q['mb']:.0f} MB corpus"] = (
            f"{q['mb'] / q['seconds']:.2f} MB/s, {q['tokens'] / q['seconds']:,.0f} tokens/s, peak RSS: main "
            f"{q['main_kib'] / 1024:.0f} MiB, largest worker {q['worker_kib'] / 1024:.0f} MiB"
        )
    rows["streaming loader (1025 x 8)"] = f"{loader:,.0f} tokens/s"
    rows["gpt2_small training step (2 x 256)"] = f"{training:,.0f} tokens/s ({loader / training:,.0f}x headroom)"
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        report = {"baseline": baseline, "prepare": prepared, "loader_tokens_per_s": loader}
        report["training_tokens_per_s"] = training
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
