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
from torch import nn

from gpt_lab.config import ESTIMATE_DTYPES
from gpt_lab.model.estimate import (
    expert_layers,
    expert_size,
    forward_flops,
    kv_cache_bytes,
    meta_model,
    parameter_counts,
    recurrent_state_bytes,
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
        "recurrent_state_bytes": recurrent_state_bytes(model, batch, dtype),  # part of kv_cache.bytes
        "flops": {**flops, "batch_size": batch, "tokens": context},
    }
    for line in table(results):
        log.info(line)
    out_dir = Path(cfg.paths.output_dir)
    plots = [plot_kv_cache(model_cfg, batch, dtype, out_dir / "kv_cache.png")]
    if expert_layers(model):
        plots.append(plot_moe_parameters(model, out_dir / "moe_parameters.png"))
    results["plots"] = [str(p) for p in plots]
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
        ("  of which recurrent state (DeltaNet layers)", _bytes(results["recurrent_state_bytes"])),
        ("KV cache per token", f"{kv['bytes_per_token']:,} B"),
        (f"FLOPs of one forward ({f['batch_size']} x {f['tokens']:,} tokens), counted", f"{f['counted']:.3g}"),
        ("FLOPs, Linear layers only (the book's)", f"{f['linear_only']:.3g}"),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def _bytes(n: int) -> str:
    return f"{n:,} B ({n / GB:.2f} GB)"


def kv_variants(model_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The book's attention variants at the configured model's sizes, labelled with their settings.

    Each takes the configured value of its key where the config sets one, else the book's example:
    GQA with a quarter of the heads (``n_kv_groups=4``), MLA with a latent of half the width
    (2,048 -> 1,024), a window of a quarter of the context in the 5:1 pattern, DeltaNet's 3:1 hybrid.
    """
    m = dict(model_cfg)
    heads, emb, context = int(m["n_heads"]), int(m["emb_dim"]), int(m["context_length"])
    mha = {**m, "attention": "mha", "window": "full", "n_kv_heads": None, "full_attention_every": 0}
    kv = m.get("n_kv_heads") or max(d for d in range(1, max(1, heads // 4) + 1) if heads % d == 0)
    latent = m.get("latent_dim") or emb // 2
    window, pattern = m.get("sliding_window") or max(1, context // 4), m.get("sliding_pattern") or "5:1"
    sliding = {"window": "sliding", "sliding_window": window, "sliding_pattern": pattern}
    every = m.get("full_attention_every") or 4
    return {
        "MHA": mha,
        f"GQA ({kv} kv heads)": {**mha, "attention": "gqa", "n_kv_heads": kv},
        f"MLA (latent {latent})": {**mha, "attention": "mla", "latent_dim": latent},
        f"MHA + SWA ({window}, {pattern})": {**mha, **sliding},
        f"GQA + SWA ({window}, {pattern})": {**mha, "attention": "gqa", "n_kv_heads": kv, **sliding},
        f"DeltaNet ({every - 1}:1 hybrid)": {**mha, "attention": "deltanet", "full_attention_every": every},
    }


def _axes(size: tuple[float, float]) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Grid, legend, then the PNG written beside ``path`` and renamed."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def plot_kv_cache(model_cfg: Mapping[str, Any], batch: int, dtype: torch.dtype, path: Path) -> Path:
    """The book's plot: key/value cache (GB) against context length, one line per attention variant."""
    context = int(model_cfg["context_length"])
    lengths = sorted({max(1, context * i // PLOT_POINTS) for i in range(1, PLOT_POINTS + 1)})
    fig, ax = _axes((7, 4.5))
    curves = {"this config": dict(model_cfg), **kv_variants(model_cfg)}
    for name, variant in curves.items():
        model = meta_model(variant)
        style = {"linestyle": "--", "linewidth": 3, "alpha": 0.5} if name == "this config" else {"marker": "."}
        ax.plot(lengths, [kv_cache_bytes(model, batch, n, dtype) / GB for n in lengths], label=name, **style)
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("KV cache (GB)")
    ax.set_title(f"KV cache, batch {batch}, {str(dtype).removeprefix('torch.')}")
    return _save(fig, ax, path)


def moe_parameters_by_experts(model: nn.Module) -> tuple[list[int], list[int], list[int]]:
    """Total and active parameters of ``model`` had it ``n`` experts per expert layer, for ``n`` from
    ``experts_per_token`` to twice the configured number: each expert adds its own weights to the total
    and one router row to both; what a token uses stays ``experts_per_token`` experts."""
    layers = expert_layers(model)
    configured, counts = len(layers[0].fc1), parameter_counts(model)
    per_expert = sum(expert_size(layer) for layer in layers)
    router_row = sum(layer.gate.in_features for layer in layers)
    k = int(layers[0].experts_per_token)
    experts = sorted({*range(k, 2 * configured + 1, max(1, configured // 8)), configured, 2 * configured})
    total = [counts["total"] + (n - configured) * (per_expert + router_row) for n in experts]
    active = [counts["active"] + (n - configured) * router_row for n in experts]
    return experts, total, active


def plot_moe_parameters(model: nn.Module, path: Path) -> Path:
    """The book's MoE plot: total and active parameters against the number of experts."""
    experts, total, active = moe_parameters_by_experts(model)
    fig, ax = _axes((6, 4))
    ax.plot(experts, [n / 1e9 for n in total], marker=".", label="total parameters")
    ax.plot(experts, [n / 1e9 for n in active], marker=".", label="active per token")
    ax.axvline(len(expert_layers(model)[0].fc1), color="grey", linestyle=":", label="this config")
    ax.set_xlabel("Experts per layer")
    ax.set_ylabel("Parameters (billions)")
    return _save(fig, ax, path)
