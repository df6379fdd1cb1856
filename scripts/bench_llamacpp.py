"""The optional llama.cpp row of ``scripts/bench.py --llama-cpp`` (issue 28, point 6): the CPU engine
people run models with, beside gpt_lab's fp32 / bf16 / int8 generation.

It needs ``llama-cpp-python`` (which compiles llama.cpp from source when pip installs it: several
minutes, a C++ compiler and CMake) and ``gguf`` (llama.cpp's file format, to write gpt2_small's weights
as GGUF at f32, f16 and q8_0). Neither is a dependency of gpt_lab or of its ``bench`` extra, and CI
does not install them, so the row is opt-in; where either is missing it prints what to install and
is skipped (the rest of the bench runs as usual).

Status: the GGUF conversion and the timed row are not written yet (see docs/performance.md, "Not
yet"): with both packages present the row still reports itself as skipped, saying so.
"""

from __future__ import annotations

import importlib.util
from typing import Any

INSTALL = (
    "pip install llama-cpp-python gguf  (llama-cpp-python builds llama.cpp from source: a few minutes, "
    "needs a C++ compiler and CMake)"
)


def llama_cpp_row() -> dict[str, Any]:
    """The llama.cpp row's result: for now always ``{"skipped": reason}``, the reason printed."""
    missing = [name for name in ("llama_cpp", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"llama.cpp row skipped: {', '.join(missing)} not installed; {INSTALL}"
    else:
        reason = "llama.cpp row skipped: llama-cpp-python is installed, but the GGUF conversion is not written yet"
    print(f"  {reason}", flush=True)
    return {"skipped": reason}
