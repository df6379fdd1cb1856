"""gpt_lab's one native kernel: the int8 weight-only product of ``generation.weights=int8`` on the CPU.

PyTorch's int8 products read a one-row product's weights at 8-19 GB/s on the CPU the project is
measured on (``_weight_int8pack_mm``; FBGEMM's with exact activation digits ~13 GB/s once the
digits are counted), where the memory delivers ~34: docs/performance.md ("Weights precision"). The
kernel in ``csrc/int8_linear.c`` (80 lines of C) reads them at 21-37 GB/s: int8 converted to float32
in registers, float32 products and sums, each output row summed in one fixed order (a row's result
depends on that row alone, so a cached step equals the whole sequence's forward, bit for bit).

It is compiled the first time it is asked for, with the system C compiler (``$CC``, else ``cc``),
``-O3 -march=native`` and OpenMP from PyTorch's own runtime (``torch/lib/libgomp.so.1``: one thread
pool, sized by ``torch.get_num_threads()``), into ``$XDG_CACHE_HOME/gpt_lab`` (else
``~/.cache/gpt_lab``) under a name that hashes the source, the compiler, the flags and the CPU; later
runs load the cached library in milliseconds. Where that cannot happen (no compiler, no
``libgomp.so.1`` in torch/lib, as on macOS and Windows, a failed build) or ``GPT_LAB_NATIVE=0`` is
set, ``int8_kernel()`` returns None after one logged line and ``Int8Linear`` uses PyTorch's kernels:
the same results to the stated tolerance, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "int8_linear.c"
ROWS = 8  # output rows per block of the layout (csrc/int8_linear.c: R)
CHUNK = 16  # inputs per chunk (L)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
Int8Kernel = Callable[..., None]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt_lab"


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a shared cache, several CPUs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in info.splitlines() if line.split(":")[0].strip() in keys}))


def _build(compiler: str, openmp: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        # PyTorch's libgomp by path (its soname is libgomp.so.1, already loaded with torch): one OpenMP runtime.
        command = [compiler, *FLAGS, str(SOURCE), "-o", str(built), str(openmp), f"-Wl,-rpath,{openmp.parent}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        built.replace(target)  # atomic: a concurrent build writes the same file


@functools.cache
def int8_kernel() -> Int8Kernel | None:
    """The compiled ``gpt_lab_int8_linear`` (ctypes), built on first use; None where it cannot be."""
    if os.environ.get("GPT_LAB_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    openmp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if compiler is None or not openmp.exists():
        log.info("int8 kernel: no C compiler or no libgomp.so.1 in torch/lib; PyTorch's int8 kernels instead")
        return None
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), compiler, " ".join(FLAGS), _cpu_signature(), str(openmp)))
    ).hexdigest()[:16]
    target = cache_dir() / f"int8_linear-{key}.so"
    try:
        if not target.exists():
            log.info("int8 kernel: compiling %s (once, cached in %s)", SOURCE.name, target.parent)
            _build(compiler, openmp, target)
        function = ctypes.CDLL(str(target)).gpt_lab_int8_linear
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("int8 kernel not built (%s); PyTorch's int8 kernels instead", error)
        return None
    function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    function.restype = None
    return function


def block_int8(weight: torch.Tensor) -> torch.Tensor:
    """Plain int8 (n_out, n_in) → the kernel's layout: (blocks, chunks, ROWS, CHUNK), zero-padded."""
    n_out, n_in = weight.shape
    rows, cols = -(-n_out // ROWS) * ROWS, -(-n_in // CHUNK) * CHUNK
    padded = torch.zeros(rows, cols, dtype=torch.int8)
    padded[:n_out, :n_in] = weight
    return padded.view(rows // ROWS, ROWS, cols // CHUNK, CHUNK).transpose(1, 2).contiguous()


def unblock_int8(blocked: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
    """``block_int8``'s inverse: the plain (n_out, n_in) int8 weight (a copy)."""
    blocks, chunks = blocked.shape[:2]
    return blocked.transpose(1, 2).reshape(blocks * ROWS, chunks * CHUNK)[:n_out, :n_in].contiguous()


def int8_linear(
    kernel: Int8Kernel, x: torch.Tensor, blocked: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (w * scales)^T + bias`` by the kernel: x float32 on the CPU, any leading shape."""
    n_in = x.shape[-1]
    n_out = scales.shape[0]
    rows = x.reshape(-1, n_in).contiguous()
    y = torch.empty(rows.shape[0], n_out)
    kernel(
        rows.data_ptr(),
        blocked.data_ptr(),
        scales.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        rows.shape[0],
        n_out,
        n_in,
        torch.get_num_threads(),
    )
    return y.view(*x.shape[:-1], n_out)
