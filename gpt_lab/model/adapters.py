"""A LoRA run's own tensors apart from its base (issue 29): what its checkpoints and its
``adapter.safetensors`` hold, and the reference to the base weights they need.

The *base* of a LoRA model is its frozen parameters that came from elsewhere: read from
``init_from`` (same name and shape), or, without ``init_from``, drawn from the run's seed. Everything
else — the adapters, a ``lora.train_also`` module, a new classification head (frozen or not, it is
not in the base file) — is the run's own. A base reference is ``{"path": init_from or None,
"fingerprint": blake2b of the base tensors' bytes, "keys": their names}``: a base that changed or
moved is told apart from the one the adapters were trained on.

``write_adapter(model, run_dir, settings, base)`` writes ``adapter.safetensors`` (the run's own
tensors) and ``adapter.json`` (the LoRA settings, the model config and the base reference);
``load_adapter(path)`` rebuilds the whole state from the base file and the adapter, adapters
still apart. Pure PyTorch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_lab.errors import InitFromError
from gpt_lab.model.model_file import plain_settings

ADAPTER_FILE = "adapter.safetensors"
BASE_WEIGHTS_KEY = "base_weights"  # a LoRA run's Lightning checkpoint: its base reference
ADAPTER_META_FILE = "adapter.json"


def base_keys(model: nn.Module, init_state: Mapping[str, torch.Tensor] | None) -> list[str]:
    """The names of ``model``'s frozen parameters that its base provides (see the module)."""
    keys = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        if init_state is None or (name in init_state and tuple(init_state[name].shape) == tuple(param.shape)):
            keys.append(name)
    return keys


def fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """blake2b of each tensor's name and bytes, in the order given."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_reference(model: nn.Module, keys: list[str], path: str | None) -> dict[str, Any]:
    state = model.state_dict()
    return {"path": path, "fingerprint": fingerprint((k, state[k]) for k in keys), "keys": list(keys)}


def own_state(model: nn.Module, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """``model``'s state without the base ``keys``: the adapters and whatever else the run made."""
    skip = set(keys)
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def write_adapter(model: nn.Module, run_dir: Path, settings: Mapping[str, Any], base: Mapping[str, Any]) -> Path:
    """``run_dir/adapter.safetensors`` and ``adapter.json`` (written beside, then renamed); return the first."""
    from safetensors.torch import save

    from gpt_lab.storage import atomic_write, write_text_atomic

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in own_state(model, base["keys"]).items()}
    path = run_dir / ADAPTER_FILE
    with atomic_write(path) as f:
        f.write(save(tensors))
    info = {
        "lora": plain_settings(dict(settings)),
        "model": plain_settings(dict(model.cfg)),
        "base": {"path": base["path"], "fingerprint": base["fingerprint"], "keys": list(base["keys"])},
    }
    write_text_atomic(run_dir / ADAPTER_META_FILE, json.dumps(info, indent=2) + "\n")
    return path


def read_adapter_meta(path: Path) -> dict[str, Any] | None:
    """The ``adapter.json`` beside an ``adapter.safetensors``, or None when ``path`` is not one."""
    meta_path = path.with_name(ADAPTER_META_FILE)
    if path.name != ADAPTER_FILE or not meta_path.is_file():
        return None
    return json.loads(meta_path.read_text(encoding="utf-8"))


def adapter_base_path(path: Path, meta: Mapping[str, Any]) -> str:
    """Where the base weights of the adapter ``path`` were read from; an error when they were drawn from a seed."""
    base = meta["base"]
    if not base.get("path"):
        raise InitFromError(
            f"init_from={path}: these adapters were trained on base weights drawn from the run's seed, not read "
            "from a file, so there is no base to load them onto; use the run's model.pth (adapters merged)"
        )
    return str(base["path"])


def load_adapter(
    path: Path, meta: Mapping[str, Any], base_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The whole state of the model ``path`` (an ``adapter.safetensors``) was trained as: ``base_state``
    (read from ``adapter_base_path``) checked against the recorded fingerprint, then the adapter's tensors."""
    from safetensors.torch import load_file

    return {**load_base_of(path, meta, base_state), **load_file(str(path))}


def load_base_of(
    path: Path, meta: Mapping[str, Any], base_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The base tensors ``meta["base"]`` names, from ``base_state``, checked against its fingerprint."""
    base = meta["base"]
    missing = [k for k in base["keys"] if k not in base_state]
    if missing or fingerprint((k, base_state[k]) for k in base["keys"]) != base["fingerprint"]:
        raise InitFromError(
            f"init_from={path}: the adapters were trained on the base weights at {base['path']}, and the weights "
            "there are not those any more (their checksum differs); put the original base weights back at that "
            "path, or use the run's model.pth (adapters merged)"
        )
    return {k: base_state[k] for k in base["keys"]}
