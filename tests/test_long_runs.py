"""Long runs (issue 12): appendix D's schedule and clipping, accumulation, exact resume from any
checkpoint, ckpt_path=last, stopping on SIGTERM, throughput metrics, presets, bad input."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
from configs import TINY, TINY_RUN
from omegaconf import DictConfig

from gpt_lab.config import validate_config
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.run.status import RunInterrupted
from gpt_lab.training.callbacks import flops_per_token

CONTEXT = 16  # TINY_RUN's context length
SMALL = [
    "task=train",
    *TINY_RUN,
    "+trainer.enable_model_summary=false",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
    "callbacks.sample_text=null",
    "logger=none",
    "callbacks.lr_monitor=null",  # it needs a logger
    "max_new_tokens=2",
]
# Everything that makes a resume hard at once: warmup + cosine, clipping (from step 4), two batches
# per optimizer step, dropout (the book's 0.1).
HARD = [
    "scheduler=warmup_cosine",
    "scheduler.warmup_steps=4",
    "optim.lr=0.01",
    "optim.clip_grad_norm=0.5",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_epochs=3",
]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "story.txt"
    path.write_text("The cat sat on the mat. The dog lay by the door. " * 40, encoding="utf-8")
    return path


@pytest.fixture
def config(compose_config: Callable[..., DictConfig], text_file: Path) -> Callable[..., DictConfig]:
    """``config(run_dir, *overrides)``: the tiny model's task=train config on the story."""
    return lambda out, *overrides: compose_config(*SMALL, f"data.path={text_file}", *overrides, run_dir=out)


@pytest.fixture
def train(config: Callable[..., DictConfig]) -> Callable[..., dict[str, Any]]:
    """``train(run_dir, *overrides)``: train on the story, return the results."""
    return lambda out, *overrides: run_task(config(out, *overrides))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pth", weights_only=True)


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


class StepRecorder(L.Callback):
    """What each optimizer step used: the learning rate, and the global gradient norm before
    clipping (Lightning calls on_before_optimizer_step first) and after it (the gradients the
    optimizer stepped with, still there in its step post-hook)."""

    records: ClassVar[list[dict[str, float]]] = []  # class-level: the test reads what Hydra's instance wrote

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        StepRecorder.records = []

        def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            StepRecorder.records[-1]["after"] = _grad_norm(pl_module)

        trainer.optimizers[0].register_step_post_hook(after_step)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        StepRecorder.records.append(
            {"step": trainer.global_step, "lr": optimizer.param_groups[0]["lr"], "before": _grad_norm(pl_module)}
        )


def _grad_norm(module: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in module.parameters() if p.grad is not None))


RECORDER = ["+callbacks.recorder._target_=test_long_runs.StepRecorder"]


