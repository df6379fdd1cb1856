"""What a DPO run leaves behind: final metrics, the book's loss and reward-margin plot (PNG), the
policy's weights, and the test split answered by the policy beside the reference."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from torch import nn

from gpt_lab.generation.responses import RESPONSES_FILE
from gpt_lab.storage import atomic_write, write_text_atomic

log = logging.getLogger(__name__)


class DPORun(Protocol):
    """What this report reads of ``gpt_lab.training.dpo.DPOLitModule`` (which calls it: no import back)."""

    model: nn.Module
    reference: nn.Module | None
    hparams: Any
    tokens_seen: int
    reference_kind: str

    @property
    def history(self) -> list[dict[str, Any]]: ...

    def eval_metrics(self, batches: Any) -> dict[str, float]: ...

    def write_model_files(self, out_dir: Path, meta: dict[str, Any]) -> Path: ...


PLOT_FILE = "dpo-plot.png"
REFERENCE_KEY = "reference_response"  # beside chapter 7's model_response: the starting model's answer


def plot_dpo_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The book's two DPO figures side by side: loss, and reward margin, for training and validation
    against the optimizer step (``rows``: step, train_loss, val_loss, train_reward_margin, val_reward_margin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    for ax, key, title in ((axes[0], "loss", "DPO loss"), (axes[1], "reward_margin", "Reward margin")):
        for split, style in (("train", "-"), ("val", "-.")):
            name = f"{split}_{key}"
            points = [(s, r[name]) for s, r in zip(steps, rows, strict=True) if r.get(name) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                marker = "." if len(points) < 30 else None
                ax.plot(xs, ys, style, marker=marker, label=f"{split} {key.replace('_', ' ')}")
        ax.set_xlabel("Optimizer step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


@contextmanager
def reference_model(lit: DPORun) -> Iterator[nn.Module]:
    """The reference as a model to run: the frozen copy, or the policy with its LoRA adapters off (call
    only when there is one: not with precomputed log-probabilities or reference-free)."""
    if lit.reference is not None:
        yield lit.reference
        return
    from gpt_lab.model.lora import lora_disabled

    with lora_disabled(lit.model):
        yield lit.model


def write_test_responses(lit: DPORun, datamodule: Any, cfg: Any, path: Path) -> int:
    """The test entries with ``model_response`` (the policy's, chapter 7's layout, so ``task=judge`` scores it
    as it is) and ``reference_response`` (the starting model's), answered as chapter 7 answers (greedy unless
    ``temperature``, up to ``max_response_tokens``); ``dpo.test_responses`` bounds how many. Without a
    reference model (``dpo.precompute_reference``, ``dpo.reference_free``) the policy's answers only."""
    from gpt_lab.generation.responses import RESPONSE_KEY, generate_response
    from gpt_lab.tokenizer import get_tokenizer

    entries = list(datamodule.iter_test_entries())
    limit = cfg.dpo.test_responses
    if limit is not None:
        entries = entries[:limit]
    tokenizer = getattr(datamodule, "tokenizer", None) or get_tokenizer()  # the model's (a family's)
    settings = (datamodule.prompt_style, cfg.max_response_tokens or 256, cfg.temperature, cfg.top_k)
    out = []
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)  # sampled answers (temperature > 0) depend on the seed only
    for entry in tqdm(entries, desc="Test responses (policy, reference)", unit="entry"):
        policy = generate_response(lit.model, tokenizer, entry, *settings)
        if lit.reference_kind in ("precomputed", "none"):
            out.append({**entry, RESPONSE_KEY: policy})
            continue
        with reference_model(lit) as ref:
            reference = generate_response(ref, tokenizer, entry, *settings)
        out.append({**entry, RESPONSE_KEY: policy, REFERENCE_KEY: reference})
    if out:
        write_text_atomic(path, json.dumps(out, indent=4, ensure_ascii=False) + "\n")
    return len(out)


def initial_metrics(trainer: L.Trainer) -> dict[str, dict[str, float]]:
    """The metrics InitialLossEvaluation measured before the first step, by split (empty without it)."""
    from gpt_lab.training.callbacks import InitialLossEvaluation

    for callback in trainer.callbacks:
        if isinstance(callback, InitialLossEvaluation):
            return dict(callback.metrics or {})
    return {}


def finish_dpo(lit: DPORun, trainer: L.Trainer, datamodule: Any, cfg: Any) -> dict[str, Any]:
    from gpt_lab.training.fsdp import gathered_model_state

    out_dir = Path(cfg.paths.output_dir)
    final = {split: lit.eval_metrics(datamodule.eval_dataloader(split)) for split in ("train", "val")}
    if trainer.is_global_zero:
        log.info(
            "Final DPO metrics: training loss %.4f margin %.3f, validation loss %.4f margin %.3f",
            final["train"]["loss"],
            final["train"]["reward_margin"],
            final["val"]["loss"],
            final["val"]["reward_margin"],
        )
    results: dict[str, Any] = {f"{split}_{k}": v for split, m in final.items() for k, v in m.items()}
    initial = initial_metrics(trainer)
    rows = list(lit.history)
    if initial:
        start = {"step": 0, "tokens_seen": 0}
        start.update({f"{s}_{k}": initial[s][k] for s in initial for k in ("loss", "reward_margin") if k in initial[s]})
        rows.insert(0, start)
    results.update(
        dpo_beta=lit.hparams.beta,
        dpo_logprob=lit.hparams.logprob,
        dpo_loss=lit.hparams.get("loss", "sigmoid"),
        dpo_label_smoothing=lit.hparams.get("label_smoothing", 0.0),
        dpo_reference=lit.reference_kind,
        prompt_style=datamodule.prompt_style,
        data_path=str(datamodule.path),
        tokens_seen=lit.tokens_seen,
        dpo_curve=rows,
        **datamodule.split_sizes(),
    )
    state = gathered_model_state(trainer)  # every process: FSDP gathers its shards
    if trainer.is_global_zero:
        results["plot"] = str(plot_dpo_curves(rows, out_dir / PLOT_FILE))
        # model.pth (adapters merged, the book's layout) and model.json with the prompt style: init_from=<this run>.
        meta = {
            "finetune": lit.hparams.finetune,
            "lora": lit.hparams.lora,
            "prompt_style": datamodule.prompt_style,
            "objective": "dpo",
        }
        results["book_checkpoint"] = str(lit.write_model_files(out_dir, meta, state))
        n = write_test_responses(lit, datamodule, cfg, out_dir / RESPONSES_FILE)
        results["test_responses"] = str(out_dir / RESPONSES_FILE) if n else None
    return results
