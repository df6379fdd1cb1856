"""Starting weights from files (``init_from``): Hugging Face GPT-2, the book's ``model.pth``, our ``.ckpt``.

Every format is read into one thing: a state dict in the book's layout (``tok_emb.weight``,
``trf_blocks.0.att.W_query.weight``, ...) plus what the weights themselves decide about the
architecture (query/key/value biases, weight tying, context length; the head count when the
file states it). ``build_model`` applies those to the chosen config, refuses a config that
cannot hold the weights (tensor by tensor: name, expected shape, found shape) and returns a
``GPTModel`` holding them.

The Hugging Face layout and its conversion: gpt_lab.model.hf. Other families' Hugging Face
directories (Llama 3, Qwen3, Gemma 3; their config.json decides the whole architecture):
gpt_lab.model.hf_files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt_lab.config import GPT2_SIZES
from gpt_lab.config.architecture import ARCH_DEFAULTS, ARCH_GROUPS, arch_summary, is_book_architecture
from gpt_lab.errors import InitFromError, first_line
from gpt_lab.model.adapters import BASE_WEIGHTS_KEY, adapter_base_path, load_adapter, load_base_of, read_adapter_meta
from gpt_lab.model.gpt import GPTModel, model_config_dict
from gpt_lab.model.hf import block_index, convert_hf_state_dict, n_blocks, read_hf_config
from gpt_lab.model.hf_files import check_preset, family_directory, read_family
from gpt_lab.model.lora import lora_scale, merge_lora_state
from gpt_lab.model.model_file import MODEL_FILE, read_meta

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MAX_LISTED = 12  # mismatched tensors listed one by one in an error message


@dataclass
class PretrainedWeights:
    """Weights read from ``path``, in the book's layout, and what they fix about the model.

    ``config``: model keys the weights decide (``qkv_bias``, ``tie_weights``,
    ``context_length``); ``stated``: what the file states but the tensors cannot show
    (``n_heads``), checked against the chosen config rather than applied.
    """

    path: Path
    format: str  # "huggingface" | "book" | "lightning"
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    stated: dict[str, Any] = field(default_factory=dict)
    # A fine-tuned model's model.json (gpt_lab.model.model_file): class names, pooling, prompt style, ...
    meta: dict[str, Any] | None = None
    # The architecture lab's keys the file's saved config states (issue 25); None: a GPT-2 file that
    # states none (Hugging Face, the book's model.pth): the book's parts, the only ones it can hold.
    architecture: dict[str, Any] | None = None
    # Another family's directory (its config.json's model_type): ``config`` is then its whole architecture.
    family: str | None = None


def _stated_architecture(model_cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The architecture keys of a saved model config (a key it lacks is the book's); None without one."""
    if not isinstance(model_cfg, Mapping):
        return None
    return {k: ARCH_DEFAULTS[k] if model_cfg.get(k) is None else model_cfg[k] for k in ARCH_DEFAULTS}


# ---------------------------------------------------------------------------------------------
# Reading files


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Weights only load failed" in str(err):  # torch's page of advice: the gist, in one sentence
            reason = "it holds Python objects besides tensors, which gpt_lab never unpickles (that can run code)"
        else:
            reason = f"{type(err).__name__}: {first_line(err)[:200]}"
        raise InitFromError(
            f"init_from={path}: not a weights file gpt_lab can read ({reason}); give a state dict of tensors (the "
            "book's model.pth), a Lightning .ckpt of task=train, a run directory or a Hugging Face GPT-2 directory"
        ) from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.name.endswith(".index.json"):  # sharded: {"weight_map": {tensor name: shard file}}
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_safetensors_load(path.parent / shard))
        return out
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise InitFromError(f"init_from={path}: not a readable safetensors file ({err})") from err


def _weights_file(path: Path) -> Path:
    """The file holding the weights: ``path`` itself, or the known file inside a directory."""
    if not path.exists():
        raise InitFromError(f"init_from={path}: no such file or directory")
    if path.is_file():
        return path
    for name in (*HF_WEIGHT_FILES, MODEL_FILE):
        if (path / name).is_file():
            return path / name
    ckpts = sorted(path.glob("*.ckpt"))
    if len(ckpts) == 1:
        return ckpts[0]
    raise InitFromError(
        f"init_from={path}: the directory holds none of {', '.join((*HF_WEIGHT_FILES, MODEL_FILE))}"
        + (f" and {len(ckpts)} .ckpt files (name one)" if ckpts else "")
    )


