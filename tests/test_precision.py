"""The speed options of task=train: trainer=cpu_bf16 (bf16 mixed precision, fast dropout), compile=true,
and the CPU allocator setting every training run uses (gpt_lab.training.cpu_memory).

Each is compared with the default fp32 eager run of the same tiny model and data: bf16 losses close
to fp32's (not equal: bf16 did run), compiled losses equal to eager's to float32 rounding.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.run.preflight import check_components
from gpt_lab.training.precision import FastDropout, keep_mask

# The tests' tiny run, 4 optimizer steps, no sample text (generation is not under test here).
TINY_TRAIN = ["task=train", *TINY_RUN, "trainer.max_steps=4", "callbacks.sample_text=null", "max_new_tokens=1"]


def _train(compose_config: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> dict:
    """Train on a short repeated text in a run directory of its own; return results.json's content."""
    text = tmp_path / "story.txt"
    if not text.exists():
        text.write_text("A quick brown fox jumps over the lazy dog, twice. " * 30, encoding="utf-8")
    run_dir = tmp_path / ("_".join(o.replace("=", "-") for o in overrides) or "default")
    return run_task(compose_config(*TINY_TRAIN, f"data.path={text}", *overrides, run_dir=run_dir))


def test_cpu_bf16_losses_close_to_fp32(compose_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    fp32 = _train(compose_config, tmp_path)
    bf16 = _train(compose_config, tmp_path, "trainer=cpu_bf16")
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss"):
        # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %): losses within 1 % of fp32's.
        assert bf16[key] == pytest.approx(fp32[key], rel=0.01), key
    assert bf16["train_loss"] != fp32["train_loss"]  # the products did run in bf16
    # Weights, optimizer and checkpoints stay float32 (mixed precision): the book's model.pth loads.
    state = torch.load(bf16["book_checkpoint"], weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.float32}


def test_training_on_the_cpu_keeps_freed_memory(
    compose_config: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning as L

    import gpt_lab.training.cpu_memory as cpu_memory

    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(cpu_memory, "release_freed_memory", lambda: calls.append("released"))
    fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: (calls.append("fit"), fit(*a, **k))[1])
    _train(compose_config, tmp_path, "trainer.max_steps=1")
    # The train task holds it around the fit only, not for the process's life (issue 17).
    assert calls == ["kept", "fit", "released"]


def test_compiled_training_equals_eager(compose_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    # Without dropout: compiled code draws its random numbers with its own generator, not eager's.
    eager = _train(compose_config, tmp_path, "dropout=none")
    compiled = _train(compose_config, tmp_path, "dropout=none", "compile=true")
    for key in ("initial_train_loss", "initial_val_loss", "train_loss", "val_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-4), key
    # Compiled in place: the checkpoint keeps the book's keys and loads into a plain GPTModel.
    state = torch.load(compiled["book_checkpoint"], weights_only=True)
    model = GPTModel(
        {
            "vocab_size": 50257,
            "context_length": 16,
            "emb_dim": 16,
            "n_heads": 2,
            "n_layers": 1,
            "drop_rate": 0.0,
            "qkv_bias": False,
        }
    )  # TINY_RUN's sizes
    model.load_state_dict(state, strict=True)


# --- trainer=cpu_bf16's dropout (gpt_lab.training.precision) -----------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_drops_each_lane_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    keep, kept = keep_mask((1 << 22,), p, torch.device("cpu"))
    assert kept == 1.0 - round(p * 65536) / 65536
    # Four draws come from one 64-bit number: each quarter (lane) drops with probability p on its own,
    # and neighbours independently (both dropped: p squared). Binomial sd is < 0.0005 here.
    lanes = (~keep).view(-1, 4).float()
    assert lanes.mean(0).tolist() == pytest.approx([p] * 4, abs=0.002)
    assert (lanes[:, 0] * lanes[:, 1]).mean().item() == pytest.approx(p * p, abs=0.002)
    assert (lanes[:, 3] * lanes[:, 0].roll(-1)).mean().item() == pytest.approx(p * p, abs=0.002)


def test_fast_dropout_scales_kept_values_and_their_gradient() -> None:
    x = torch.full((1000, 100), 3.0, requires_grad=True)
    torch.manual_seed(1)
    with FastDropout():
        y = F.dropout(x, 0.1, training=True)
    torch.manual_seed(1)
    keep, kept = keep_mask(x.shape, 0.1, x.device)  # the same draws
    torch.testing.assert_close(y, torch.where(keep, 3.0 / kept, 0.0))
    assert y.mean().item() == pytest.approx(3.0, rel=0.01)  # the expectation is kept
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(keep, 1.0 / kept, 0.0))


def test_fast_dropout_leaves_eval_and_the_float32_default_alone() -> None:
    x = torch.randn(64, 64)
    layer = torch.nn.Dropout(0.1)
    with FastDropout():
        assert torch.equal(layer.eval()(x), x)
        torch.manual_seed(2)
        fast = layer.train()(x)
    torch.manual_seed(2)
    book = layer(x)  # outside the mode: the book's masks, bernoulli_ draws written out here
    torch.manual_seed(2)
    assert torch.equal(book, x * torch.empty_like(x).bernoulli_(0.9).div_(0.9))
    assert not torch.equal(fast, book)


def _attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, kept: float):
    """Causal attention with dropout mask ``keep``, in float64, written out."""
    q, k, v = q.double(), k.double(), v.double()
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) * keep / kept) @ v


