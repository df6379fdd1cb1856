"""The CPU decoding fast path that ``gpt_lab.generation.sampling`` drives; the book's classes know nothing of it.

A generation step feeds one token per sequence: every ``nn.Linear`` then multiplies a few rows by
its weight, which is bound by reading the weight from memory. MKL runs ``F.linear`` on a single row
as one single-threaded matrix-vector product, which reaches about half the bandwidth. Faster
products, used only for such steps (no grad, CPU, at most ``MAX_ROWS`` rows):

- *native*: gpt_lab's float32 kernel (gpt_lab/model/native.py, ``csrc/f32_linear.c``) reads each
  float32 weight where it is, in ``nn.Linear``'s layout, at about the machine's read bandwidth, on
  as many threads as the step runs (one on the plain path below). Used wherever it builds; the
  products below are for the rest (no C compiler, ``GPT_LAB_NATIVE=0``, other dtypes, weights
  stored transposed). It sums each output in its own fixed order: the same tokens as ``F.linear``
  in the tests and benches, not the same last bits;
- *split*: the output features cut into one chunk per thread and run as one batched product, so
  every core reads its share of the weight in place (no copy);
- the output head (the largest matrix, vocab x emb_dim) from a transposed (emb_dim, vocab) copy,
  which MKL streams about 1.6x faster than ``nn.Linear``'s layout. The copy costs one head's memory;
  for a model in eval mode it is kept for the next call while the weights are unchanged
  (``head_copy``), otherwise it lives only as long as the ``Decoder``. A head already stored that way
  (``generation.weights=fp32``, gpt_lab/model/packed.py) needs no copy.

The split product needs every thread at once: when another process holds a core, each step waits
for the descheduled thread and decoding collapses (measured 2.7 against 10.2 tok/s for one
thread). So every ``CHECK_EVERY`` steps the ``Decoder`` asks the kernel how busy the machine's
cores were since the last check (``/proc/stat``, Linux) and subtracts its own process's CPU time:
what is left is the other processes' use. When fewer cores than threads were free, the next steps
run the plain path on one thread, otherwise the split one. The check costs a file read (tens of
microseconds) and notices a core taken or freed mid-generation within ``CHECK_EVERY`` steps. (Timing
the two paths against each other does not work: a short split burst is often lucky under load,
because a thread that has just woken up preempts the busy process for a moment, and a long one
costs as much as the collapse it is meant to avoid.) The process keeps one monitor between calls
(``shared_monitor``), so a call's first step, the prompt's, reads the interval since the last call's
last look (when it is 50 ms to 30 s old); a process's first call runs the plain path until 50 ms have
passed. Where ``/proc/stat`` cannot be read the split path is used. Choosing once per ``generate``
call instead (the first look decides) tied under a steady load but is stuck with a wrong first look,
or with a load that starts mid-call, for the whole call; it needs the same ``/proc/stat`` reading, so
the re-check stays (docs/performance.md, "The CPU decoding path").

Usage (``generate`` does this)::

    with Decoder(model) as decoder:          # builds (or finds) the head copy
        for ...:
            with decoder.step():             # the linear layers run the fast products for this call
                logits = model(new_ids, kv_cache=cache, last_only=True)

Between steps the model is exactly the book's (the layers' ``forward`` is only replaced inside
``step()``). The weights must not change while a ``Decoder`` is open: the head copy would be stale
(a kept copy is checked against the weight's version counter when the next ``Decoder`` opens).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from gpt_lab.model import native
from gpt_lab.model.packed import is_transposed

MAX_ROWS = 4  # a decoding step: at most this many rows per product (batch x new tokens)
# The smallest weight (elements) for which the fast products pay: below it a one-row product costs a few
# microseconds and the Decoder's own call per layer costs more than it saves. Split over 2 threads against
# F.linear on this 2-core VM: 64x1000 16 against 8 us, 256x1024 24 against 27 us, 768x3072 102 against 179 us.
MIN_WEIGHT = 1 << 18


def is_decode_call(x: torch.Tensor) -> bool:
    """True for a no-grad CPU product on at most ``MAX_ROWS`` rows (a generation step)."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.numel() <= MAX_ROWS * x.shape[-1]


def speeds_up(model: nn.Module) -> bool:
    """Whether a ``Decoder`` pays for ``model``: some parameter of it has ``MIN_WEIGHT`` elements. A smaller
    model's steps are a few microseconds per product, best run plainly on one thread (``generate`` does)."""
    # Each module's own parameters, not model.parameters(): the same tensors without its name and
    # duplicate bookkeeping (half the time of the walk, which a small model's every call pays).
    return any(p is not None and p.numel() >= MIN_WEIGHT for m in model.modules() for p in m._parameters.values())


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the output features split into ``k`` chunks, one batched product."""
    n_out, n_in = weight.shape
    n = n_out // k
    if k <= 1 or n == 0:
        return F.linear(x, weight, bias)
    rows = x.reshape(1, -1, n_in).expand(k, -1, n_in)  # (k, rows, n_in)
    if is_transposed(weight):  # stored (n_in, n_out): chunk j is columns j*n .. of it, rows of n contiguous
        chunks = weight.t()[:, : k * n].unflatten(1, (k, n)).permute(1, 0, 2)  # (k, n_in, n), a view
    else:
        chunks = weight[: k * n].view(k, n, n_in).transpose(1, 2)  # (k, n_in, n), a view
    if rows.shape[1] == 1:  # one row: (k, 1, n) is the layout of (1, k * n), so the chunks land in place
        out = x.new_empty(*x.shape[:-1], n_out)
        flat = out.view(-1, n_out)
        front = flat[:, : k * n].view(k, 1, n)
        if bias is None:
            torch.bmm(rows, chunks, out=front)
        else:
            torch.baddbmm(bias[: k * n].view(k, 1, n), rows, chunks, out=front)
        if k * n < n_out:  # the last n_out % k features (an odd vocabulary), no concatenation
            rest = F.linear(x.reshape(1, n_in), weight[k * n :], None if bias is None else bias[k * n :])
            flat[:, k * n :].copy_(rest)
        return out
    y = torch.bmm(rows, chunks) if bias is None else torch.baddbmm(bias[: k * n].view(k, 1, n), rows, chunks)
    y = y.transpose(0, 1).reshape(*x.shape[:-1], k * n)  # (..., k * n)
    if k * n < n_out:  # the last n_out % k features (an odd vocabulary)
        rest = F.linear(x, weight[k * n :], None if bias is None else bias[k * n :])
        y = torch.cat((y, rest), dim=-1)
    return y


def transposed_chunks(weight: torch.Tensor, k: int) -> torch.Tensor:
    """``weight`` (n_out, n_in) as ``k`` contiguous (n_in, n) chunks of its rows, zero-padded: (k, n_in, n)."""
    n_out, n_in = weight.shape
    n = -(-n_out // k)
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode too
        out = weight.new_zeros(k, n_in, n)
        for j in range(k):
            rows = weight[j * n : (j + 1) * n]
            out[j, :, : rows.shape[0]] = rows.t()
    return out


# The head copies of models generated from in eval mode, kept between ``generate`` calls (building one
# is most of a short generation's start-up: 0.12 s for gpt2_small), keyed by the head's weight and
# dropped with it; a copy is rebuilt when the weight changed since (its version counter or storage).
_HEAD_COPIES: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> ((version, data_ptr, k), chunks)


def head_copy(weight: torch.Tensor, k: int, keep: bool) -> torch.Tensor:
    """``transposed_chunks(weight, k)``, from the kept copy while ``weight`` is unchanged; ``keep``: store a new one."""
    key = (weight._version, weight.data_ptr(), k)
    kept = _HEAD_COPIES.get(weight)
    if kept is not None and kept[0] == key:
        return kept[1]
    _HEAD_COPIES.pop(weight, None)  # stale: the weights changed
    chunks = transposed_chunks(weight.detach(), k)
    if keep:
        _HEAD_COPIES[weight] = (key, chunks)
    return chunks


PATHS = ("split", "plain")
CHECK_EVERY = 8  # steps between two looks at the other processes' CPU use
MIN_INTERVAL = 0.05  # seconds: /proc/stat counts in ticks of 10 ms; a shorter interval waits for more steps
MAX_AGE = 30.0  # seconds: an interval longer than this says too little about now; it starts again


def own_cpus() -> set[int]:
    """The CPUs this process may run on."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def busy_cpu_seconds(cpus: set[int], stat: str | None = None) -> float | None:
    """CPU seconds the ``cpus`` have spent busy since boot (every process, this one included), from
    ``/proc/stat`` (or its text, ``stat``): user, nice, system, irq, softirq and steal time. None
    where it cannot be read or does not list these CPUs (a container's own numbering)."""
    if stat is None:
        try:
            with open("/proc/stat") as f:
                stat = f.read()
        except OSError:
            return None
    ticks, found = 0, 0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
            found += 1
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


