"""What the benchmark scripts share: the book's explicit model and transformers' GPT-2 built with
given weights, transformers' greedy generation, interleaved timing and its summary, and the two
training-step timers (the book's bare loop, gpt_lab's Lightning path).

Imported by ``scripts/bench.py``, ``scripts/bench_generation.py`` and ``scripts/bench_instructions.py``
as a module beside them (run as ``python scripts/<name>.py``, the scripts' folder comes first on the
module path).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from book_reference import RefGPT
from torch import nn

from gpt_lab.model.hf import export_hf_state_dict

ROOT = Path(__file__).resolve().parents[1]
PROMPT_IDS = [15496, 11, 314, 716]  # "Hello, I am"


def build_book(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> RefGPT:
    model = RefGPT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(".mask") for k in missing):
        raise RuntimeError(f"book model: missing {missing}, unexpected {unexpected}")
    return model


def build_hf(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    d = cfg["emb_dim"]
    hf_cfg = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_positions=cfg["context_length"],
        n_embd=d,
        n_layer=cfg["n_layers"],
        n_head=cfg["n_heads"],
        activation_function="gelu_new",  # the tanh approximation
        resid_pdrop=cfg["drop_rate"],
        embd_pdrop=cfg["drop_rate"],
        attn_pdrop=cfg["drop_rate"],
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,  # our out_head is its own matrix
    )
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg)
    hs = export_hf_state_dict(state)  # the project's one book <-> Hugging Face key map
    missing, unexpected = model.load_state_dict(hs, strict=False)
    if unexpected or any(".attn.bias" not in k and ".masked_bias" not in k for k in missing):
        raise RuntimeError(f"transformers model: missing {missing}, unexpected {unexpected}")
    if model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr():
        raise RuntimeError("transformers tied lm_head to wte; the copy needs tie_word_embeddings=False")
    return model


def hf_generate(model: nn.Module, idx: torch.Tensor, n: int) -> torch.Tensor:
    return model.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# --- timing ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call of each function (``clock``: wall clock, or ``time.process_time`` for CPU time),
    round-robin over ``reps`` rounds (order rotated) after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(timed(fns[n], clock))
    return out


class ReadBandwidth:
    """The machine's read bandwidth (GB/s), by three readers of the same 512 MB: PyTorch's float32 sum,
    its bfloat16 sum, and (where it builds) gpt_lab's float32 one-row kernel over the buffer as a
    (32768, 4096) matrix. Each reads every byte once; ``measure`` times each (median of ``reps``) and
    takes the fastest as the limit, the nearest any code came to what the memory delivers (the float32
    sum alone read 10-15 % below it). The generation bench times every reader again in the same rounds
    as its rows, since this shared machine's bandwidth drifts by a fifth within minutes (28.6 GB/s
    before one run's rows, 35.3 after them), and which reader is fastest changes with it."""

    def __init__(self) -> None:
        from gpt_lab.model import native

        big = torch.ones(128 * 1024 * 1024)
        half = big.view(torch.bfloat16)  # the same bytes as bfloat16 values (ones' halves: 1.0 and 0.0)
        self.nbytes = big.numel() * big.element_size()
        self.readers: dict[str, Callable[[], object]] = {"float32 sum": big.sum, "bfloat16 sum": half.sum}
        kernel = native.f32_kernel()
        if kernel is not None:
            rows, x = big.view(-1, 4096), torch.ones(1, 4096)
            self.readers["gpt_lab float32 kernel"] = lambda: native.f32_linear(kernel, x, rows, None)

    def measure(self, reps: int = 7) -> dict[str, float]:
        """GB/s of each reader and, as ``"limit"``, the fastest's."""
        found = {}
        for name, read in self.readers.items():
            read()
            found[name] = self.nbytes / statistics.median(timed(read) for _ in range(reps)) / 1e9
        return {**found, "limit": max(found.values())}


def summary(seconds: list[float], work: float) -> dict[str, float]:
    """Throughput (work per second): median, min, max over the runs."""
    rates = [work / s for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": len(rates)}


class StepTimer:
    """A Lightning callback: seconds of each training batch (forward, loss, backward, optimizer, logging)."""

    def __init__(self, warmup: int) -> None:
        import lightning as L

        self.warmup, self.seconds = warmup, []
        timer = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                timer.start = time.perf_counter()

            def on_train_batch_end(
                self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
            ) -> None:
                if batch_idx >= timer.warmup:
                    timer.seconds.append(time.perf_counter() - timer.start)

        self.callback = _Callback()


def lit_training_seconds(
    state: dict, cfg: dict, trainer_name: str, overrides: list[str], batches: list, warmup: int, compile_model: bool
) -> list[float]:
    """Seconds per step of GPTLitModule under the Trainer that ``trainer=<trainer_name>`` composes.

    The Trainer logs to a CSV file every step (ch05's log_every_n_steps=1); validation, checkpoints
    and the run's callbacks (which act at validation) are off: only training steps are timed.
    """
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger

    from gpt_lab.training.cpu_memory import freed_memory_kept
    from gpt_lab.training.lit_module import GPTLitModule

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        trainer_cfg = compose("config", overrides=[f"trainer={trainer_name}", *overrides]).trainer
    lit = GPTLitModule(cfg, lr=4e-4, weight_decay=0.1)
    lit.model.load_state_dict(state)
    timer = StepTimer(warmup)
    callbacks = [timer.callback]
    if compile_model:  # as compile=true does: the callback compiles the model's forward at train start
        from gpt_lab.tasks.train import CompileModel

        callbacks.append(CompileModel())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = instantiate(
            trainer_cfg,
            default_root_dir=tmp,
            max_steps=len(batches),
            logger=CSVLogger(tmp),
            log_every_n_steps=1,
            callbacks=callbacks,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        # batch_size=None: the loader hands out the prepared (inputs, targets) batches as they are. The fit
        # keeps freed memory on the CPU, as task=train's does (gpt_lab/training/cpu_memory.py).
        with freed_memory_kept(trainer.strategy.root_device.type == "cpu"):
            trainer.fit(lit, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.seconds


def book_training_seconds(state: dict, cfg: dict, batches: list, warmup: int) -> list[float]:
    """The book's chapter-5 loop body on its explicit model: forward, loss, zero_grad, backward, AdamW step."""
    model = build_book(state, cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    seconds = []
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds
