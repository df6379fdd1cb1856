"""A Hugging Face directory of another family (Llama 3, Qwen3, Gemma 3), read lazily.

``config.json`` gives the architecture (gpt_lab.model.hf_families); ``model.safetensors`` or the
shards a ``model.safetensors.index.json`` lists are opened with safetensors' ``safe_open`` (a memory
map) and read one tensor at a time, each renamed and made float32 before the next is read, so
the peak is about one float32 copy of the weights (no second copy of the file in memory).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gpt_lab.errors import InitFromError
from gpt_lab.model.hf_families import canonical_name, family_config, model_type_of, name_map

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_LISTED = 8
# Tensors older checkpoints saved that are not weights (RoPE's inverse frequencies).
NOT_WEIGHTS = ("rotary_emb.inv_freq",)


def read_config(directory: Path) -> dict[str, Any] | None:
    """``directory``'s ``config.json`` as a dict; None when there is none."""
    file = directory / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InitFromError(f"init_from={directory}: {CONFIG_FILE} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise InitFromError(f"init_from={directory}: {CONFIG_FILE} does not hold a JSON object")
    return data


def family_directory(path: str | Path) -> Path | None:
    """The directory of ``path`` when its ``config.json`` is another family's than GPT-2 (checked: an
    unknown ``model_type`` is refused with the supported list); None for GPT-2 and for plain files."""
    path = Path(path).expanduser()
    directory = path if path.is_dir() else path.parent
    hf = read_config(directory)
    if hf is None or hf.get("model_type") == "gpt2":
        return None
    if "model_type" not in hf:
        return None  # not a transformers config.json
    model_type_of(hf, str(directory))
    return directory


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files holding the weights: the one file, or the shards the index lists."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InitFromError(
                f"init_from={directory}: {SAFETENSORS_INDEX} has no readable weight_map ({err})"
            ) from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InitFromError(
                f"init_from={directory}: shards listed in {SAFETENSORS_INDEX} are missing: {', '.join(missing)}"
            )
        return files
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    raise InitFromError(
        f"init_from={directory}: {CONFIG_FILE} is here but no weights: expected {SAFETENSORS_FILE} or "
        f"{SAFETENSORS_INDEX} with its shards (download them with the config from the model's page)"
    )


# The memory map is closed and opened again once this many bytes were read through it: the pages it
# touched leave the process, so loading peaks near the float32 model plus this, not plus the file.
REMAP_BYTES = 256 * 2**20


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of ``files``, read one at a time from safetensors' memory map
    (reopened every ``REMAP_BYTES``: a 1B model's bf16 file peaked 1.55x its float32 weights mapped whole)."""
    from safetensors import safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                names = list(f.keys())
            mapped, read = None, REMAP_BYTES
            for name in names:
                if read >= REMAP_BYTES:
                    mapped, read = safe_open(str(file), framework="pt", device="cpu"), 0
                tensor = mapped.get_tensor(name)
                read += tensor.numel() * tensor.element_size()
                yield name, tensor
            del mapped
        except InitFromError:
            raise
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged file
            raise InitFromError(f"init_from={file}: not a readable safetensors file ({err})") from None


def _listed(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else ""
    return ", ".join(sorted(names)[:MAX_LISTED]) + more


def read_family(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(cfg.model keys, state dict in our names, float32)`` of the family directory ``directory``.

    Whether the output head is tied is the file's to say (no ``lm_head.weight``: tied). Every
    tensor of the file must have a place in the model and every parameter a tensor, else
    ``InitFromError`` names them.
    """
    source = str(directory)
    hf = read_config(directory)
    if hf is None:
        raise InitFromError(f"init_from={directory}: no {CONFIG_FILE}; it says which family and sizes the weights have")
    cfg = family_config(hf, source)
    files = shard_files(directory)
    names = name_map({**cfg, "tie_weights": False})
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for raw_name, tensor in iter_tensors(files):
        if raw_name.endswith(NOT_WEIGHTS):
            continue
        ours = names.get(canonical_name(raw_name))
        if ours is None:
            unknown.append(raw_name)
            continue
        state[ours] = tensor.float() if tensor.is_floating_point() else tensor
    if unknown:
        raise InitFromError(
            f"init_from={directory}: tensors that a {hf.get('model_type')} model with this {CONFIG_FILE} does not "
            f"have: {_listed(unknown)} (a checkpoint of another layout, or config.json of another model)"
        )
    cfg["tie_weights"] = "out_head.weight" not in state
    if cfg["tie_weights"]:  # our state dict names the tied head too (the same tensor)
        state["out_head.weight"] = state.get("tok_emb.weight", torch.empty(0))
    missing = [hf_name for hf_name, ours in name_map(cfg).items() if ours not in state]
    if missing:
        raise InitFromError(f"init_from={directory}: tensors missing from the weights: {_listed(missing)}")
    return cfg, state


def check_preset(chosen: Mapping[str, Any], found: Mapping[str, Any], source: str) -> list[str]:
    """Keys of the chosen family preset that differ from the file's config (one line each).

    ``context_length`` may be shorter than the file's (RoPE works at any length up to it).
    """
    problems = []
    for key, value in found.items():
        if key in ("drop_rate", "tie_weights") or key not in chosen:
            continue
        mine = chosen[key]
        if key == "context_length" and mine is not None and int(mine) <= int(value):
            continue
        if isinstance(value, float) and isinstance(mine, (int, float)) and not isinstance(mine, bool):
            same = abs(float(mine) - value) <= 1e-9 * max(1.0, abs(value))
        elif key == "head_dim" and mine is None:
            same = int(chosen["emb_dim"]) // int(chosen["n_heads"]) == value
        else:
            same = _plain(mine) == _plain(value)
        if not same:
            problems.append(f"model.{key}={_plain(mine)} but {source}'s config.json gives {value}")
    return problems


def _plain(value: Any) -> Any:
    """Config containers (an OmegaConf node too) as plain Python values, for comparison and messages."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return [_plain(v) for v in value]
    return value