def _find_model_config(obj: Any, depth: int = 0) -> Mapping[str, Any] | None:
    """The first mapping holding the model's size keys inside Lightning's ``hyper_parameters``."""
    if isinstance(obj, Mapping):
        if "emb_dim" in obj and "n_heads" in obj:
            return obj
        if depth < 3:
            for value in obj.values():
                found = _find_model_config(value, depth + 1)
                if found is not None:
                    return found
    return None


def load_pretrained(path: str | Path) -> PretrainedWeights:
    """Read the weights at ``path`` (a file, or a directory holding one) in the book's layout.

    Recognised, by content rather than by name: a Hugging Face GPT-2 directory or file
    (``model.safetensors``, sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``;
    keys with or without ``transformer.``; its ``config.json`` is read when it sits beside the
    weights), a book-format ``model.pth`` (a state dict, or chapter 5's
    ``{"model_state_dict": ..., "optimizer_state_dict": ...}``), and a Lightning ``.ckpt``
    written by ``GPTLitModule`` (``state_dict`` keys ``model.*``). Floating tensors come back
    as float32.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InitFromError(f"init_from={path}: no such file or directory")
    family_dir = family_directory(path)
    if family_dir is not None:
        config, state = read_family(family_dir)
        kind = str(json.loads((family_dir / "config.json").read_text(encoding="utf-8"))["model_type"])
        return PretrainedWeights(family_dir, "huggingface", state, config, family=kind)
    file = _weights_file(path)
    adapter = read_adapter_meta(file)
    if adapter is not None:  # a LoRA run's adapter.safetensors: its base, then the adapters, merged
        state = load_adapter(file, adapter, load_pretrained(adapter_base_path(file, adapter)).state_dict)
        state = _merge_checkpoint_lora(state, adapter, file)
        return PretrainedWeights(file, "adapter", state, _architecture_from_tensors(state, str(file)), {}, None)
    if file.name.endswith((".safetensors", ".safetensors.index.json")):
        raw: Any = _safetensors_load(file)
    else:
        raw = _torch_load(file)
    if not isinstance(raw, Mapping):
        raise InitFromError(f"init_from={file}: expected a state dict, found a {type(raw).__name__}")

    stated: dict[str, Any] = {}
    meta = None
    architecture = None
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):  # Lightning checkpoint
        fmt = "lightning"
        prefix = "model."
        state = {k.removeprefix(prefix): v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise InitFromError(f"init_from={file}: a Lightning checkpoint without GPTLitModule's model.* weights")
        hyper = raw.get("hyper_parameters") or {}
        base = raw.get(BASE_WEIGHTS_KEY)
        if isinstance(base, Mapping):  # a LoRA run's checkpoint holds its own tensors only: the base first
            base_state = load_pretrained(adapter_base_path(file, {"base": base})).state_dict
            state = {**load_base_of(file, {"base": base}, base_state), **state}
        hparams = _find_model_config(hyper)
        if hparams is not None:
            stated = {"n_heads": hparams["n_heads"]}
        architecture = _stated_architecture(hparams)
        state = _merge_checkpoint_lora(state, hyper, file)
    elif "model_state_dict" in raw and isinstance(raw["model_state_dict"], Mapping):  # book, chapter 5
        fmt, state = "book", dict(raw["model_state_dict"])
    elif "tok_emb.weight" in raw:
        fmt, state = "book", dict(raw)
        meta = read_meta(file)  # a fine-tuned model's model.json, when one sits beside it
        if meta and isinstance(meta.get("model"), Mapping):
            stated = {k: meta["model"][k] for k in ("n_heads",) if k in meta["model"]}
            architecture = _stated_architecture(meta["model"])
    elif any(k.removeprefix("transformer.") == "wte.weight" for k in raw):
        fmt = "huggingface"
        state = convert_hf_state_dict(raw, source=str(file))
        stated = read_hf_config(file.parent)
    elif any(k.startswith("model.layers.") for k in raw):
        raise InitFromError(
            f"init_from={file}: Hugging Face weights of a Llama / Qwen3 / Gemma 3 style model, without the "
            f"config.json that says which one: put the model's config.json (and tokenizer.json) beside {file.name}"
        )
    else:
        sample = ", ".join(list(raw)[:5])
        raise InitFromError(
            f"init_from={file}: not a GPT-2 state dict this project knows (keys start {sample}); expected "
            "a Hugging Face GPT-2 (wte.weight, h.0.attn.c_attn.weight, ...), the book's model.pth "
            "(tok_emb.weight, trf_blocks.0...) or a gpt_lab Lightning checkpoint"
        )

    # The book's attention keeps a causal-mask buffer; GPTModel has none (it uses is_causal).
    state = {k: v for k, v in state.items() if not k.endswith(".att.mask")}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InitFromError(f"init_from={file}: entry {key} is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and value.dtype != torch.float32:
            state[key] = value.float()
    config = _architecture_from_tensors(state, str(file))
    if meta and isinstance(meta.get("model"), Mapping) and "causal_mask" in meta["model"]:
        config["causal_mask"] = bool(meta["model"]["causal_mask"])  # the tensors cannot show it
    return PretrainedWeights(file, fmt, state, config, stated, meta, architecture)


def _merge_checkpoint_lora(state: dict[str, torch.Tensor], hyper: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """A LoRA run's Lightning checkpoint holds ``*.lora_A`` / ``*.lora_B``: fold them into the weights."""
    if not any(k.endswith(".lora_A") for k in state):
        return state
    lora = hyper.get("lora") if isinstance(hyper, Mapping) else None
    if not isinstance(lora, Mapping) or "rank" not in lora or "alpha" not in lora:
        raise InitFromError(
            f"init_from={file}: the checkpoint holds LoRA adapters but not the lora settings that scale them"
        )
    scale = lora_scale(int(lora["rank"]), float(lora["alpha"]), str(lora.get("scaling") or "rank"))
    return merge_lora_state(state, scale)


