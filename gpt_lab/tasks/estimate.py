"""task=estimate: what the composed model costs, sized on the meta device (nothing is allocated).

Chapter 4's bonus estimators (ch04/04-08 of the book's repository) as one task for any composed
config: parameters (total, unique with the head tied, active per token under a mixture of experts),
the weights' memory per dtype, the key/value cache at ``model.context_length`` x
``estimate.batch_size`` in ``estimate.dtype`` (from the tensors the model's own cache allocates),
and the FLOPs of one forward pass (counted, and the book's Linear-only convention). Printed as a
table, written to results.json, and drawn as the book's plots in the run directory:
``kv_cache.png`` (cache against context length, the configured model beside the attention variants
of its sizes) and, for ``ffn=moe``, ``moe_parameters.png`` (total and active parameters against the
number of experts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import ESTIMATE_DTYPES
from gpt_lab.model.estimate import (
    forward_flops,
    kv_cache_bytes,
    meta_model,
    parameter_counts,
    weight_bytes,
)
from gpt_lab.model.stats import model_report
from gpt_lab.storage import atomic_write

log = logging.getLogger(__name__)

GB = 1000**3  # the book's estimators print decimal gigabytes
PLOT_POINTS = 16  # context lengths drawn in kv_cache.png


def run(cfg: DictConfig) -> dict[str, Any]:
    """Size ``cfg.model`` on the meta device; returns the results.json fields (see the module docstring)."""
    model_cfg = OmegaConf.to_container(cfg.model)
    batch, dtype_name = cfg.estimate.batch_size, ESTIMATE_DTYPES[cfg.estimate.dtype]
    dtype = getattr(torch, dtype_name)
    model = meta_model(model_cfg)
    context = model.context_length
    params = parameter_counts(model)
    kv_bytes = kv_cache_bytes(model, batch, context, dtype)
    flops = forward_flops(model, batch, context)
    results: dict[str, Any] = {
        "model_config": model.cfg,
        **model_report(model),
        "parameters": params,
        "weight_bytes": weight_bytes(model),
        "kv_cache": {
            "bytes": kv_bytes,
            # The average over the cached tokens: a sliding window's or a recurrent state's share shrinks
            # as the context grows.
            "bytes_per_token": kv_bytes // (batch * context),
            "batch_size": batch,
            "context_length": context,
            "dtype": dtype_name,
        },
        "flops": {**flops, "batch_size": batch, "tokens": context},
    }
    for line in table(results):
        log.info(line)
    out_dir = Path(cfg.paths.output_dir)
    results["plots"] = [str(p) for p in (plot_kv_cache(model_cfg, batch, dtype, out_dir / "kv_cache.png"),) if p]
    return results


def table(results: Mapping[str, Any]) -> list[str]:
    """The estimate as the lines of a two-column table."""
    p, kv, f = results["parameters"], results["kv_cache"], results["flops"]
    rows = [
        ("parameters, total (head counted apart)", f"{p['total']:,}"),
        ("parameters, unique (head tied)", f"{p['unique']:,}"),
        ("parameters, active per token", f"{p['active']:,}"),
        *((f"weights in {name}", _bytes(n)) for name, n in results["weight_bytes"].items()),
        (
            f"KV cache ({kv['batch_size']} x {kv['context_length']:,} tokens, {kv['dtype']})",
            _bytes(kv["bytes"]),
        ),
        ("KV cache per token", f"{kv['bytes_per_token']:,} B"),
        (f"FLOPs of one forward ({f['batch_size']} x {f['tokens']:,} tokens), counted", f"{f['counted']:.3g}"),
        ("FLOPs, Linear layers only (the book's)", f"{f['linear_only']:.3g}"),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def _bytes(n: int) -> str:
    return f"{n:,} B ({n / GB:.2f} GB)"


def kv_variants(model_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The configured model, and the same sizes with the other attention kinds (where the config has them)."""
    return {"this config": dict(model_cfg)}


def plot_kv_cache(model_cfg: Mapping[str, Any], batch: int, dtype: torch.dtype, path: Path) -> Path:
    """The book's plot: key/value cache (GB) against context length, one line per attention variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    context = int(model_cfg["context_length"])
    lengths = sorted({max(1, context * i // PLOT_POINTS) for i in range(1, PLOT_POINTS + 1)})
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, variant in kv_variants(model_cfg).items():
        model = meta_model(variant)
        ax.plot(lengths, [kv_cache_bytes(model, batch, n, dtype) / GB for n in lengths], marker="o", label=name)
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("KV cache (GB)")
    ax.set_title(f"KV cache, batch {batch}, {str(dtype).removeprefix('torch.')}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path
