"""Benchmark the architecture lab's caches (issue 25): each variant's cached generation against the
bonus scripts' own method, and decoding at long context across attention kinds, with the cache's memory.

    python scripts/bench_lab.py [--quick] [--threads N] [--json PATH]     (make bench runs it too)

1. Generation: for each variant (mha, gqa, mla, a sliding window, a mixture of experts, and
   Llama's parts: RMSNorm, RoPE, SwiGLU, GQA), gpt_lab's ``generate`` with its preallocated cache
   beside the chapter-4 bonus scripts' method (scripts/lab_reference.py: a cache grown by
   ``torch.cat``, attention written out) on the same weights; the greedy tokens must be identical
   before anything is timed. Rounds interleave the two; medians of tokens/s, and their ratio.
2. Long context: one decoding step at position ~``--context`` (gpt2_small's shapes, 4,096 tokens;
   --quick: a small model at 1,024) for mha, gqa, mla, a sliding window and Gated DeltaNet, with
   the cache each allocates (bytes of its tensors, counted from their storages), once per
   ``--weights`` (the models hold their weights as ``generation.weights`` makes task=generate hold
   them; default fp32 and int8). The cache is filled with random numbers first, so the timing is
   that of a cache holding that many positions (no prompt of 4,096 tokens is run through the model).

Wall-clock on CPU; compare ratios from one run, not absolute numbers across runs or machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import interleaved  # scripts/ itself, as bench.py imports it
from lab_reference import cat_cache_generate

from gpt_lab.config import GENERATION_WEIGHTS
from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import use_weights
from gpt_lab.model.gpt import GPTModel

ROOT = Path(__file__).resolve().parents[1]

GPT2_SMALL = {"vocab_size": 50257, "emb_dim": 768, "n_heads": 12, "n_layers": 12, "drop_rate": 0.0, "qkv_bias": False}
LONG_CONTEXT_VARIANTS = ("mha", "gqa", "mla", "sliding 5:1", "deltanet 3:1")  # the attention kinds
QUICK = {"vocab_size": 1000, "emb_dim": 64, "n_heads": 4, "n_layers": 4, "drop_rate": 0.0, "qkv_bias": False}


def variants(base: dict[str, Any], window: int) -> dict[str, dict[str, Any]]:
    """The groups' options, as model keys, at ``base``'s sizes (GQA: a quarter of the heads, as the
    book's n_kv_groups=4; MLA: a latent of half the width, as its 2048 -> 1024 example)."""
    heads, emb = base["n_heads"], base["emb_dim"]
    gqa = {"attention": "gqa", "n_kv_heads": max(1, heads // 4)}
    return {
        "mha": {},
        "gqa": gqa,
        "mla": {"attention": "mla", "latent_dim": emb // 2},
        "sliding 5:1": {"window": "sliding", "sliding_window": window, "sliding_pattern": "5:1"},
        "moe 4x2": {"ffn": "moe", "num_experts": 4, "experts_per_token": 2, "moe_hidden_dim": emb},
        "llama parts": {**gqa, "norm": "rmsnorm", "pos_emb": "rope", "ffn": "swiglu", "hidden_dim": 8 * emb // 3},
        "deltanet 3:1": {"attention": "deltanet", "full_attention_every": 4},
    }


def build(base: dict[str, Any], extra: dict[str, Any], context: int) -> GPTModel:
    torch.manual_seed(123)
    return GPTModel({**base, **extra, "context_length": context}).eval()


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``: what they occupy, measured, not computed from shapes."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def bench_generation(base: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    context = args.prompt + args.new_tokens
    for name, extra in variants(base, args.window).items():
        if extra.get("attention") == "deltanet":
            continue  # a fixed state either way: no torch.cat cache to compare with
        model = build(base, extra, context)
        idx = torch.randint(0, base["vocab_size"], (1, args.prompt), generator=torch.Generator().manual_seed(0))
        ours = lambda m=model, i=idx: generate(m, i, args.new_tokens, context)  # noqa: E731
        ref = lambda m=model, i=idx: cat_cache_generate(m, i, args.new_tokens)  # noqa: E731
        if not torch.equal(ours(), ref()):
            print(f"  {name:<14} FAILED: gpt_lab's cached tokens differ from the torch.cat reference's", flush=True)
            rows.append({"variant": name, "tokens_equal": False})
            continue
        seconds = interleaved({"gpt_lab": ours, "reference": ref}, args.reps, clock=CLOCK)
        speed = {k: args.new_tokens / statistics.median(v) for k, v in seconds.items()}
        ratio = speed["gpt_lab"] / speed["reference"]
        rows.append({"variant": name, "tokens_equal": True, **{f"{k}_tok_s": v for k, v in speed.items()}})
        rows[-1]["ratio"] = ratio
        print(
            f"  {name:<14} gpt_lab {speed['gpt_lab']:8.1f} tok/s   torch.cat reference "
            f"{speed['reference']:8.1f} tok/s   {ratio:.2f}x",
            flush=True,
        )
    return rows


@torch.inference_mode()
def bench_long_context(base: dict[str, Any], args: argparse.Namespace, weights: str) -> list[dict[str, Any]]:
    """Decoding steps at ~``args.context`` cached positions, the variants interleaved round by round,
    each model holding its weights as ``generation.weights=<weights>`` would (what task=generate reads)."""
    decoders, sizes = {}, {}
    ids = torch.randint(0, base["vocab_size"], (1, 1), generator=torch.Generator().manual_seed(0))
    kinds = variants(base, args.long_window)
    # And MLA with a quarter-width latent: its arithmetic per cached position halves.
    long_variants = {name: kinds[name] for name in LONG_CONTEXT_VARIANTS}
    long_variants["mla latent/4"] = {**kinds["mla"], "latent_dim": base["emb_dim"] // 4}
    for name, extra in long_variants.items():
        model = use_weights(build(base, extra, args.context), weights)
        cache = model.new_kv_cache(1, args.context)
        tensors = [t for layer in cache.layers for t in layer.tensors()]
        for t in tensors:
            t.normal_(0, 0.02)  # a cache holding that many positions (an empty one may hold NaNs)
        sizes[name] = storage_bytes(tensors)
        assert sizes[name] == cache.nbytes, (name, sizes[name], cache.nbytes)

        def decode(m: GPTModel = model, c: Any = cache, p: int = args.context - args.steps - 1) -> None:
            c.pos = p
            for _ in range(args.steps):
                m(ids, kv_cache=c, last_only=True)

        decoders[name] = decode
    seconds = {k: statistics.median(v) / args.steps for k, v in interleaved(decoders, args.reps, clock=CLOCK).items()}
    rows = []
    for name, s in seconds.items():
        speedup = seconds["mha"] / s
        row = {"variant": name, "weights": weights, "ms_per_token": s * 1e3, "speedup_vs_mha": speedup}
        rows.append({**row, "cache_bytes": sizes[name]})
        print(f"  {name:<14} {s * 1e3:7.2f} ms/token   {speedup:5.2f}x mha   cache {sizes[name] / 2**20:8.1f} MiB")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model and short runs (well under a minute)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--reps", type=int, help="timed rounds (default 5, quick 3)")
    parser.add_argument("--context", type=int, help="long-context position (default 4096, quick 1024)")
    parser.add_argument("--steps", type=int, help="decoding steps timed at long context (default 16, quick 8)")
    parser.add_argument("--only", choices=("generation", "long"), help="run one section")
    parser.add_argument(
        "--weights",
        nargs="+",
        choices=GENERATION_WEIGHTS,
        default=["fp32", "int8"],
        help="generation.weights of the long-context rows (default fp32 int8: int8 reads a quarter of the weights' "
        "bytes, so the cache's share of a step grows)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time this process's CPU seconds, not the wall clock (a machine shared with other jobs; use --threads 1)",
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    base = QUICK if args.quick else GPT2_SMALL
    args.reps = args.reps or (3 if args.quick else 5)
    args.context = args.context or (1024 if args.quick else 4096)
    args.prompt, args.new_tokens = (8, 24) if args.quick else (16, 48)
    args.window = 16 if args.quick else 32  # shorter than prompt + new tokens: the ring buffer wraps
    args.long_window = args.context // 4  # the book's SWA example: 1,024 of 4,096
    args.steps = args.steps or (8 if args.quick else 16)
    shapes = f"emb {base['emb_dim']}, {base['n_layers']} layers, {base['n_heads']} heads, vocab {base['vocab_size']}"
    clock = "CPU time" if args.cpu_time else "wall clock"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock}; {shapes}")
    generation, long_context = [], []
    if args.only != "long":
        print(f"Cached generation, {args.prompt}-token prompt + {args.new_tokens} new tokens, medians of {args.reps}:")
        generation = bench_generation(base, args)
    if args.only != "generation":
        for weights in args.weights:
            print(
                f"One decoding step at position ~{args.context:,}, generation.weights={weights} "
                f"({args.steps} steps, medians of {args.reps}):"
            )
            long_context += bench_long_context(base, args, weights)
    if args.json:
        args.json.write_text(json.dumps({"generation": generation, "long_context": long_context}, indent=2) + "\n")
    if not all(row["tokens_equal"] for row in generation):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