class CoreMonitor:
    """How many of this process's CPUs other processes kept busy, between two ``others()`` calls."""

    def __init__(self) -> None:
        self.cpus = own_cpus()
        self.last = self._now()
        self.readable = self.last[1] is not None  # False: no /proc/stat listing these CPUs

    def _now(self) -> tuple[float, float | None, float]:
        return time.monotonic(), busy_cpu_seconds(self.cpus), time.process_time()

    def others(self) -> float | None:
        """Cores' worth of other processes' CPU use since the last call that returned a number; None
        if it cannot be known, or if less than ``MIN_INTERVAL`` has passed (ask again later), or more
        than ``MAX_AGE`` (the interval starts again now)."""
        now = self._now()
        wall = now[0] - self.last[0]
        if now[1] is None or self.last[1] is None or wall < MIN_INTERVAL:
            return None
        if wall > MAX_AGE:
            self.last = now
            return None
        busy, own = now[1] - self.last[1], now[2] - self.last[2]
        self.last = now
        return max(0.0, busy - own) / wall


_SHARED: list[CoreMonitor] = []  # the process's monitor, kept between Decoders (shared_monitor)


def shared_monitor() -> CoreMonitor:
    """The process's ``CoreMonitor``, kept between ``generate`` calls: the next call's first look (its
    prompt's step) reads the interval since the last one's last look, where a new monitor would have to
    wait ``MIN_INTERVAL`` on the plain path. A new one where the process's CPUs changed."""
    cpus = own_cpus()
    if not _SHARED or _SHARED[0].cpus != cpus:
        _SHARED[:] = [CoreMonitor()]
    return _SHARED[0]


def _plain_linear(module: object) -> bool:
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