def test_fast_attention_dropout_matches_the_written_out_attention() -> None:
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 12, 8) for _ in range(3))
    with FastDropout():
        torch.manual_seed(4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2, is_causal=True)
    torch.manual_seed(4)
    keep, kept = keep_mask((2, 3, 12, 12), 0.2, q.device)
    torch.testing.assert_close(out.double(), _attention_reference(q, k, v, keep, kept), rtol=1e-5, atol=1e-5)
    # bf16 inputs (as under autocast): bf16 out, within bf16's rounding of the float64 attention.
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with FastDropout():
        torch.manual_seed(4)
        out = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=0.2, is_causal=True)
    assert out.dtype == torch.bfloat16
    reference = _attention_reference(qb.float(), kb.float(), vb.float(), keep, kept)
    torch.testing.assert_close(out.double(), reference, rtol=0.03, atol=0.03)


def test_trainer_cpu_bf16_runs_steps_under_autocast_and_fast_dropout(compose_config: Callable[..., DictConfig]) -> None:
    from hydra.utils import instantiate

    cfg = compose_config("trainer=cpu_bf16")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert str(trainer.precision) == "bf16-mixed"
    ones = torch.ones(1000)
    with trainer.precision_plugin.forward_context():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        torch.manual_seed(5)
        dropped = F.dropout(ones, 0.1, training=True)
    assert not torch.is_autocast_enabled("cpu")
    torch.manual_seed(5)
    keep, kept = keep_mask(ones.shape, 0.1, ones.device)  # the fast masks' draws, not bernoulli_'s
    torch.testing.assert_close(dropped, torch.where(keep, 1.0 / kept, 0.0))


def test_cpu_bf16_refuses_a_second_precision_and_the_gpu(compose_config: Callable[..., DictConfig]) -> None:
    assert check_components(compose_config("trainer=cpu_bf16")) == []
    (problem,) = check_components(compose_config("trainer=cpu_bf16", "trainer.precision=bf16-true"))
    assert "trainer.precision=bf16-true cannot be combined with trainer=cpu_bf16" in problem
    assert "use trainer=cpu trainer.precision=bf16-true" in problem
    (problem,) = check_components(compose_config("trainer=cpu_bf16", "trainer.accelerator=gpu"))
    assert "trainer.accelerator=gpu does not go with trainer=cpu_bf16" in problem


_FAULTS_CHILD = """
import resource, sys, torch
from gpt_lab.training.cpu_memory import keep_freed_memory, release_freed_memory

if sys.argv[1] in ("keep", "released"):
    assert keep_freed_memory()
if sys.argv[1] == "released":
    release_freed_memory()

def step():  # a training step's large tensors: logits and their gradient, the embedding's gradient
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, grad, emb_grad = torch.ones(512, 50257), torch.ones(512, 50257), torch.zeros(50257, 768)
    del logits, grad, emb_grad
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(sum([step() for _ in range(12)][-3:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in() -> None:
    def faults_of_last_three_steps(mode: str) -> int:
        child = [sys.executable, "-c", _FAULTS_CHILD, mode]
        return int(subprocess.run(child, capture_output=True, text=True, check=True).stdout)

    pages = 3 * (2 * 512 * 50257 + 50257 * 768) * 4 // 4096  # three steps' tensors, in 4 KiB pages
    assert faults_of_last_three_steps("default") > pages // 2  # glibc maps them afresh every step
    # Kept: after a few steps the heap holds blocks that fit, and a step faults in nothing new.
    assert faults_of_last_three_steps("keep") < pages // 100
    assert faults_of_last_three_steps("released") > pages // 2  # released: glibc's defaults again