# ---------------------------------------------------------------------------------------------
def _architecture_from_tensors(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """What the tensors decide: context length (learned positions), query/key/value biases, a tied output head."""
    if "tok_emb.weight" not in state:
        raise InitFromError(f"init_from={source}: the weights have no tok_emb")
    tok = state["tok_emb.weight"]
    head = state.get("out_head.weight")
    tied = head is None or head is tok or (head.shape == tok.shape and torch.equal(head, tok))
    # A head with another number of rows than the vocabulary is chapter 6's classification head.
    classes = int(head.shape[0]) if head is not None and head.shape[0] != tok.shape[0] else None
    learned = {"context_length": int(state["pos_emb.weight"].shape[0])} if "pos_emb.weight" in state else {}
    return {
        **learned,
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in state,
        "tie_weights": bool(tied),
        "num_classes": classes,
    }


# ---------------------------------------------------------------------------------------------
# Fitting weights to a config


def _fmt(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def resolve_model_config(model_cfg: Any, weights: PretrainedWeights) -> dict[str, Any]:
    """``model_cfg`` (dict, OmegaConf node or dataclass) with what ``weights`` need, checked.

    Sets ``qkv_bias``, ``tie_weights`` and ``context_length`` from the weights (logging each
    change), then raises ``InitFromError`` listing every tensor the resulting config cannot hold
    (name, expected shape, found shape), every missing or extra tensor, and any size the file
    states (e.g. ``n_heads``) that differs from the config.
    """
    cfg = model_config_dict(model_cfg)
    problems: list[str] = []
    if weights.family is None:
        _check_architecture(cfg, weights)
    elif cfg.get("pos_emb", "learned") != "learned":
        # A family preset named beside the directory: checked against its config.json, not replaced.
        problems += check_preset(cfg, weights.config, str(weights.path))
        if cfg.get("context_length") and not problems:
            weights.config["context_length"] = min(int(cfg["context_length"]), weights.config["context_length"])
    changes = {key: (cfg.get(key), value) for key, value in weights.config.items() if cfg.get(key) != value}
    cfg.update(weights.config)
    # The weights are read, not drawn: a model built from this config to be loaded (a training run's)
    # skips model.init_std's pass over every weight (3 s for Qwen3 0.6B) after PyTorch's own init.
    cfg["init_std"] = None

    for key, value in weights.stated.items():
        if key in cfg and cfg[key] != value:
            problems.append(f"model.{key}={cfg[key]} but the weights were made with {key}={value}")
    with torch.device("meta"):
        expected = GPTModel(cfg).state_dict()
    found = weights.state_dict
    shape_lines = [
        f"  {k}: expected {_fmt(expected[k].shape)}, found {_fmt(found[k].shape)}"
        for k in expected
        if k in found and expected[k].shape != found[k].shape
    ]
    if shape_lines:
        problems.append(f"{len(shape_lines)} tensor(s) have other shapes:")
        problems += shape_lines[:MAX_LISTED]
        if len(shape_lines) > MAX_LISTED:
            problems.append(f"  ... and {len(shape_lines) - MAX_LISTED} more")
    n_found = n_blocks(found)
    if n_found != cfg["n_layers"]:
        problems.append(f"model.n_layers={cfg['n_layers']} but the weights have {n_found} transformer blocks")
    # Whole blocks missing or extra are the line above; list only the other keys.
    common = min(n_found, cfg["n_layers"])
    missing = [k for k in expected if k not in found and block_index(k) < common]
    extra = [k for k in found if k not in expected and block_index(k) < common]
    for what, keys in (("missing from the weights", missing), ("in the weights but not in the model", extra)):
        if keys:
            listed = ", ".join(keys[:MAX_LISTED]) + (f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED else "")
            problems.append(f"tensors {what}: {listed}")
    if problems:
        name = cfg.get("name")
        chosen = f"model={name}" if name else "the model config"
        hint = _size_hint(found, weights.stated)
        raise InitFromError(
            f"init_from={weights.path}: {chosen} (emb_dim={cfg['emb_dim']}, n_layers={cfg['n_layers']}, "
            f"n_heads={cfg['n_heads']}, vocab_size={cfg['vocab_size']}) cannot hold these {weights.format} "
            "weights:\n" + "\n".join(problems) + (f"\n{hint}" if hint else "")
        )
    for key, (old, new) in changes.items():
        log.info("init_from: model.%s=%s (was %s) to fit %s", key, new, old, weights.path)
    return cfg


def _check_architecture(cfg: Mapping[str, Any], weights: PretrainedWeights) -> None:
    """Refuse, in one paragraph, weights of another architecture than ``cfg``'s (issue 25)."""
    if weights.architecture is None:  # a GPT-2 file: the book's parts only
        if is_book_architecture(cfg):
            return
        raise InitFromError(
            f"init_from={weights.path} holds GPT-2 weights ({weights.format} format), which only the book's parts "
            f"can hold ({arch_summary(ARCH_DEFAULTS)}); this run asks for {arch_summary(cfg)}"
            f"{_settings(cfg, ARCH_DEFAULTS)}. Choose the book's parts to start from these weights, or train "
            "the variant from fresh weights (no init_from)."
        )
    if all(cfg[k] == v for k, v in weights.architecture.items()):
        return
    raise InitFromError(
        f"init_from={weights.path} holds a model of another architecture than this run's: "
        + ", ".join(f"model.{k}={cfg[k]} (weights: {v})" for k, v in weights.architecture.items() if cfg[k] != v)
        + ". Run with the weights' settings (the groups and keys above), or train this variant from fresh "
        "weights (no init_from)."
    )


def _settings(cfg: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    """`` (model.n_kv_heads=2, ...)``: the non-group keys of ``cfg`` that differ from ``reference``."""
    keys = [k for k in reference if k not in ARCH_GROUPS]
    differ = [f"model.{k}={cfg[k]}" for k in keys if cfg[k] != reference[k]]
    return f" ({', '.join(differ)})" if differ else ""


def _size_hint(state: Mapping[str, torch.Tensor], stated: Mapping[str, Any]) -> str:
    """'these look like gpt2_medium weights: use model=gpt2_medium', when they do."""
    emb = int(state["tok_emb.weight"].shape[1])
    n_layers = n_blocks(state)
    for option, size in GPT2_SIZES.items():
        heads = size["n_heads"]
        if (size["emb_dim"], size["n_layers"]) == (emb, n_layers) and stated.get("n_heads", heads) == heads:
            return f"These look like {option} weights: use model={option}."
    return f"The weights have emb_dim={emb}, n_layers={n_layers}: set model.emb_dim / model.n_layers to match."


def build_model(model_cfg: Any, init_from: str | Path | None = None) -> GPTModel:
    """The run's ``GPTModel``: freshly initialised, or holding the weights at ``init_from``.

    ``model_cfg``: the composed ``cfg.model`` (OmegaConf node), the book's dict or a dataclass.
    Without ``init_from`` this is ``GPTModel(model_cfg)`` (seed first, e.g.
    ``torch.manual_seed(cfg.seed)``, for the book's initial weights). With it, the weights
    are read (``load_pretrained``), the config is fitted to them (``resolve_model_config``:
    qkv bias, weight tying and context length set from the file; a config that cannot hold
    them raises ``InitFromError`` tensor by tensor) and loaded. The config actually used is
    ``model.cfg`` (a plain dict) — pass that, not ``cfg.model``, to anything that builds the
    model again (e.g. ``GPTLitModule(model.cfg, ...)`` followed by
    ``lit.model.load_state_dict(model.state_dict())``, or use ``init_model_config``).
    The model is returned in training mode on the CPU, in float32.
    """
    if init_from is None or str(init_from) == "":
        return GPTModel(model_cfg)
    weights = load_pretrained(init_from)
    cfg = resolve_model_config(model_cfg, weights)
    model = model_from_weights(cfg, weights)
    log.info("init_from: loaded %s weights from %s", weights.format, weights.path)
    return model


def require_language_model(model_cfg: Mapping[str, Any], init_from: str | Path | None, task: str) -> None:
    """Refuse (``InitFromError``) a classifier's weights where ``task`` needs a language model.

    A chapter-6 classifier's head outputs ``num_classes`` scores, not GPT-2's token ids: generating
    with it prints ids 0, 1, ...; training a language model on it fails on the first target id.
    """
    classes = model_cfg.get("num_classes")
    if classes:
        raise InitFromError(
            f"init_from={init_from} holds a classifier (a head of {classes} classes, not the "
            f"{model_cfg.get('vocab_size', 50257)}-token vocabulary), and {task} needs a language model: give "
            "init_from the language model it was fine-tuned from (e.g. gpt2/ or a chapter-5 / chapter-7 run), "
            f"or classify texts with task=classify init_from={init_from}"
        )


def init_model_config(model_cfg: Any, init_from: str | Path | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """For code that builds its own model (e.g. a LightningModule): ``(fitted config, state dict)``.

    ``GPTModel(config).load_state_dict(state_dict)`` then loads with ``strict=True``. Without
    ``init_from``: ``(model_config_dict(model_cfg), {})``.
    """
    if init_from is None or str(init_from) == "":
        return model_config_dict(model_cfg), {}
    weights = load_pretrained(init_from)
    return resolve_model_config(model_cfg, weights), weights.state_dict


def model_from_weights(cfg: Mapping[str, Any], weights: PretrainedWeights) -> GPTModel:
    """A ``GPTModel(cfg)`` holding ``weights`` (``cfg`` from ``resolve_model_config``).

    Built on the meta device and filled by assignment, so no time goes into random weights
    that would be overwritten.
    """
    with torch.device("meta"):
        model = GPTModel(cfg)
    model.load_state_dict(weights.state_dict, strict=True, assign=True)
    if model.cfg["tie_weights"]:
        model.out_head.weight = model.tok_emb.weight  # assignment gave each name its own Parameter
    for rope in (model.rope, model.rope_local):  # RoPE's tables are computed, not saved
        if rope is not None:
            rope.reset()
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # e.g. a non-persistent buffer
        model = GPTModel(cfg)
        model.load_state_dict(weights.state_dict, strict=True)
    return model
