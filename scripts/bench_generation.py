"""The generation rows of ``scripts/bench.py``: greedy tokens per second, bytes read per token and
the fraction of the machine's read-bandwidth limit, for each weights precision (issue 28).

Generation on the CPU reads every weight once per token, plus the key/value cache of every position
so far. A row's bytes per token are what one step of its model reads
(``gpt_lab.model.stats.step_read_bytes``: every parameter and buffer, one row of each embedding
table) plus the cache a step reads on average over the run (``kv_bytes_per_token``); at the
machine's read bandwidth that gives the most tokens per second any implementation could reach, and
each row prints its fraction of it. The bandwidth is the fastest of three readers of 512 MB
(``bench_common.ReadBandwidth``), each timed in the same rounds as the rows: on a shared machine it
drifts within minutes, and a figure measured once before the rows was both under- and overshot.

Run through ``scripts/bench.py`` (``--skip generation`` leaves it out; ``--gen-sizes`` adds
gpt2_medium / gpt2_xl rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch
from bench_common import PROMPT_IDS, ReadBandwidth, build_book, build_hf, hf_generate, interleaved, summary, timed
from book_reference import ref_greedy, ref_kv_greedy
from torch import nn

from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import ACTIVATION_DTYPE, use_weights
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.stats import step_read_bytes

GEN = "gpt_lab generate (cache)"  # fp32: the name the targets and docs have used since issue 12
GEN_AT = {"fp32": GEN, "bf16": "gpt_lab generate, bf16 weights", "int8": "gpt_lab generate, int8 weights"}
# The same fp32 model with the fused native step off (GPT_LAB_FUSED=0): its steps layer by layer, each
# product through the Decoder (gpt_lab/generation/fused.py says what the fused step saves).
LAYERWISE = "gpt_lab generate, fp32 layer by layer (GPT_LAB_FUSED=0)"
HF_AT = {"fp32": "transformers generate (cache)", "bf16": "transformers generate, bf16"}
BOOK_KV = "book KV-cache variant"
BANDWIDTH = "read bandwidth"  # the probe's row: GB/s in the same rounds as the generation rows
BOOK_LOOP = "book loop, no cache (generate_text_simple)"


def kv_bytes_per_token(cfg: dict[str, Any], dtype: torch.dtype, prompt: int, new: int) -> float:
    """Cache bytes a step reads on average: keys and values of every layer at every position so far."""
    positions = prompt + (new - 1) / 2  # step i attends to prompt + i positions
    return 2 * cfg["n_layers"] * cfg["emb_dim"] * positions * torch.empty((), dtype=dtype).element_size()


def with_limit(row: dict[str, float], nbytes: float, bandwidth_gbs: float) -> dict[str, float]:
    """``row`` plus ``bytes_per_token`` and ``fraction_of_limit`` (its median tok/s against the bandwidth's)."""
    limit = bandwidth_gbs * 1e9 / nbytes
    return {**row, "bytes_per_token": nbytes, "limit_tok_s": limit, "fraction_of_limit": row["median"] / limit}


def gpt_lab_model(state: dict, cfg: dict, weights: str) -> GPTModel:
    model = GPTModel(cfg).eval()
    model.load_state_dict(state)
    return use_weights(model, weights)


def hf_model(state: dict, cfg: dict, weights: str) -> nn.Module:
    return build_hf(state, cfg).eval().to(ACTIVATION_DTYPE[weights])


def bench_generation(
    state: dict, cfg: dict, args: argparse.Namespace, hf: bool, probe: ReadBandwidth, book: bool = True
) -> dict[str, Any]:
    """Greedy generation, batch 1, ``args.new_tokens`` tokens: gpt_lab in every precision, transformers
    in fp32 and bf16, and (``book``) the book's KV-cache variant and loop. fp32 tokens are checked
    against the book's loop first; bf16 / int8 rows report how many tokens agree with fp32. The read
    bandwidth the rows' fractions are of is the fastest of ``probe``'s readers, each timed in the same rounds."""
    n = args.new_tokens
    idx = torch.tensor([PROMPT_IDS])
    ctx = cfg["context_length"]
    models: dict[str, nn.Module] = {GEN_AT[w]: gpt_lab_model(state, cfg, w) for w in GEN_AT}
    impls: dict[str, Callable[[], torch.Tensor]] = {
        name: (lambda m=m: generate(m, idx, n, ctx)) for name, m in models.items()
    }
    impls[LAYERWISE] = lambda: layer_by_layer(models[GEN], idx, n, ctx)
    if hf:
        for w, name in HF_AT.items():
            models[name] = hf_model(state, cfg, w)
            impls[name] = lambda m=models[name]: hf_generate(m, idx, n)
    book_model = build_book(state, cfg).eval() if book else None
    reference_tokens: list[torch.Tensor] = []
    if book_model is not None:
        impls[BOOK_KV] = lambda: ref_kv_greedy(book_model, idx, n)
        book_loop_s = timed(lambda: reference_tokens.append(ref_greedy(book_model, idx, n, ctx)))
        reference = reference_tokens[0]
    else:
        reference = impls[GEN]()
    fp32_names = [GEN, LAYERWISE, HF_AT["fp32"], BOOK_KV]
    agreement = {}
    for name, fn in impls.items():
        tokens = fn()  # also the warm-up
        if name in fp32_names and not torch.equal(tokens, reference):
            raise AssertionError(f"{name}: greedy tokens differ from the book's loop")
        agreement[name] = int((tokens[0, len(PROMPT_IDS) :] == reference[0, len(PROMPT_IDS) :]).sum())
    same = [name for name in impls if name in fp32_names]
    print(f"  fp32 tokens identical over {n} new tokens: {', '.join(same)}", flush=True)
    print("  tokens equal to fp32's: " + ", ".join(f"{k} {v}/{n}" for k, v in agreement.items()), flush=True)
    readers = {f"{BANDWIDTH}: {name}": read for name, read in probe.readers.items()}
    times = interleaved({**impls, **readers}, args.reps, warmup=0)
    found = {name: probe.nbytes / statistics.median(times.pop(name)) / 1e9 for name in readers}
    fastest = max(found, key=found.get)
    bandwidth_gbs = found[fastest]
    print("  read bandwidth in these rounds: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in found.items()), flush=True)
    rows: dict[str, Any] = {BANDWIDTH: {"GBps": bandwidth_gbs, "reader": fastest.split(": ", 1)[1], "readers": found}}
    for name, seconds in times.items():
        dtype = ACTIVATION_DTYPE["fp32"]
        for w, label in (*GEN_AT.items(), *HF_AT.items()):
            if name == label:
                dtype = ACTIVATION_DTYPE[w]
        model = models.get(name, models[GEN])  # the book's rows: the same fp32 weights (its mask buffers aside)
        nbytes = step_read_bytes(model) + kv_bytes_per_token(cfg, dtype, len(PROMPT_IDS), n)
        rows[name] = {**with_limit(summary(seconds, n), nbytes, bandwidth_gbs), "tokens_equal_fp32": agreement[name]}
    if book_model is not None:
        extra = [timed(lambda: ref_greedy(book_model, idx, n, ctx)) for _ in range(args.book_loop_reps - 1)]
        rows[BOOK_LOOP] = summary([book_loop_s, *extra], n)
    rows.update(first_token_rows(models, idx, ctx, args.reps))
    return rows


def layer_by_layer(model: nn.Module, idx: torch.Tensor, n: int, ctx: int) -> torch.Tensor:
    """``generate`` with the fused native step off (``GPT_LAB_FUSED=0`` for the call)."""
    before = os.environ.get("GPT_LAB_FUSED")
    os.environ["GPT_LAB_FUSED"] = "0"
    try:
        return generate(model, idx, n, ctx)
    finally:
        if before is None:
            del os.environ["GPT_LAB_FUSED"]
        else:
            os.environ["GPT_LAB_FUSED"] = before


def first_token_rows(models: dict[str, nn.Module], idx: torch.Tensor, ctx: int, reps: int) -> dict[str, Any]:
    """Time to the first token (prompt forward + set-up, one new token) of the fp32 rows, in seconds."""
    impls: dict[str, Callable[[], Any]] = {}
    if GEN in models:
        impls[f"time to first token: {GEN}"] = lambda: generate(models[GEN], idx, 1, ctx)
    if HF_AT["fp32"] in models:
        impls[f"time to first token: {HF_AT['fp32']}"] = lambda: hf_generate(models[HF_AT["fp32"]], idx, 1)
    times = interleaved(impls, max(reps, 3))
    return {name: {**summary(s, 1), "seconds": sorted(s)[len(s) // 2]} for name, s in times.items()}


def generation_targets(rows: dict[str, Any], add: Callable[[str, float, str, bool], None], size: str) -> None:
    """Issue 28's targets on one size's rows: ``add(what, value, target, met)``."""

    def ratio(a: str, b: str, target: float, what: str) -> None:
        if a in rows and b in rows:
            value = rows[a]["median"] / rows[b]["median"]
            add(f"{size}: {what}", value, f">= {target}", value >= target)

    if GEN in rows:
        frac = rows[GEN]["fraction_of_limit"]
        add(f"{size}: fp32 generation, fraction of the bandwidth limit", frac, ">= 0.9", frac >= 0.9)
    ratio(GEN_AT["bf16"], GEN, 1.8, "bf16 weights vs fp32")
    ratio(GEN_AT["int8"], GEN, 3.0, "int8 weights vs fp32")
    ratio(GEN, HF_AT["fp32"], 1.2, "fp32 vs transformers fp32")
    ratio(GEN_AT["bf16"], HF_AT["bf16"], 1.2, "bf16 vs transformers bf16")
    # transformers' int8 goes through torchao (not installed here: its 0.18 CPU path dequantizes every
    # weight before a bf16 product, measured 4.5x slower than the kernel gpt_lab uses).
    ratio(GEN_AT["int8"], HF_AT["bf16"], 1.2, "int8 vs transformers bf16 (its int8 needs torchao)")
    a, b = f"time to first token: {GEN}", f"time to first token: {HF_AT['fp32']}"
    if a in rows and b in rows:
        value = rows[b]["seconds"] / rows[a]["seconds"]
        add(f"{size}: time to first token, transformers / gpt_lab", value, "report", True)
