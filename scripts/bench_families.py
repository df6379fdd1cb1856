"""Benchmark the model families (issue 26, point 7): greedy generation of each family's small random
preset and of Qwen3 0.6B's shapes, gpt_lab against transformers in fp32 and bf16, and the peak memory
of loading a 1B checkpoint.

    python scripts/bench_families.py [--quick] [--threads N] [--cpu-time] [--new-tokens N] [--reps N] [--no-load]

1. Generation: for ``llama3_2_tiny``, ``qwen3_tiny``, ``qwen3_moe_tiny``, ``gemma3_tiny`` and (not with
   --quick) ``qwen3_0_6b``, the preset's shapes become a transformers config
   (``gpt_lab.model.hf_families.family_hf_config``); transformers builds that model with random weights
   (seed 0) and writes it with ``save_pretrained``; gpt_lab loads the directory as ``init_from`` does.
   Greedy, batch 1, the same prompt ids: fp32 tokens must be identical before anything is timed (bf16
   rows report how many agree with fp32's). Rounds alternate the implementations; medians of tokens/s.
2. Loading (not with --quick or --no-load): ``llama3_2_1b``'s shapes written as random bf16
   safetensors (1.24 B parameters, 2.5 GB), then loaded by gpt_lab in a fresh interpreter
   (``build_model``: safetensors' memory map, one tensor at a time); the peak resident memory
   (``VmHWM``) against the bytes of the float32 model it builds: about 1x means no second full copy.

Wall-clock on CPU: compare ratios from one run, not absolute numbers across runs or machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import interleaved, summary

from gpt_lab.generation.sampling import generate
from gpt_lab.generation.weights import ACTIVATION_DTYPE, use_weights
from gpt_lab.model.hf_families import family_hf_config
from gpt_lab.model.weights import build_model

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no progress bars between the rows
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("llama3_2_tiny", "qwen3_tiny", "qwen3_moe_tiny", "gemma3_tiny")
LARGE = "qwen3_0_6b"
LOAD_PRESET = "llama3_2_1b"
PROMPT = [[15, 27, 3, 61, 8, 40]]
CONTEXT = 256  # the cache's length: prompt + new tokens fit (Qwen3's 40,960 positions would allocate GBs)
# A GPT-2 config for build_model to start from: the directory's config.json replaces it whole.
START = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def preset_config(name: str) -> dict[str, Any]:
    """``cfg.model`` of ``model=<name>``, composed by Hydra from conf/."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf"), job_name="bench"):
        cfg = compose("config", overrides=[f"model={name}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def transformers_model(hf_config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    import transformers

    kind = hf_config["model_type"]
    config_class = {"llama": "LlamaConfig", "qwen3": "Qwen3Config", "qwen3_moe": "Qwen3MoeConfig"}
    config = getattr(transformers, config_class.get(kind, "Gemma3TextConfig"))(**hf_config)
    torch.manual_seed(seed)
    model = getattr(transformers, hf_config["architectures"][0])(config)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model.float().eval()


def bench_family(name: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """gpt_lab against transformers on one preset's shapes, fp32 then bf16 (one pair of models in memory at a time),
    then gpt_lab's int8 alone (transformers' int8 needs torchao: its ratio is against transformers' bf16)."""
    cfg = preset_config(name)
    hf_config = family_hf_config(cfg)
    hf_config["max_position_embeddings"] = max(hf_config["max_position_embeddings"], CONTEXT)
    transformers_model(hf_config).save_pretrained(str(directory))
    idx = torch.tensor(PROMPT)
    n = args.new_tokens
    rows: dict[str, Any] = {}
    reference = None
    for weights in ("fp32", "bf16", "int8"):
        ours = use_weights(build_model({**START, "qkv_bias": False}, directory).eval(), weights)
        impls = {f"gpt_lab {weights}": lambda m=ours: generate(m, idx, n, CONTEXT)}
        if weights != "int8":
            theirs = saved_model(hf_config, directory).to(ACTIVATION_DTYPE[weights])
            rows["parameters"] = sum(p.numel() for p in theirs.parameters())
            impls[f"transformers {weights}"] = lambda m=theirs: m.generate(
                idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        tokens = {label: fn() for label, fn in impls.items()}  # also the warm-up
        if weights == "fp32":
            if not torch.equal(tokens["gpt_lab fp32"], tokens["transformers fp32"]):
                raise AssertionError(f"{name}: gpt_lab's fp32 greedy tokens differ from transformers'")
            reference = tokens["gpt_lab fp32"][0, idx.shape[1] :]
        for label, seconds in interleaved(impls, args.reps, warmup=0, clock=CLOCK).items():
            agree = int((tokens[label][0, idx.shape[1] :] == reference).sum())
            rows[label] = {**summary(seconds, n), "tokens_equal_fp32": agree}
        against = "transformers bf16" if weights == "int8" else f"transformers {weights}"
        rows[f"ratio {weights}"] = rows[f"gpt_lab {weights}"]["median"] / rows[against]["median"]
        del ours, impls
        theirs = None
    print(f"\n### {name} ({rows['parameters'] / 1e6:.1f} M parameters, {n} new tokens, {args.reps} rounds)")
    for label in ("gpt_lab fp32", "transformers fp32", "gpt_lab bf16", "transformers bf16", "gpt_lab int8"):
        r = rows[label]
        print(
            f"  {label:18s} {r['median']:8.1f} tok/s ({r['min']:.1f}-{r['max']:.1f})  tokens equal to fp32: "
            f"{r['tokens_equal_fp32']}/{n}"
        )
    print(
        f"  gpt_lab / transformers: fp32 {rows['ratio fp32']:.2f}x, bf16 {rows['ratio bf16']:.2f}x, "
        f"int8 (against transformers' bf16) {rows['ratio int8']:.2f}x",
        flush=True,
    )
    return rows


def saved_model(hf_config: dict[str, Any], directory: Path) -> torch.nn.Module:
    """transformers' model of ``directory``, as ``from_pretrained`` loads it (float32, eval mode)."""
    import transformers

    model = getattr(transformers, hf_config["architectures"][0]).from_pretrained(str(directory), dtype=torch.float32)
    model.generation_config.eos_token_id = None
    return model.eval()


def write_random_checkpoint(name: str, directory: Path) -> int:
    """``name``'s shapes as random bf16 safetensors + config.json in ``directory``; returns the parameter count."""
    from safetensors.torch import save_file

    hf_config = family_hf_config(preset_config(name))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers_model_meta(hf_config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    if hf_config["tie_word_embeddings"]:
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({**hf_config, "torch_dtype": "bfloat16"}))
    return sum(t.numel() for t in tensors.values())


def transformers_model_meta(hf_config: dict[str, Any]) -> torch.nn.Module:
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config))


LOAD_CHILD = """
import json, torch
from gpt_lab.model.weights import build_model
start = {start!r}
model = build_model({{**start, "qkv_bias": False}}, {directory!r})
nbytes = sum(t.nbytes for t in {{p.data_ptr(): p for p in model.parameters()}}.values())
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec,
# so after the bench's own rows it reported the parent's peak (9.17 GiB here), not this load's.
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"peak_rss": peak, "model_bytes": nbytes}}))
"""


def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of gpt_lab loading llama3_2_1b's shapes (random bf16 safetensors) in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        params = write_random_checkpoint(LOAD_PRESET, directory)
        file_bytes = (directory / "model.safetensors").stat().st_size
        code = LOAD_CHILD.format(start=START, directory=str(directory))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    row = {**out, "parameters": params, "file_bytes": file_bytes, "ratio": out["peak_rss"] / out["model_bytes"]}
    gib = 2.0**30
    print(
        f"\n### loading {LOAD_PRESET} ({params / 1e9:.2f} B parameters, bf16 safetensors {file_bytes / gib:.2f} GiB)\n"
        f"  peak RSS {out['peak_rss'] / gib:.2f} GiB = {row['ratio']:.2f}x the float32 model it builds "
        f"({out['model_bytes'] / gib:.2f} GiB)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny presets only, fewer tokens and rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 100 (quick: 30)")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 5, quick: 3)")
    parser.add_argument("--no-load", action="store_true", help="skip the 1B loading row")
    parser.add_argument(
        "--only", nargs="+", metavar="PRESET", help=f"these presets only ({', '.join(PRESETS)}, {LARGE})"
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time this process's CPU seconds, not the wall clock (a machine shared with other jobs; use --threads 1)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench" / "families.json")
    args = parser.parse_args()
    args.new_tokens = args.new_tokens or (30 if args.quick else 100)
    args.reps = args.reps or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    print(f"## model families: gpt_lab vs transformers, greedy, batch 1 (torch {torch.__version__})", flush=True)
    results: dict[str, Any] = {}
    for name in args.only or (PRESETS if args.quick else (*PRESETS, LARGE)):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = bench_family(name, Path(tmp), args)
    if not args.quick and not args.no_load:
        results["load"] = bench_load(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