class Decoder:
    """The fast products for the generation steps of ``model`` (see the module's docstring).

    ``path``: ``"auto"`` (chosen from the other processes' CPU use, the default), ``"split"`` or
    ``"plain"`` (fixed). ``keep_head_copy``: keep the head's copy for the next ``Decoder`` of the same,
    unchanged weights (``generate`` asks for it when the model was in eval mode: not a training run's
    sample, whose weights change before the next one).
    Works on any model built of ``nn.Linear`` layers (subclasses that change ``forward``, such as LoRA's,
    run their own); ``head`` names the output head (absent or not a plain Linear: no copy).
    ``use_native=False``: PyTorch's products only (the native kernel's absence, for tests and benches).
    """

    def __init__(
        self,
        model: nn.Module,
        path: str = "auto",
        head: str = "out_head",
        keep_head_copy: bool = False,
        use_native: bool = True,
    ) -> None:
        if path not in ("auto", *PATHS):
            raise ValueError(f"path={path!r} must be 'auto', 'split' or 'plain'")
        self.fixed_path = None if path == "auto" else path
        self.kernel = native.f32_kernel() if use_native else None
        self.keep_head_copy = keep_head_copy
        self.steps = 0
        self.threads = torch.get_num_threads()
        head_module = getattr(model, head, None)
        self.head = head_module if _plain_linear(head_module) else None
        # Only layers that compute nn.Linear's own function: a subclass (appendix E's LoRALinear adds
        # its adapters' product) keeps its forward.
        self.linears = [m for m in model.modules() if _plain_linear(m) and m is not self.head]
        self.forwards: list[tuple[nn.Module, object]] = []  # filled on entry, once the head copy is known
        self.head_chunks: torch.Tensor | None = None
        # Until the first look answers, the plain path: it never collapses. The first step (the prompt's)
        # looks: the process's monitor answers there when an earlier call's last look is MIN_INTERVAL to
        # MAX_AGE old; otherwise the steps look until MIN_INTERVAL has passed (on an idle machine those
        # first steps cost a step's time or so).
        self.path = self.fixed_path or "plain"
        self.next_check = 0
        self.monitor: CoreMonitor | None = None

    def __enter__(self) -> Decoder:
        # The native kernel's layers: float32 weights on the CPU in nn.Linear's own layout, the head's too.
        native_linears = [m for m in self.linears if self._native_ready(m.weight, m.bias)]
        other_linears = [m for m in self.linears if not self._native_ready(m.weight, m.bias)]
        head_native = self.head is not None and self._native_ready(self.head.weight, self.head.bias)
        self.forwards = [(m, functools.partial(self._native_linear, linear=m)) for m in native_linears]
        if head_native:
            self.forwards.append((self.head, functools.partial(self._native_linear, linear=self.head)))
        weight = self.head.weight if self.head is not None and not head_native else None
        # A weight already stored (emb_dim, vocab) (generation.weights=fp32 without the native kernel:
        # packed.transpose_weights_) streams as fast as the copy would: the head then runs split_linear.
        if weight is not None and weight.device.type == "cpu" and not is_transposed(weight):
            self.head_chunks = head_copy(weight, self.threads, self.keep_head_copy)
        # On one thread the split product is F.linear itself: only the head's copy changes anything
        # (and a Python call per layer per token is what short generations of tiny models pay for).
        if self.threads > 1:
            self.forwards += [(m, functools.partial(self._linear, linear=m)) for m in other_linears]
        if weight is not None and (self.threads > 1 or self.head_chunks is not None):
            self.forwards.append((self.head, self._head))
        if self.fixed_path is None and self.threads > 1:
            monitor = shared_monitor()
            if not monitor.readable:  # no /proc/stat: the split path, unwatched
                self.path = "split"
            else:
                self.monitor = monitor
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.head_chunks = None

    @contextlib.contextmanager
    def step(self, layers: bool = True) -> Iterator[int]:
        """One generation step: the layers run the chosen product (re-chosen every ``CHECK_EVERY`` steps);
        yields the step's threads (1 on the plain path, where PyTorch's are set to one for the step).
        ``layers=False``: a step that runs none of the model's layers (the fused native step,
        gpt_lab/generation/fused.py, which takes the threads it yields): the threads only."""
        if self.monitor is not None and self.steps >= self.next_check:
            self._choose_path()
        self.steps += 1
        forwards = self.forwards if layers else []
        # An instance attribute shadows nn.Linear.forward; written straight into the instance dict
        # (nn.Module's __setattr__ bookkeeping costs ~0.5 ms a step over GPT-2's 73 layers).
        for linear, forward in forwards:
            vars(linear)["forward"] = forward
        # The plain path runs on one thread: any product split across threads waits for a busy core.
        single = self.path == "plain" and self.threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            yield 1 if single else self.threads
        finally:
            if single:
                torch.set_num_threads(self.threads)
            for linear, _ in forwards:
                del vars(linear)["forward"]  # back to nn.Linear.forward

    def _choose_path(self) -> None:
        """Split while the other processes leave a core free for each thread, plain otherwise."""
        others = self.monitor.others()
        if others is None:  # too soon to tell: look again at the next step
            return
        free = len(self.monitor.cpus) - others
        # Half a core of slack: a few ticks of daemons or of this process's own accounting.
        self.path = "split" if free >= self.threads - 0.5 else "plain"
        self.next_check = self.steps + CHECK_EVERY

    def _native_ready(self, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Whether the kernel can read this layer's tensors as they are: contiguous float32 on the CPU."""
        return (
            self.kernel is not None
            and weight.dtype == torch.float32
            and weight.device.type == "cpu"
            and weight.is_contiguous()
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
        )

    def _native_linear(self, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        weight, bias = linear.weight, linear.bias
        # Checked again per call: the kernel reads raw pointers, and a parameter replaced or converted
        # since the Decoder opened must not reach it.
        if x.dtype != torch.float32 or not is_decode_call(x) or not self._native_ready(weight, bias):
            return F.linear(x, weight, bias)
        return native.f32_linear(self.kernel, x, weight, bias)

    def _linear(self, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        if self.path == "split" and is_decode_call(x):
            return split_linear(x, linear.weight, linear.bias, self.threads)
        return F.linear(x, linear.weight, linear.bias)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head
        chunks = self.head_chunks
        if chunks is None or not is_decode_call(x) or chunks.dtype != x.dtype:
            return self._linear(x, head)
        k, d, n = chunks.shape
        if self.path == "split":
            y = torch.bmm(x.reshape(1, -1, d).expand(k, -1, d), chunks)  # (k, rows, n)
            y = y.transpose(0, 1).reshape(*x.shape[:-1], k * n)
        else:  # one thread walks the chunks in turn
            y = torch.cat([x @ chunks[j] for j in range(k)], dim=-1)
        y = y[..., : head.weight.shape[0]]
        return y if head.bias is None else y + head.bias