def _appendix_d_lr(s: int, peak: float, total: int, warmup: int, initial: float, minimum: float) -> float:
    """Appendix D's rule as its notebook writes it (warmup increment, then cosine of the progress)."""
    if s < warmup:
        return initial + s * ((peak - initial) / warmup)
    progress = (s - warmup) / (total - warmup)
    return minimum + (peak - minimum) * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_learning_rate_at_every_step(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    results = train(
        tmp_path,
        *RECORDER,
        "scheduler=warmup_cosine",
        "scheduler.warmup_ratio=0.25",
        "scheduler.initial_lr=0.0001",
        "scheduler.min_lr=0.0002",
        "optim.lr=0.003",
        "trainer.max_epochs=2",
    )
    steps = results["global_step"]
    windows = len(range(0, results["train_tokens"] - CONTEXT, CONTEXT))
    assert steps == 2 * (windows // 2) > 8
    warmup = int(0.25 * steps)
    used = [r["lr"] for r in StepRecorder.records]
    assert [r["step"] for r in StepRecorder.records] == list(range(steps))
    expected = [_appendix_d_lr(s, 0.003, steps, warmup, 0.0001, 0.0002) for s in range(steps)]
    assert used == pytest.approx(expected, rel=1e-12, abs=0)
    assert used[0] == pytest.approx(0.0001) and max(used) == pytest.approx(0.003)


def test_clipping_starts_at_the_end_of_warmup(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    limit = 0.05  # far below this tiny model's gradient norms (~1), so every clipped step shows it
    train(
        tmp_path,
        *RECORDER,
        "scheduler=warmup_cosine",
        "scheduler.warmup_steps=3",
        f"optim.clip_grad_norm={limit}",
        "trainer.max_steps=8",
    )
    records = StepRecorder.records
    assert len(records) == 8
    for r in records[:3]:  # warmup: untouched
        assert r["after"] == pytest.approx(r["before"], rel=1e-6)
    for r in records[3:]:
        assert r["before"] > limit
        assert r["after"] == pytest.approx(limit, rel=1e-4)


def test_clipping_without_warmup_starts_at_the_first_step(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    train(tmp_path, *RECORDER, "optim.clip_grad_norm=0.05", "trainer.max_steps=2")
    assert len(StepRecorder.records) == 2
    assert all(r["before"] > 0.05 and r["after"] <= 0.05 * (1 + 1e-4) for r in StepRecorder.records)


def test_grad_norm_and_tokens_per_sec_logged_every_step(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    train(
        tmp_path,
        *RECORDER,
        "logger=csv",
        "callbacks.lr_monitor={_target_:lightning.pytorch.callbacks.LearningRateMonitor,logging_interval:step}",
        "+trainer.log_every_n_steps=1",
        "optim.clip_grad_norm=0.05",
        "trainer.max_steps=4",
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    by_step: dict[int, dict[str, str]] = {}
    for row in rows:
        for key, value in row.items():
            if value != "":
                by_step.setdefault(int(row["step"]), {})[key] = value
    # A step's scalars at its 1-based number (the progress lines' "Step"); the recorder's step k is 0-based.
    grad_norms = [float(by_step[s + 1]["train/grad_norm"]) for s in range(4)]
    # Logged before clipping: the recorder's own norm, not the limit.
    assert grad_norms == pytest.approx([r["before"] for r in StepRecorder.records], rel=1e-4)
    assert all(float(by_step[s + 1]["train/tokens_per_sec"]) > 0 for s in range(4))
    # The rate of the step about to be taken, at the count of steps before it (appendix D's x-axis).
    assert all(float(by_step[s]["lr-AdamW"]) == pytest.approx(0.0004) for s in range(4))


def test_accumulating_two_batches_equals_one_batch_twice_as_large(
    tmp_path: Path, config: Callable[..., DictConfig], train: Callable[..., dict[str, Any]]
) -> None:
    common = ["dropout=none", "scheduler=warmup_cosine", "scheduler.warmup_steps=1", "trainer.max_steps=4"]
    train(tmp_path / "big", *common, "data.batch_size=4")
    train(tmp_path / "acc", *common, "data.batch_size=2", "trainer.accumulate_grad_batches=2")
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-5, atol=1e-6)
    # and the runs did train: the weights left their seed-123 initialisation
    torch.manual_seed(123)
    initial = GPTModel(dict(config(tmp_path).model)).state_dict()
    assert not torch.equal(initial["tok_emb.weight"], big["tok_emb.weight"])


def test_exact_resume_from_epoch_end_and_mid_epoch_checkpoints(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    steps_every = 3  # with 2 batches per step, a step checkpoint lands mid-epoch
    whole = train(
        tmp_path / "whole",
        *HARD,
        "callbacks.model_checkpoint.save_top_k=-1",
        "+callbacks.step_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.step_checkpoint.dirpath={tmp_path / 'steps'}",
        f"+callbacks.step_checkpoint.every_n_train_steps={steps_every}",
        "+callbacks.step_checkpoint.save_top_k=-1",
        "+callbacks.step_checkpoint.filename='{step}'",
    )
    per_epoch = whole["global_step"] // 3  # 15 batches of 2 windows: 8 optimizer steps
    epoch_end = sorted((tmp_path / "whole" / "checkpoints").glob("epoch00-*.ckpt"))
    mid = tmp_path / "steps" / f"step={steps_every}.ckpt"
    assert len(epoch_end) == 1 and mid.is_file() and steps_every % per_epoch != 0
    for name, ckpt in (("epoch_end", epoch_end[0]), ("mid_epoch", mid)):
        resumed = train(tmp_path / name, *HARD, f"ckpt_path='{ckpt}'")
        assert resumed["global_step"] == whole["global_step"]
        assert resumed["tokens_seen"] == whole["tokens_seen"]
        _assert_bit_identical(_weights(tmp_path / name), _weights(tmp_path / "whole"))
        assert resumed["loss_curve"] == whole["loss_curve"], name


class SignalAtBatch(L.Callback):
    """Sends this process ``signum`` at the start of training batch ``batch`` (counted over the run),
    ``times`` times, ``gap_s`` seconds apart."""

    def __init__(self, batch: int, signum: int = signal.SIGTERM, times: int = 1, gap_s: float = 0.02) -> None:
        self.batch, self.signum, self.times, self.gap_s, self.seen = batch, signum, times, gap_s, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.seen == self.batch:
            for i in range(self.times):
                if i:
                    time.sleep(self.gap_s)
                os.kill(os.getpid(), self.signum)
        self.seen += 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_last_ckpt_and_the_resume_is_exact(
    tmp_path: Path, train: Callable[..., dict[str, Any]], signum: int
) -> None:
    train(tmp_path / "whole", *HARD)
    run = tmp_path / "run"
    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    # Batch 7 starts the second half of optimizer step 3: training stops after that step.
    with pytest.raises(RunInterrupted) as stopped:
        train(
            run,
            *HARD,
            "+callbacks.signal._target_=test_long_runs.SignalAtBatch",
            "+callbacks.signal.batch=7",
            f"+callbacks.signal.signum={int(signum)}",
        )
    assert (stopped.value.signum, stopped.value.step, stopped.value.exit_code) == (signum, 4, 128 + signum)
    last = run / "checkpoints" / "last.ckpt"
    assert stopped.value.checkpoint == str(last)
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers  # handed back
    resumed = train(run, *HARD, "ckpt_path=last")
    assert resumed["global_step"] == 24
    _assert_bit_identical(_weights(run), _weights(tmp_path / "whole"))


def test_two_sigterms_20_ms_apart_stop_at_the_step_with_a_checkpoint(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    """Issue 21 case 7: a repeated SIGTERM (schedulers send more than one) is still SIGTERM, exit 143,
    and still stops at the optimizer step's end with its checkpoint; only a second SIGINT stops at once."""
    run = tmp_path / "run"
    signal_at = ["+callbacks.signal._target_=test_long_runs.SignalAtBatch", "+callbacks.signal.batch=7"]
    with pytest.raises(RunInterrupted) as stopped:
        train(run, *HARD, *signal_at, "+callbacks.signal.times=2", "+callbacks.signal.gap_s=0.02")
    assert (stopped.value.signum, stopped.value.step, stopped.value.exit_code) == (signal.SIGTERM, 4, 143)
    assert stopped.value.checkpoint == str(run / "checkpoints" / "last.ckpt")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4

    with pytest.raises(RunInterrupted) as at_once:  # Ctrl-C twice: mid-step, nothing saved
        train(
            tmp_path / "twice",
            *HARD,
            *signal_at,
            f"+callbacks.signal.signum={int(signal.SIGINT)}",
            "+callbacks.signal.times=2",
        )
    assert (at_once.value.signum, at_once.value.step, at_once.value.checkpoint) == (signal.SIGINT, 3, None)
    assert not list((tmp_path / "twice" / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize("link", ["dangling", "missing"])
def test_ckpt_path_last_resumes_the_newest_checkpoint_whatever_last_ckpt_is(
    tmp_path: Path, train: Callable[..., dict[str, Any]], link: str
) -> None:
    """Issue 21 case 1: a SIGKILL while Lightning rotates checkpoints (new file written, old one removed,
    last.ckpt removed and linked again) leaves last.ckpt pointing at the removed file, or no last.ckpt."""
    every_2 = ["callbacks.model_checkpoint.every_n_train_steps=2", *RECORDER]
    train(tmp_path, *every_2, "trainer.max_steps=6")
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch00-step6.ckpt", "last.ckpt"]
    (ckpts / "last.ckpt").unlink()
    if link == "dangling":
        (ckpts / "last.ckpt").symlink_to("epoch00-step4.ckpt")  # the file the rotation removed
    resumed = train(tmp_path, *every_2, "trainer.max_steps=8", "ckpt_path=last")
    assert [r["step"] for r in StepRecorder.records] == [6, 7]  # continued at step 6, not from 0
    assert resumed["global_step"] == 8
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_moved_run_directory_keeps_updating_its_last_ckpt(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    """Issue 21 case 3: Lightning forgets which last.ckpt is its own when the directory moved, and
    would write last-v1.ckpt beside it; every later ckpt_path=last would restart from the move."""
    every_2 = ["callbacks.model_checkpoint.every_n_train_steps=2", *RECORDER]
    train(tmp_path / "before", *every_2, "trainer.max_steps=4")
    moved = tmp_path / "after"
    shutil.move(tmp_path / "before", moved)
    train(moved, *every_2, "trainer.max_steps=6", "ckpt_path=last")
    assert [r["step"] for r in StepRecorder.records] == [4, 5]
    names = sorted(p.name for p in (moved / "checkpoints").glob("*.ckpt"))
    assert "last-v1.ckpt" not in names and "last.ckpt" in names
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    again = train(moved, *every_2, "trainer.max_steps=8", "ckpt_path=last")
    assert [r["step"] for r in StepRecorder.records] == [6, 7] and again["global_step"] == 8


def test_ckpt_path_last_starts_fresh_then_continues(
    tmp_path: Path, train: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="gpt_lab.training.resume_last"):
        first = train(tmp_path, "ckpt_path=last", "trainer.max_epochs=1")
    assert "no checkpoint in" in caplog.text and "starting a fresh run" in caplog.text
    assert first["global_step"] == 15  # 31 training windows: 15 full batches of 2
    again = train(tmp_path, "ckpt_path=last", "trainer.max_epochs=2")
    assert again["global_step"] == 30
    assert again["initial_train_loss"] == first["initial_train_loss"]  # measured once, by the first run
    assert [e["epoch"] for e in again["loss_curve"]] == [1, 2]


def test_step_checkpoints_keep_last_pointing_at_the_newest(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    train(tmp_path, "callbacks.model_checkpoint.every_n_train_steps=4", "trainer.max_steps=10")
    ckpts = tmp_path / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8  # the newest multiple of 4; no epoch-end checkpoint in between
    assert [p.name for p in ckpts.glob("epoch*.ckpt")] == ["epoch00-step8.ckpt"]


def test_resume_refuses_a_checkpoint_of_another_model_shape(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    train(tmp_path, "trainer.max_steps=1")
    with pytest.raises(UserError, match=r"another shape.*model.emb_dim=32 \(checkpoint: 16\)"):
        train(tmp_path, "ckpt_path=last", "model.emb_dim=32")


def test_warmup_longer_than_the_run_is_a_user_error(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(UserError, match=r"scheduler.warmup_steps=30 leaves no steps.*has 15 optimizer steps"):
        train(tmp_path, "scheduler=warmup_cosine", "scheduler.warmup_steps=30", "trainer.max_epochs=1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scheduler=warmup_cosine", "scheduler.min_lr=0.01"], r"scheduler.min_lr=0.01 must not exceed .*optim.lr"),
        (
            ["scheduler=warmup_cosine", "scheduler.warmup_ratio=-0.1"],
            r"scheduler.warmup_ratio=-0.1 must be in \[0, 1\)",
        ),
        (["scheduler=warmup_cosine", "scheduler.warmup_steps=-2"], r"scheduler.warmup_steps=-2 must be >= 0"),
        (["optim.clip_grad_norm=0"], r"optim.clip_grad_norm=0.0 must be a finite number > 0"),
        (["callbacks.model_checkpoint.every_n_train_steps=0"], r"every_n_train_steps=0 must be a positive integer"),
        (["scheduler.name=linear"], r"scheduler.name=linear is not a schedule; choose one of constant, warmup_cosine"),
    ],
)
def test_bad_long_run_settings_are_config_errors(
    tmp_path: Path, config: Callable[..., DictConfig], overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(config(tmp_path, *overrides))


def test_appendix_d_preset_runs_the_appendix_schedule(compose_config: Callable[..., DictConfig]) -> None:
    """experiment=appendix_d builds the appendix's run (BOOK_FIGURES.md): chapter 5's loaders for 15
    epochs = 135 optimizer steps, 27 of them warmup, and the learning rates its notebook computes."""
    from hydra.utils import get_class, instantiate

    from gpt_lab.tasks.train import build_datamodule
    from gpt_lab.training.schedule import resolve_schedule

    cfg = validate_config(compose_config("experiment=appendix_d"))
    assert cfg.task.name == "train" and cfg.seed == 123
    data = build_datamodule(cfg, cfg.model.context_length)
    data.setup("fit")
    assert [tuple(x.shape) for x, _ in data.train_dataloader()] == [(2, 256)] * 9  # chapter 5's loaders
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    total = trainer.max_epochs * 9 // trainer.accumulate_grad_batches
    assert total == 135
    lit = get_class(cfg.objective.lit_module).from_config(cfg, {**TINY, "vocab_size": 50257}, None)
    assert lit.hparams.clip_grad_norm == 1.0
    schedule = lit.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert resolve_schedule(schedule, total) == 27
    used = []
    for _ in range(total):  # what the optimizer would use at each step (no gradients: nothing moves)
        used.append(schedule.optimizer.param_groups[0]["lr"])
        schedule.optimizer.step()
        schedule.step()
    expected = [_appendix_d_lr(s, 1e-3, 135, 27, 1e-5, 1e-5) for s in range(135)]
    assert used == pytest.approx(expected, rel=1e-9)


def test_the_verdict_ships_with_the_package() -> None:
    from gpt_lab.data.text import DataError, packaged_text
    from gpt_lab.tokenizer import get_tokenizer

    path = packaged_text("gpt_lab:the-verdict.txt")
    assert path is not None and packaged_text("the-verdict.txt") is None  # a plain path: where the user ran from
    text = path.read_text(encoding="utf-8")
    # Chapter 2's figures for the story: 20,479 characters, 5,145 tokens.
    assert (len(text), len(get_tokenizer().encode(text))) == (20479, 5145)
    with pytest.raises(DataError, match=r"ships no text 'nope.txt'; it has the-verdict.txt"):
        packaged_text("gpt_lab:nope.txt")


def test_appendix_d_schedule_on_the_verdict_has_27_warmup_steps_of_135() -> None:
    from gpt_lab.training.schedule import WarmupCosineFactor, warmup_cosine_lr

    factor = WarmupCosineFactor(peak=1e-3, initial_lr=1e-5, min_lr=1e-5, warmup_steps=None, warmup_ratio=0.2)
    factor.resolve(135)
    assert (factor.total, factor.warmup) == (135, 27)
    lrs = [warmup_cosine_lr(s, 1e-3, 135, 27, 1e-5, 1e-5) for s in range(135)]
    assert lrs == pytest.approx([_appendix_d_lr(s, 1e-3, 135, 27, 1e-5, 1e-5) for s in range(135)], rel=1e-12)
    assert lrs[27] == 1e-3 and lrs[-1] > 1e-5


def test_flops_per_token_counts_every_matmul_weight() -> None:
    cfg = {
        "vocab_size": 64,
        "context_length": 8,
        "emb_dim": 16,
        "n_heads": 2,
        "n_layers": 3,
        "drop_rate": 0.0,
        "qkv_bias": False,
    }
    E, V, L_, T = 16, 64, 3, 8
    # Per block, by hand: q, k, v (no bias) 3*E*E; out_proj E*E + E; feed-forward E*4E + 4E + 4E*E + E;
    # two LayerNorms 4E. Final LayerNorm 2E, output head V*E. Embeddings do no multiply-adds.
    block = 3 * E * E + E * E + E + E * 4 * E + 4 * E + 4 * E * E + E + 4 * E
    n = L_ * block + 2 * E + V * E
    assert flops_per_token(GPTModel(cfg), T) == 6 * n + 12 * L_ * E * T


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "fsdp"])
def test_trainer_configs_take_the_long_run_keys_without_plus(
    compose_config: Callable[..., DictConfig], trainer: str
) -> None:
    cfg = compose_config(
        f"trainer={trainer}",
        "trainer.max_steps=100",
        "trainer.max_time=00:01:00:00",
        "trainer.accumulate_grad_batches=4",
    )
    assert (cfg.trainer.max_steps, cfg.trainer.accumulate_grad_batches) == (100, 4)
    expected_precision = "32-true" if trainer in ("cpu", "ddp") else "bf16-mixed"
    assert cfg.trainer.precision == expected_precision


def test_fsdp_config_builds_lightnings_strategy_wrapping_each_transformer_block(
    compose_config: Callable[..., DictConfig],
) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from gpt_lab.model.gpt import TransformerBlock

    cfg = compose_config("trainer=fsdp", "trainer.strategy.activation_checkpointing=true")
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.trainer.devices) == ("gpu", "bf16-mixed", 2)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    # (private attributes: FSDP cannot be set up without CUDA to see the wrapping itself)
    for policy in (strategy.kwargs["auto_wrap_policy"], strategy._activation_checkpointing_kwargs["auto_wrap_policy"]):
        assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {TransformerBlock}


@pytest.mark.gpu
def test_fsdp_trains_on_one_gpu(tmp_path: Path, train: Callable[..., dict[str, Any]]) -> None:
    results = train(tmp_path, "trainer=fsdp", "trainer.devices=1", "trainer.max_steps=4")
    assert results["global_step"] == 4 and results["train_loss"] < results["initial_train_loss"]


def test_pretrain_preset_runs_nanogpts_gpt2_schedule(compose_config: Callable[..., DictConfig]) -> None:
    """experiment=pretrain builds what conf/experiment/pretrain.yaml says it takes from the book and
    nanoGPT's GPT-2 recipe, checked on the built objects: the book's gpt2_small, AdamW (weight decay
    0.1) at nanoGPT's rates (2,000 warmup steps from 0 to 6e-4, cosine to 6e-5 over the run),
    clipping at 1.0, 4 batches of 8 windows per step, a step checkpoint every 1,000 steps."""
    from hydra.utils import get_class, instantiate

    from gpt_lab.run.preflight import count_params_on_meta
    from gpt_lab.training.schedule import resolve_schedule

    cfg = validate_config(compose_config("experiment=pretrain", "data.dir=data/books"))
    assert (cfg.task.name, cfg.data.name) == ("train", "corpus")
    assert count_params_on_meta(cfg.model) == 163_009_536  # exercise 4.2's gpt2_small, context 1024
    lit = get_class(cfg.objective.lit_module).from_config(cfg, {**TINY, "vocab_size": 50257}, None)
    assert lit.hparams.clip_grad_norm == 1.0
    optimizers = lit.configure_optimizers()
    assert optimizers["optimizer"].defaults["weight_decay"] == 0.1
    schedule = optimizers["lr_scheduler"]["scheduler"]
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    total = trainer.max_steps
    assert resolve_schedule(schedule, total) == 2000
    steps = [0, 1000, 1999, 2000, 51000, total - 1]
    factor = schedule.lr_lambdas[0]
    expected = [_appendix_d_lr(s, 6e-4, total, 2000, 0.0, 6e-5) for s in steps]
    assert [6e-4 * factor(s) for s in steps] == pytest.approx(expected, rel=1e-9)
    assert expected[3] == pytest.approx(6e-4) and expected[-1] == pytest.approx(6e-5, rel=1e-3)
    assert (trainer.accumulate_grad_batches, cfg.data.batch_size) == (4, 8)
    checkpoint = instantiate(cfg.callbacks.model_checkpoint)
    assert checkpoint._every_n_train_steps == 1000  # (Lightning keeps it private)
    assert cfg.trainer.limit_val_batches == 50  # data=corpus's bounded validation


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared corpus of four short documents (one litdata chunk per split)."""
    from gpt_lab.data.corpus_prepare import prepare_corpus

    root = tmp_path_factory.mktemp("corpus")
    (root / "src").mkdir()
    words = ["the", "cat", "dog", "sat", "ran", "on", "under", "mat", "door", "and", "a", "big", "small", "red"]
    for i in range(4):
        draw = random.Random(i)
        (root / "src" / f"doc{i}.txt").write_text(" ".join(draw.choice(words) for _ in range(150)) + ".\n")
    prepare_corpus("src", root / "prepared", root, val_fraction=0.25, seed=123, num_workers=1)
    return root / "prepared"


def test_mid_epoch_resume_of_a_corpus_run_with_dropout_is_bit_identical(
    tmp_path: Path, compose_config: Callable[..., DictConfig], small_corpus: Path
) -> None:
    """Issue 21 case 10: the dropout masks after a mid-epoch resume are the uninterrupted run's: the
    corpus loaders draw their base seeds from generators of their own, not from torch's global one."""
    settings = [
        *SMALL,
        "data=corpus",
        f"data.dir={small_corpus}",
        "data.batch_size=2",
        "dropout=book",
        "++trainer.max_steps=6",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    run_task(compose_config(*settings, run_dir=tmp_path / "whole"))
    mid = tmp_path / "whole" / "checkpoints" / "epoch00-step3.ckpt"
    assert torch.load(mid, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    run_task(compose_config(*settings, f"ckpt_path={mid}", run_dir=tmp_path / "resumed"))
    _assert_bit_identical(_weights(tmp_path / "resumed"), _weights(tmp_path / "whole"))


def test_trainer_loggers_and_callbacks_are_built_before_the_model_and_their_errors_name_the_keys(
    tmp_path: Path, config: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: Hydra's instantiation errors become one config error naming every bad key, raised
    before the model (or the data, or a checkpoint) is read."""
    import gpt_lab.tasks.train

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was built before the Trainer")

    monkeypatch.setattr(gpt_lab.tasks.train, "init_model_config", no_model)
    bad = config(
        tmp_path,
        "+trainer.max_epoch=3",
        "+callbacks.sampler._target_=gpt_lab.training.callbacks.SampleText",
        "+callbacks.sampler.max_new_tokens=-1",
        "+callbacks.extra._target_=gpt_lab.training.callbacks.NoSuchCallback",
        "+trainer.gradient_clip_val=abc",
    )
    with pytest.raises(ConfigError) as refused:
        run_task(bad)
    message = str(refused.value)
    for part in (
        "trainer.max_epoch is not an argument of lightning.Trainer",
        "callbacks.sampler: callbacks.sample_text.max_new_tokens=-1 must be >= 0",
        "callbacks.extra._target_=gpt_lab.training.callbacks.NoSuchCallback cannot be imported",
        "trainer.gradient_clip_val='abc' is not",
    ):
        assert part in message, message
    assert "\n" not in message


def test_ckpt_path_last_never_starts_afresh_over_checkpoints_that_do_not_load(
    tmp_path: Path, train: Callable[..., dict[str, Any]]
) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch00-step4.ckpt").write_bytes(b"half a checkpoint, copied by hand")
    with pytest.raises(UserError, match=r"holds checkpoints, but none loads \(epoch00-step4.ckpt\)"):
        train(tmp_path, "ckpt_path=last", "trainer.max_steps=2")


_USER_SCRIPT = """
import os, signal
import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from gpt_lab.training.callbacks import StopOnSignal

class Preempt(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, idx):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

trainer = L.Trainer(max_steps=50, callbacks=[StopOnSignal(), Preempt()], logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
trainer.fit(BoringModel())
print("not reached")
"""


def test_a_scripts_own_trainer_with_stop_on_signal_exits_143_without_a_traceback() -> None:
    """StopOnSignal's RunInterrupted is a SystemExit(128 + signal): uncaught, Python exits quietly with it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _USER_SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "not reached" not in done.stdout
