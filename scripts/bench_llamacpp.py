"""The optional llama.cpp row of ``scripts/bench.py --llama-cpp`` (issue 28, point 6): the CPU engine
people run models with, beside gpt_lab's fp32 / bf16 / int8 generation, on the same weights.

    python scripts/bench_llamacpp.py [--quick] [--threads N] [--new-tokens N] [--reps N]

gpt2_small's seed-123 weights (every bench row's) are written as GGUF at f32, f16 and q8_0
(``scripts/gguf_export.py``, into a temporary folder) and run by ``llama-cpp-python``'s
``Llama.generate`` (greedy: temperature 0, batch 1, the bench's prompt ids, ``--threads`` threads for
the prompt and the decoding), interleaved round by round with gpt_lab's ``generate`` at fp32, bf16 and
int8 weights; medians, tokens per second and the ratios gpt_lab / llama.cpp at each precision. The
f32 file runs with an f32 key/value cache, as gpt_lab's fp32 path, and its logits must match gpt_lab's
fp32 model along the prompt and gpt_lab's greedy tokens (``conversion_check``: the proof that the
conversion is right); f16 and q8_0 run with llama.cpp's default f16 cache. Every row's greedy tokens
equal to gpt_lab's fp32 ones are counted.

It needs ``llama-cpp-python`` (which compiles llama.cpp from source when pip installs it) and ``gguf``
(llama.cpp's file format). Neither is a dependency of gpt_lab or of its ``bench`` extra, and CI does
not install them, so the row is opt-in; where either is missing it prints what to install and is
skipped (the rest of the bench runs as usual). See docs/performance.md, "llama.cpp beside gpt_lab".
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import PROMPT_IDS, interleaved, summary
from bench_generation import GEN_AT, gpt_lab_model, kv_bytes_per_token, with_limit
from gguf_export import GGUF_TYPES, write_gguf

from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import ACTIVATION_DTYPE
from gpt_lab.model.stats import step_read_bytes

INSTALL = (
    'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" pip install llama-cpp-python gguf  '
    "(llama-cpp-python compiles llama.cpp from source: a C++ compiler and CMake, about 10 minutes on 2 cores)"
)
LLAMA_AT = {t: f"llama.cpp generate, {t} GGUF" for t in GGUF_TYPES}
PAIRS = {"f32": "fp32", "f16": "bf16", "q8_0": "int8"}  # llama.cpp file type -> gpt_lab weights it faces
GGML_TYPE_F32 = 0  # ggml's type id, for the f32 file's key/value cache


def missing_packages() -> list[str]:
    return [name for name in ("llama_cpp", "gguf") if importlib.util.find_spec(name) is None]


def gguf_step_bytes(path: Path) -> float:
    """Bytes of a GGUF file's weights one decoding step reads: every tensor as stored, but one row of
    each embedding table (the token's and the position's)."""
    from gguf import GGUFReader

    total = 0.0
    for tensor in GGUFReader(path).tensors:
        rows = int(tensor.shape[-1]) if tensor.name.endswith("embd.weight") else 1  # ggml order: (emb, rows)
        total += int(tensor.n_bytes) / rows
    return total


def llama_cpp_row(state: dict, cfg: dict, args: argparse.Namespace, bandwidth_gbs: float | None = None) -> dict:
    """llama.cpp's greedy generation at f32 / f16 / q8_0 beside gpt_lab's fp32 / bf16 / int8, one
    interleaved run: ``{row: summary}`` plus ``ratios`` (gpt_lab / llama.cpp per precision), and with
    ``bandwidth_gbs`` each row's bytes per token and fraction of the bandwidth limit;
    ``{"skipped": reason}`` without the packages."""
    missing = missing_packages()
    if missing:
        reason = f"llama.cpp row skipped: {', '.join(missing)} not installed; {INSTALL}"
        print(f"  {reason}", flush=True)
        return {"skipped": reason}
    import llama_cpp

    n, threads = args.new_tokens, args.threads
    idx = torch.tensor([PROMPT_IDS])
    ctx = cfg["context_length"]
    models = {GEN_AT[w]: gpt_lab_model(state, cfg, w) for w in PAIRS.values()}
    impls: dict[str, Callable[[], list[int]]] = {
        name: (lambda m=m: generate(m, idx, n, ctx)[0, len(PROMPT_IDS) :].tolist()) for name, m in models.items()
    }
    step_bytes: dict[str, float] = {name: float(step_read_bytes(m)) for name, m in models.items()}
    cache_dtype = {GEN_AT[w]: ACTIVATION_DTYPE[w] for w in PAIRS.values()}
    with tempfile.TemporaryDirectory(prefix="gguf-") as tmp:
        for t in GGUF_TYPES:
            path = write_gguf(Path(tmp) / f"gpt2_small-{t}.gguf", state, cfg, t)
            # The f32 file with an f32 key/value cache, as gpt_lab's fp32 path; the others llama.cpp's f16 default.
            cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if t == "f32" else {}
            engine = llama_cpp.Llama(
                str(path), n_ctx=len(PROMPT_IDS) + n, n_threads=threads, n_threads_batch=threads, verbose=False, **cache
            )
            impls[LLAMA_AT[t]] = lambda e=engine: llama_generate(e, n)
            step_bytes[LLAMA_AT[t]] = gguf_step_bytes(path)
            cache_dtype[LLAMA_AT[t]] = torch.float32 if t == "f32" else torch.float16
        print(f"  GGUF written ({', '.join(GGUF_TYPES)}); llama-cpp-python {llama_cpp.__version__}", flush=True)
        if threads > 1:
            print(
                f"  llama.cpp at {threads} threads: they wait for each other after every operation, so beside "
                "another busy process its rows collapse; on a shared machine give --threads 1 (docs/performance.md)",
                flush=True,
            )
        fp32 = impls[GEN_AT["fp32"]]()
        agreement = {name: sum(a == b for a, b in zip(fn(), fp32, strict=True)) for name, fn in impls.items()}
        print("  tokens equal to gpt_lab fp32's: " + ", ".join(f"{k} {v}/{n}" for k, v in agreement.items()))
        check = conversion_check(llama_cpp, Path(tmp) / "gpt2_small-f32.gguf", models[GEN_AT["fp32"]], fp32, threads)
        times = interleaved(impls, args.reps, warmup=0)
    rows: dict[str, Any] = {}
    for name, seconds in times.items():
        rows[name] = {**summary(seconds, n), "tokens_equal_fp32": agreement[name]}
        if bandwidth_gbs:
            nbytes = step_bytes[name] + kv_bytes_per_token(cfg, cache_dtype[name], len(PROMPT_IDS), n)
            rows[name] = with_limit(rows[name], nbytes, bandwidth_gbs)
    ratios = {
        f"gpt_lab {w} / llama.cpp {t}": rows[GEN_AT[w]]["median"] / rows[LLAMA_AT[t]]["median"]
        for t, w in PAIRS.items()
    }
    for what, value in ratios.items():
        print(f"  {what}: {value:.2f}x", flush=True)
    return {
        "rows": rows,
        "ratios": ratios,
        "conversion_check": check,
        "llama_cpp_python": llama_cpp.__version__,
        "threads": threads,
    }


MAX_LOGIT_DIFFERENCE = 0.01  # of the largest logit; a misplaced tensor is off by its whole size


@torch.inference_mode()
def conversion_check(llama_cpp: Any, path: Path, model: torch.nn.Module, new: list[int], threads: int) -> dict:
    """The f32 GGUF's logits against gpt_lab's fp32 model at every position of the prompt and gpt_lab's
    greedy continuation ``new`` (each position given the same tokens before it, so a near-tie at one
    step does not carry into the next): the largest difference, relative to the largest logit, and how
    many positions pick the same most likely token. Raises AssertionError past ``MAX_LOGIT_DIFFERENCE``.

    llama.cpp's f32 path is not float32 everywhere: its CPU GELU reads a table indexed by the input
    rounded to f16 (ggml-cpu/vec.h, ``GGML_GELU_FP16``), so the logits differ by more than float32
    round-off (measured: 0.015 % of the largest on gpt2_small)."""
    seq = [*PROMPT_IDS, *new]
    engine = llama_cpp.Llama(
        str(path),
        n_ctx=len(seq),
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )
    engine.eval(seq)
    theirs = torch.from_numpy(engine.scores[: len(seq)].copy())
    del engine
    ours = model(torch.tensor([seq]))[0].float()
    scale = ours.abs().max().item()
    diff = (theirs - ours).abs().max().item() / scale
    same = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    print(
        f"  conversion: llama.cpp f32 GGUF against gpt_lab fp32 over {len(seq)} positions: logits differ by at "
        f"most {100 * diff:.3f} % of the largest ({scale:.2f}), the same most likely token at {same}/{len(seq)}",
        flush=True,
    )
    if diff > MAX_LOGIT_DIFFERENCE:
        raise AssertionError(
            f"llama.cpp's logits of the f32 GGUF differ from gpt_lab's by {100 * diff:.1f} %: a wrong conversion"
        )
    return {"positions": len(seq), "max_logit_difference": diff, "same_top1": same}


def llama_generate(engine: Any, n: int) -> list[int]:
    """``n`` greedy tokens after the prompt, from a fresh cache (``reset``: no prefix kept from the last call)."""
    engine.reset()
    stream = engine.generate(PROMPT_IDS, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)
    return list(itertools.islice(stream, n))


def main() -> None:
    from book_reference import GPT_CONFIG_124M

    from gpt_lab.model.gpt import GPTModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 new tokens, 3 rounds")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--new-tokens", type=int, help="generated tokens (default 200, quick 50)")
    parser.add_argument("--reps", type=int, help="timed rounds (default 5, quick 3)")
    args = parser.parse_args()
    args.new_tokens = args.new_tokens or (50 if args.quick else 200)
    args.reps = args.reps or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    cfg = dict(GPT_CONFIG_124M)
    torch.manual_seed(123)
    state = GPTModel(cfg).state_dict()
    print(f"llama.cpp against gpt_lab: gpt2_small, greedy, batch 1, prompt + {args.new_tokens} tokens", flush=True)
    result = llama_cpp_row(state, cfg, args)
    for name, row in result.get("rows", {}).items():
        print(f"  {name:40s} {row['median']:8.1f} tok/s ({row['min']:.1f}-{row['max']:.1f}, n={row['runs']})")


if __name__ == "__main__":
    main()
