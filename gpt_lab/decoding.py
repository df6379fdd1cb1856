"""The CPU decoding fast path that ``gpt_lab.generate`` drives; the book's classes know nothing of it.

A generation step feeds one token per sequence: every ``nn.Linear`` then multiplies a few rows by
its weight, which is bound by reading the weight from memory. MKL runs ``F.linear`` on a single row
as one single-threaded matrix-vector product, which reaches about half the bandwidth. Two faster
products, used only for such steps (no grad, CPU, at most ``MAX_ROWS`` rows):

- *split*: the output features cut into one chunk per thread and run as one batched product, so
  every core reads its share of the weight in place (no copy);
- the output head (the largest matrix, vocab x emb_dim) from a transposed (emb_dim, vocab) copy,
  which MKL streams about 1.6x faster than ``nn.Linear``'s layout. The copy costs one head's memory
  and lives only as long as the ``Decoder``.

The split product needs every thread at once: when another process holds a core, each step waits
for the descheduled thread and decoding collapses (measured 2.7 against 10.2 tok/s). So every
``PROBE_EVERY`` steps the ``Decoder`` times one single-row product of its largest block layer both
ways (split across the threads, and plain on one thread; about 1 ms each on GPT-2 small, a few
steps' worth of nothing) and runs the next steps on the faster path. A core taken or freed by
another process mid-generation is noticed within ``PROBE_EVERY`` steps.

Usage (``generate`` does this)::

    with Decoder(model) as decoder:          # builds the head copy; drops it on exit
        for ...:
            with decoder.step():             # the linear layers run the fast products for this call
                logits = model(new_ids, kv_cache=cache, last_only=True)

Between steps the model is exactly the book's (the layers' ``forward`` is only replaced inside
``step()``). The weights must not change while a ``Decoder`` is open: the head copy would be stale.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn

MAX_ROWS = 4  # a decoding step: at most this many rows per product (batch x new tokens)


def is_decode_call(x: torch.Tensor) -> bool:
    """True for a no-grad CPU product on at most ``MAX_ROWS`` rows (a generation step)."""
    return not torch.is_grad_enabled() and x.device.type == "cpu" and x.numel() <= MAX_ROWS * x.shape[-1]


def split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the output features split into ``k`` chunks, one batched product."""
    n_out, n_in = weight.shape
    n = n_out // k
    if k <= 1 or n == 0:
        return F.linear(x, weight, bias)
    rows = x.reshape(1, -1, n_in).expand(k, -1, n_in)  # (k, rows, n_in)
    chunks = weight[: k * n].view(k, n, n_in).transpose(1, 2)  # (k, n_in, n), a view
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


PATHS = ("split", "plain")
PROBE_EVERY = 16  # steps between two comparisons of the paths


def faster_path(seconds_of: Callable[[str], float], reps: int = 3) -> str:
    """The path of ``PATHS`` whose ``seconds_of(path)`` has the lower median over ``reps`` alternated timings."""
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    for _ in range(reps):
        for path in PATHS:
            times[path].append(seconds_of(path))
    return min(PATHS, key=lambda p: statistics.median(times[p]))


class Decoder:
    """The fast products for the generation steps of ``model`` (see the module's docstring).

    ``path``: ``"auto"`` (timed choice, the default), ``"split"`` or ``"plain"`` (fixed).
    Works on any model built of ``nn.Linear`` layers; ``head`` names the output head (absent: no copy).
    """

    def __init__(self, model: nn.Module, path: str = "auto", head: str = "out_head") -> None:
        if path not in ("auto", *PATHS):
            raise ValueError(f"path={path!r} must be 'auto', 'split' or 'plain'")
        self.model = model
        self.fixed_path = None if path == "auto" else path
        self.steps = 0
        self.threads = torch.get_num_threads()
        self.head = getattr(model, head, None) if isinstance(getattr(model, head, None), nn.Linear) else None
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not self.head]
        self.forwards = [(m, functools.partial(self._linear, linear=m)) for m in self.linears]
        if self.head is not None:
            self.forwards.append((self.head, self._head))
        self.head_chunks: torch.Tensor | None = None
        self.path = self.fixed_path or PATHS[0]
        # The probe: the largest block layer, one row (a generation step's product).
        self.probe = max(self.linears, key=lambda m: m.weight.numel(), default=None)

    def __enter__(self) -> Decoder:
        weight = self.head.weight if self.head is not None else None
        if weight is not None and weight.device.type == "cpu":
            self.head_chunks = transposed_chunks(weight.detach(), self.threads)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.head_chunks = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One generation step: the layers run the chosen product (re-chosen every ``PROBE_EVERY`` steps)."""
        if self.fixed_path is None and self.steps % PROBE_EVERY == 0 and self.probe is not None:
            self.path = faster_path(self._probe_seconds)
        self.steps += 1
        # An instance attribute shadows nn.Linear.forward; written straight into the instance dict
        # (nn.Module's __setattr__ bookkeeping costs ~0.5 ms a step over GPT-2's 73 layers).
        for linear, forward in self.forwards:
            vars(linear)["forward"] = forward
        # The plain path runs on one thread: any product split across threads waits for a busy core.
        single = self.path == "plain" and self.threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if single:
                torch.set_num_threads(self.threads)
            for linear, _ in self.forwards:
                del vars(linear)["forward"]  # back to nn.Linear.forward

    def _probe_seconds(self, path: str) -> float:
        """Seconds of one single-row product of the probe layer on ``path`` (about 1 ms on GPT-2 small)."""
        weight, bias = self.probe.weight, self.probe.bias
        if weight.device.type != "cpu":
            return 0.0
        x = weight.new_zeros(1, 1, weight.shape[1])
        single = path == "plain" and self.threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                start = time.perf_counter()
                split_linear(x, weight, bias, self.threads if path == "split" else 1)
                return time.perf_counter() - start
        finally:
            if single:
                torch.set_num_threads(self.threads)

    def _linear(self, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        if self.path == "split" and is_decode_call(x):
            return split_linear(x, linear.weight, linear.bias, self.threads)
        return F.linear(x, linear.weight, linear.bias)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head
        chunks = self.head_chunks
        if chunks is None or not is_decode_call(x) or chunks.dtype != x.dtype:
            return F.linear(x, head.weight, head.bias)
        k, d, n = chunks.shape
        if self.path == "split":
            y = torch.bmm(x.reshape(1, -1, d).expand(k, -1, d), chunks)  # (k, rows, n)
            y = y.transpose(0, 1).reshape(*x.shape[:-1], k * n)
        else:  # one thread walks the chunks in turn
            y = torch.cat([x @ chunks[j] for j in range(k)], dim=-1)
        y = y[..., : head.weight.shape[0]]
        return y if head.bias is None else y + head.bias
