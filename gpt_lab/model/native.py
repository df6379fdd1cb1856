"""gpt_lab's native CPU kernels: the float32 and int8 one-row products of generation steps, MLA's
decoding attention, and GPT-2's whole decoding step.

- ``csrc/int8_linear.c``: PyTorch's int8 products read a one-row product's weights at 8-19 GB/s on
  the CPU the project is measured on (``_weight_int8pack_mm``; FBGEMM's with exact activation digits
  ~13 GB/s once the digits are counted), where the memory delivers ~34 (docs/performance.md,
  "Weights precision"). This kernel reads them at 21-37 GB/s: int8 converted to float32 in
  registers, float32 products and sums, each output row summed in one fixed order (a row's result
  depends on that row alone, so a cached step equals the whole sequence's forward, bit for bit).
- ``csrc/f32_linear.c``: the float32 product of a generation step's few rows from ``nn.Linear``'s
  own weight (the CPU decoding path, gpt_lab/generation/decoding.py), each thread's outputs read as 8
  long streams of rows (one core: 22-24 GB/s, where 8 neighbouring rows at a time read 16-17 and
  MKL's single-row product 14-23 with two); each output row summed in one fixed order, as above.
  The same loop for bfloat16 inputs and weights (``gpt_lab_bf16_linear``: a bf16 ``RowLinear``'s
  products of a few rows, gpt_lab/model/packed.py; AVX-512 BF16's dot products where the CPU has them).
- ``csrc/latent_attention.c``: MLA's absorbed decoding step, all heads over one latent, each
  latent row read once for all of them (docs/architecture-lab.md): ~1.2x PyTorch's CPU attention
  on the same split.
- ``csrc/gpt2_step.c``: a whole cached generation step of the book's GPT-2 in one call, every layer's
  norms, attention, GELU and shortcuts between the products on one OpenMP team
  (gpt_lab/generation/fused.py): the products are the kernels' block functions (``csrc/products.h``),
  float32, int8, or bfloat16 (``f32_linear.c``'s bfloat16 loop, AVX-512 BF16's dot products where the
  CPU has them), so each sums as it does alone.

They are compiled together the first time one is asked for, with the system C compiler (``$CC``,
else ``cc``), ``-O3 -march=native`` and OpenMP from PyTorch's own runtime (``torch/lib/libgomp.so.1``:
one thread pool, sized by ``torch.get_num_threads()``), into ``$XDG_CACHE_HOME/gpt_lab`` (else
``~/.cache/gpt_lab``) under a name that hashes the sources, the compiler, the flags and the CPU;
later runs load the cached library in milliseconds. Where that cannot happen (no compiler, no
``libgomp.so.1`` in torch/lib, as on macOS and Windows, a failed build) or ``GPT_LAB_NATIVE=0`` is
set, ``library()`` returns None after one logged line and the callers use PyTorch's kernels: the
same results to the stated tolerances, slower.
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

_CSRC = Path(__file__).with_name("csrc")
SOURCES = tuple(_CSRC / name for name in ("f32_linear.c", "int8_linear.c", "latent_attention.c", "gpt2_step.c"))
HEADERS = (_CSRC / "vectors.h", _CSRC / "products.h")  # what the sources include
ROWS = 8  # output rows per block of the int8 layout (csrc/int8_linear.c: R)
CHUNK = 16  # inputs per chunk (L)
LATENT_BLOCK = 16  # positions per block of the latent attention (csrc/latent_attention.c: B)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
Kernel = Callable[..., None]


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
        sources = [str(source) for source in SOURCES]
        command = [compiler, *FLAGS, *sources, "-o", str(built), str(openmp), f"-Wl,-rpath,{openmp.parent}", "-lm"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        built.replace(target)  # atomic: a concurrent build writes the same file


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be (see the module's docstring)."""
    if os.environ.get("GPT_LAB_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    openmp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if compiler is None or not openmp.exists():
        log.info("native kernels: no C compiler or no libgomp.so.1 in torch/lib; PyTorch's kernels instead")
        return None
    texts = [path.read_text() for path in (*SOURCES, *HEADERS)]
    parts = [*texts, compiler, " ".join(FLAGS), _cpu_signature(), str(openmp)]
    key = hashlib.sha256(b"\0".join(part.encode() for part in parts)).hexdigest()[:16]
    target = cache_dir() / f"native-{key}.so"
    try:
        if not target.exists():
            log.info(
                "native kernels: compiling %s (once, cached in %s)", ", ".join(s.name for s in SOURCES), target.parent
            )
            _build(compiler, openmp, target)
        return ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        log.warning("native kernels not built (%s); PyTorch's kernels instead", error)
        return None


def _function(name: str, argtypes: list[type]) -> Kernel | None:
    lib = library()
    if lib is None:
        return None
    function = getattr(lib, name)
    function.argtypes, function.restype = argtypes, None
    return function


@functools.cache
def f32_kernel() -> Kernel | None:
    """``gpt_lab_f32_linear`` (csrc/f32_linear.c) through ctypes, or None without the library."""
    return _function("gpt_lab_f32_linear", [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int])


def _rows_product(kernel: Kernel, x: torch.Tensor, n_out: int, *pointers: int | None) -> torch.Tensor:
    """``kernel(rows, *pointers, y, rows, n_out, n_in, threads)`` over x's rows (any leading shape): y float32."""
    n_in = x.shape[-1]
    rows = x.reshape(-1, n_in)
    if not rows.is_contiguous():
        rows = rows.contiguous()
    y = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    kernel(rows.data_ptr(), *pointers, y.data_ptr(), rows.shape[0], n_out, n_in, torch.get_num_threads())
    return y.view(*x.shape[:-1], n_out)


def f32_linear(kernel: Kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by the kernel: float32 on the CPU, ``weight`` (and ``bias``) contiguous,
    x of any leading shape, on ``torch.get_num_threads()`` threads."""
    return _rows_product(kernel, x, weight.shape[0], weight.data_ptr(), None if bias is None else bias.data_ptr())


@functools.cache
def bf16_kernel() -> Kernel | None:
    """``gpt_lab_bf16_linear`` (csrc/f32_linear.c) through ctypes, or None without the library."""
    return _function("gpt_lab_bf16_linear", [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int])


def bf16_linear(kernel: Kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by the kernel for bfloat16 x and ``weight`` (contiguous) on the CPU: the
    sums and the bias in float32, the result rounded to bfloat16 once; x of any leading shape."""
    bias32 = None if bias is None else bias.float().contiguous()
    y = _rows_product(kernel, x, weight.shape[0], weight.data_ptr(), None if bias32 is None else bias32.data_ptr())
    return y.to(torch.bfloat16)


@functools.cache
def int8_kernel() -> Kernel | None:
    """``gpt_lab_int8_linear`` (csrc/int8_linear.c) through ctypes, or None without the library."""
    return _function("gpt_lab_int8_linear", [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_int])


@functools.cache
def latent_kernel() -> Kernel | None:
    """``gpt_lab_latent_attention`` (csrc/latent_attention.c) through ctypes, or None without the library."""
    pointers, sizes = [ctypes.c_void_p] * 3, [ctypes.c_int64] * 3
    return _function("gpt_lab_latent_attention", [*pointers, *sizes, ctypes.c_float, ctypes.c_int, ctypes.c_void_p])


@functools.cache
def step_kernel() -> Kernel | None:
    """``gpt_lab_gpt2_step`` (csrc/gpt2_step.c) through ctypes, or None without the library: (model, tokens,
    rows, position, logits, threads) -> 0, or -1 for a token outside the vocabulary."""
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    function = _function("gpt_lab_gpt2_step", [pointer, pointer, size, size, pointer, ctypes.c_int])
    if function is not None:
        function.restype = ctypes.c_int
    return function


@functools.cache
def step_work_kernel() -> Callable[[int], int] | None:
    """``gpt_lab_gpt2_step_work`` (csrc/gpt2_step.c): the floats of scratch a step's model description asks for."""
    function = _function("gpt_lab_gpt2_step_work", [ctypes.c_void_p])
    if function is not None:
        function.restype = ctypes.c_int64
    return function


@functools.cache
def gelu_kernel() -> Kernel | None:
    """``gpt_lab_gelu`` (csrc/gpt2_step.c): (x, y, n), y = the fused step's GELU of n floats (for the tests)."""
    return _function("gpt_lab_gelu", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])


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
    kernel: Kernel, x: torch.Tensor, blocked: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (w * scales)^T + bias`` by the kernel: x float32 on the CPU, any leading shape."""
    scales = scales.contiguous()
    bias = None if bias is None else bias.contiguous()
    pointers = (blocked.data_ptr(), scales.data_ptr(), None if bias is None else bias.data_ptr())
    return _rows_product(kernel, x, scales.shape[0], *pointers)


def latent_attention(kernel: Kernel, q: torch.Tensor, latent: torch.Tensor, scale: float, parts: int) -> torch.Tensor:
    """``q`` (b, 1, h, n) over ``latent`` (b, s, n) as keys and values, float32 on the CPU -> (b, 1, h, n),
    the positions cut into ``parts`` (1 <= parts <= s), one per thread."""
    b, _, h, n = q.shape
    s = latent.shape[1]
    out = torch.empty(b, 1, h, n)
    work = torch.empty(parts * h * (n + 2 + LATENT_BLOCK))
    for i in range(b):
        qi, ci = q[i, 0].contiguous(), latent[i].contiguous()
        kernel(qi.data_ptr(), ci.data_ptr(), out[i, 0].data_ptr(), h, s, n, scale, parts, work.data_ptr())
    return out
