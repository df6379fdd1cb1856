"""Benchmark chapter 7's instruction fine-tuning step: gpt_lab against the book's code and ``transformers``.

    python scripts/bench_instructions.py [--sizes gpt2_small gpt2_medium] [--data instruction-data.json]
    (also a section of scripts/bench.py: make bench)

The step is the chapter's: a batch of 8 entries in the Alpaca prompt, padded to the batch's longest
item (gpt_lab's ``collate_instructions``), -100 targets ignored, no dropout, qkv bias on, AdamW with
weight decay 0.1. Every row trains the same seed-123 weights on the same batches, in a fresh
interpreter each (gpt_lab's training changes the allocator's settings: see gpt_lab/cpu_memory.py):

- gpt_lab: the Lightning Trainer of ``trainer=cpu`` (fp32) and ``trainer=cpu_bf16`` around the
  LightningModule (the step of ``experiment=ch07``; logging every step, no validation);
- the book's explicit model (tests/book_reference.py) in the book's bare loop;
- ``transformers.GPT2LMHeadModel`` (SDPA attention) on the same weights, the same loss and AdamW.

Batches come from ``--data`` (the chapter's instruction-data.json, not shipped) or, without it,
from generated entries of similar lengths. Throughput is tokens per second of the padded batches
(what the model computes over), the median over rounds of one pass over the timed batches.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import book_training_seconds, build_hf, have_transformers, lit_training_seconds

from gpt_lab.config import GPT2_SIZES
from gpt_lab.data.entries import read_entries
from gpt_lab.data.instructions import collate_instructions, encode_entry
from gpt_lab.model.gpt import GPTModel
from gpt_lab.tokenizer import get_tokenizer

ROW_BOOK = "book explicit fp32 (bare loop)"
ROW_HF = "transformers fp32 (GPT2LMHeadModel, sdpa)"
ROWS_LIT = {
    "gpt_lab fp32 (Lightning, trainer=cpu)": ("cpu", []),
    "gpt_lab bf16-mixed (Lightning, trainer=cpu_bf16)": ("cpu_bf16", []),
}
BATCH = 8  # the chapter's
WORDS = [
    "the",
    "a",
    "model",
    "text",
    "answer",
    "question",
    "write",
    "sentence",
    "word",
    "list",
    "give",
    "name",
    "describe",
    "explain",
]


def generated_entries(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Entries about as long as the chapter's (instruction ~10 words, input half the time, output ~20)."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    return [
        {"instruction": words(4, 16), "input": words(3, 20) if rng.random() < 0.6 else "", "output": words(3, 45)}
        for _ in range(n)
    ]


def batches(entries: list[dict[str, str]], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches of 8 entries, in order, as the chapter's collate builds them."""
    tok = get_tokenizer()
    items = [encode_entry(e, "alpaca", tok)[0] for e in entries[: n * BATCH]]
    return [collate_instructions(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]


def hf_training_seconds(
    state: dict, cfg: dict, data: list[tuple[torch.Tensor, torch.Tensor]], warmup: int
) -> list[float]:
    """transformers' model with the same weights, loss (cross-entropy, -100 ignored) and AdamW."""
    model = build_hf(state, cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    seconds = []
    for i, (x, y) in enumerate(data):
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def model_state(size: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg = {**GPT2_SIZES[size], "drop_rate": 0.0, "qkv_bias": True}
    torch.manual_seed(123)
    return cfg, GPTModel(cfg).state_dict()


def run_row(name: str, size: str, args: argparse.Namespace) -> list[float]:
    """Seconds per timed step of one row, in this process."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning\.")
    torch.set_num_threads(args.threads)
    cfg, state = model_state(size)
    entries = read_entries(args.data) if args.data else generated_entries((args.warmup + args.steps) * BATCH)
    data = batches(entries, args.warmup + args.steps)
    if name == ROW_BOOK:
        return book_training_seconds(state, cfg, data, args.warmup)
    if name == ROW_HF:
        return hf_training_seconds(state, cfg, data, args.warmup)
    trainer_name, overrides = ROWS_LIT[name]
    return lit_training_seconds(state, cfg, trainer_name, overrides, data, args.warmup, False)


def timed_tokens(size: str, args: argparse.Namespace) -> int:
    entries = read_entries(args.data) if args.data else generated_entries((args.warmup + args.steps) * BATCH)
    return sum(x.numel() for x, _ in batches(entries, args.warmup + args.steps)[args.warmup :])


def bench_instruction(size: str, args: argparse.Namespace, hf: bool) -> dict[str, Any]:
    """Every row, each in a fresh interpreter, ``rounds`` rounds in rotating order; tokens/s of a pass."""
    names = [*ROWS_LIT, ROW_BOOK, *([ROW_HF] if hf else [])]
    tokens = timed_tokens(size, args)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            cmd = [sys.executable, __file__, "--row", name, "--sizes", size, "--threads", str(args.threads)]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--data", str(args.data)] if args.data else []
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"instruction row {name!r} failed:\n{res.stderr[-3000:]}")
            rates[name].append(tokens / sum(json.loads(res.stdout.strip().splitlines()[-1])))
        print(
            f"  {size} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n.split(' (')[0]} {statistics.median(v):.0f} tok/s" for n, v in rates.items() if v),
            flush=True,
        )
    return {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)} for n, v in rates.items()}


def breakdown(size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Where a plain fp32 step's time goes (forward, loss, backward, AdamW), and the padding's share."""
    torch.set_num_threads(args.threads)
    cfg, state = model_state(size)
    model = GPTModel(cfg).train()
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    entries = read_entries(args.data) if args.data else generated_entries((args.warmup + args.steps) * BATCH)
    parts: dict[str, float] = {"forward": 0.0, "loss": 0.0, "backward": 0.0, "adamw": 0.0}
    padded = 0.0
    data = batches(entries, args.warmup + args.steps)
    for i, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        logits = model(x)
        t1 = time.perf_counter()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        t2 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if i >= args.warmup:
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key] += seconds
            padded += float((y == -100).float().mean()) / args.steps
    total = sum(parts.values())
    d, v, n = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"]
    return {
        "seconds_per_step": total / args.steps,
        "shares": {k: t / total for k, t in parts.items()},
        "ignored_target_share": padded,
        "head_share_of_matmul_flops": v * d / (v * d + n * 12 * d * d),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="*", default=["gpt2_small", "gpt2_medium"], choices=list(GPT2_SIZES))
    parser.add_argument("--data", type=Path, help="the chapter's instruction-data.json (default: generated entries)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (AdamW's moments, the heap)")
    parser.add_argument("--rounds", type=int, default=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers even if installed")
    parser.add_argument("--breakdown", action="store_true", help="where a plain fp32 step's time goes, then stop")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row of one size, seconds as JSON
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args.sizes[0], args)))
        return
    if args.breakdown:
        for size in args.sizes:
            print(f"## {size}: {json.dumps(breakdown(size, args))}", flush=True)
        return
    hf = have_transformers() and not args.no_hf
    for size in args.sizes:
        rows = bench_instruction(size, args, hf)
        print(f"## instruction fine-tuning step, {size}, batch {BATCH} padded per batch, tok/s")
        for name, row in rows.items():
            print(f"  {name:52s} {row['median']:8.1f} tok/s ({row['min']:.1f}-{row['max']:.1f}, n={row['runs']})")


if __name__ == "__main__":
    main()
