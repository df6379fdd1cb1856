"""No circles: no two files of gpt_lab/ and scripts/ import each other, directly or around a loop.

Every import counts, wherever it stands (module top, inside a function, under ``TYPE_CHECKING``):
a function-level import that closes a loop still ties the two files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_file(root: Path, dotted: str, script_dir: Path | None) -> Path | None:
    """The file of this tree that ``dotted`` names: a module, a package's ``__init__``, or a script beside."""
    candidates = [root / Path(*dotted.split("."))]
    if script_dir is not None:  # `import bench_common` from a script run as `python scripts/x.py`
        candidates.append(script_dir / Path(*dotted.split(".")))
    for base in candidates:
        if base.with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (base / "__init__.py").is_file():
            return base / "__init__.py"
    return None


def _imported_files(root: Path, path: Path) -> set[Path]:
    """The files of the tree under ``root`` that ``path`` imports (by ``from m import name`` the submodule
    ``m.name`` when there is one, else ``m``)."""
    script_dir = path.parent if path.parent.name == "scripts" else None
    package = path.relative_to(root).parent.parts
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[Path | None] = []
        if isinstance(node, ast.Import):
            targets = [_module_file(root, a.name, script_dir) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package upwards
                parts = package[: len(package) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                dotted = f"{base}.{alias.name}" if base else alias.name
                targets.append(_module_file(root, dotted, script_dir) or _module_file(root, base, script_dir))
        found.update(t for t in targets if t is not None and t != path)
    return found


def import_graph(root: Path, folders: list[str]) -> dict[Path, set[Path]]:
    files = sorted(p for folder in folders for p in (root / folder).rglob("*.py"))
    return {f: _imported_files(root, f) for f in files}


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """The strongly connected components with more than one file (Tarjan's algorithm, iterative)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    on_stack: set[Path] = set()
    stack: list[Path] = []
    found: list[list[Path]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_a_loop_of_three_and_a_function_level_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import g\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # imports into the loop, is not part of it
    found = cycles(import_graph(tmp_path, ["pkg"]))
    assert [[p.name for p in c] for c in found] == [["a.py", "b.py", "c.py"]]
    (pkg / "c.py").write_text("import os\n")
    assert cycles(import_graph(tmp_path, ["pkg"])) == []


def test_no_two_files_of_the_package_or_the_scripts_import_each_other() -> None:
    found = cycles(import_graph(ROOT, ["gpt_lab", "scripts"]))
    loops = ["; ".join(str(p.relative_to(ROOT)) for p in c) for c in found]
    assert not loops, "import circles: " + " | ".join(loops)


def test_scripts_import_nothing_from_tests_and_leave_sys_path_alone() -> None:
    wrong = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                wrong.append(f"{path.name} imports {node.module}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tests" for a in node.names):
                wrong.append(f"{path.name} imports tests")
        if "sys.path" in text:
            wrong.append(f"{path.name} edits sys.path")
    assert not wrong, "; ".join(wrong)
