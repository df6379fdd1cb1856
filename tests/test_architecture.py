"""The package's layers (DESIGN.md): imports point down, and the public API is lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpt_lab"
# Each layer may import from the layers before it, never from a later one (DESIGN.md, "Layout").
LAYERS = ["root", "model", "generation", "data", "training", "run", "tasks"]


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return 0  # gpt_lab itself and its root modules (errors, config, tokenizer, storage)
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[str]:
    """Every gpt_lab module ``path`` imports, at the top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt_lab"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("gpt_lab")]
    return found


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for target in _imports(path):
            if target == "gpt_lab" and path.name == "__init__.py":
                continue  # a subpackage's lazy re-exports use gpt_lab.lazy_exports
            if _layer(target) > _layer(module) or (_layer(module) == LAYERS.index("tasks") and ".tasks." in target):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers: " + "; ".join(wrong)


def test_every_subpackage_names_its_role_and_re_exports_what_exists() -> None:
    import importlib

    for layer in LAYERS[1:]:
        package = importlib.import_module(f"gpt_lab.{layer}")
        assert package.__doc__ and package.__doc__.strip(), f"gpt_lab.{layer} has no one-line role"
        for name in getattr(package, "__all__", []):
            assert getattr(package, name) is not None, f"gpt_lab.{layer}.{name} does not resolve"


def _fresh_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import gpt_lab", {"torch", "lightning"}),  # import gpt_lab costs nothing
        ("from gpt_lab import GPTModel, get_tokenizer, generate, generate_text_simple", {"lightning"}),
        ("import gpt_lab.run.job, gpt_lab.tasks.sample", {"lightning"}),  # task=generate starts without it
    ],
)
def test_public_api_is_lazy(code: str, absent: set[str]) -> None:
    loaded = _fresh_modules(code + "\nimport sys\nprint(*sys.modules)")
    assert not absent & loaded, f"{code!r} imported {sorted(absent & loaded)}"


def test_public_api_names_the_real_objects() -> None:
    import gpt_lab
    from gpt_lab.generation.sampling import generate, generate_text_simple
    from gpt_lab.model.gpt import GPTModel
    from gpt_lab.tokenizer import get_tokenizer
    from gpt_lab.training.lit_module import GPTLitModule

    assert (gpt_lab.GPTModel, gpt_lab.get_tokenizer, gpt_lab.generate) == (GPTModel, get_tokenizer, generate)
    assert (gpt_lab.generate_text_simple, gpt_lab.GPTLitModule) == (generate_text_simple, GPTLitModule)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gpt_lab.nope  # noqa: B018
