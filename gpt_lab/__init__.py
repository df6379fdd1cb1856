"""gpt_lab: chapter 4's GPT-2 model in a Hydra + Lightning experiment harness.

The public Python API is re-exported here lazily (PEP 562), so ``import gpt_lab`` costs nothing
and generation never imports Lightning: ``from gpt_lab import GPTModel, get_tokenizer, generate,
generate_text_simple, GPTLitModule``. The layers, each a subpackage: ``model`` (the book's
classes, weights in and out), ``generation``, ``data``, ``training``, ``run`` (what every run does
under Hydra), ``tasks`` (one module per task).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package that re-exports ``names`` (name → module) on first use."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (PEP 562's name)
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted([*names, *importlib.import_module(package).__dict__])

    return __getattr__, __dir__


_API = {
    "GPTModel": "gpt_lab.model.gpt",
    "DummyGPTModel": "gpt_lab.model.gpt",
    "build_model": "gpt_lab.model.weights",
    "get_tokenizer": "gpt_lab.tokenizer",
    "text_to_token_ids": "gpt_lab.tokenizer",
    "generate": "gpt_lab.generation.sampling",
    "generate_text_simple": "gpt_lab.generation.sampling",
    "GPTLitModule": "gpt_lab.training.lit_module",
    "TextDataModule": "gpt_lab.data.text",
    "apply_lora": "gpt_lab.model.lora",
    "merge_lora": "gpt_lab.model.lora",
    "select_trainable": "gpt_lab.model.finetune",
    "save_finetuned": "gpt_lab.model.finetuned",
    "load_finetuned": "gpt_lab.model.finetuned",
    "classify": "gpt_lab.model.classifier",
    "format_prompt": "gpt_lab.generation.prompt_styles",
    "generate_response": "gpt_lab.generation.responses",
    "read_entries": "gpt_lab.data.entries",
    "InstructionDataModule": "gpt_lab.data.instructions",
    "InstructionLitModule": "gpt_lab.training.instruction_module",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
