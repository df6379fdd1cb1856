"""task=evaluate: loss and perplexity over a text file, checked against direct computations."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from configs import TINY_RUN
from omegaconf import DictConfig

from gpt_lab.config import validate_config
from gpt_lab.errors import UserError
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.files import read_results
from gpt_lab.run.job import run_task
from gpt_lab.tasks import evaluate
from gpt_lab.tokenizer import text_to_token_ids

TEXT = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was "
    "no great surprise to me to hear that, in the height of his glory, he had dropped his painting, "
    "married a rich widow, and established himself in a villa on the Riviera."
)


@pytest.fixture
def evaluate_config(compose_config: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., DictConfig]:
    """The composed config of ``task=evaluate`` on TEXT (``data.path`` relative to ``paths.root_dir``)."""
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    return functools.partial(compose_config, "task=evaluate", "data.path=text.txt", "max_new_tokens=3", *TINY_RUN)


def direct_mean_loss(model: torch.nn.Module, ids: list[int], length: int, stride: int) -> float:
    """Mean of -log p(target) over every target token of the book's windows, written out."""
    nll = []
    with torch.no_grad():
        for start in range(0, len(ids) - length, stride):
            x = torch.tensor([ids[start : start + length]])
            y = ids[start + 1 : start + length + 1]
            logits = model(x)[0]
            log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            nll += [-log_probs[t, y[t]].item() for t in range(length)]
    return sum(nll) / len(nll)


def test_evaluate_perplexity_is_exp_of_mean_token_loss(
    evaluate_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    # Overlapping windows (stride 5) and a last batch smaller than the others (batch_size 4).
    cfg = evaluate_config("data.stride=5", "data.batch_size=4")
    results = run_task(cfg)
    assert read_results(tmp_path) == results
    torch.manual_seed(cfg.seed)
    model = GPTModel(cfg.model).eval()
    ids = text_to_token_ids(TEXT)
    n_windows = len(range(0, len(ids) - 16, 5))
    assert n_windows % 4 != 0
    assert results["eval_windows"] == n_windows
    assert results["eval_tokens"] == n_windows * 16
    expected = direct_mean_loss(model, ids, 16, 5)
    assert results["loss"] == pytest.approx(expected, rel=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # Untrained on a 50,257-token vocabulary: about ln(50257) ≈ 10.8.
    assert 9.5 < results["loss"] < 12
    for key in ("model", "total_params", "output_text", "output_ids", "generation_tokens_per_second"):
        assert key in results
    assert results["model"] == "tiny"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_evaluate_loss_matches_transformers_on_pretrained_weights(
    evaluate_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    import transformers

    hf_cfg = transformers.GPT2Config(
        vocab_size=50257, n_positions=32, n_embd=16, n_layer=1, n_head=2, activation_function="gelu_new"
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    # Chosen config: context 16, no bias, no tying; init_from (relative to root_dir) sets 32, bias and tying.
    cfg = evaluate_config("init_from=hf", "data.batch_size=3", "logger=none")
    results = evaluate.run(validate_config(cfg))
    ids = torch.tensor(text_to_token_ids(TEXT))
    windows = [ids[s : s + 33] for s in range(0, len(ids) - 32, 32)]  # stride null: the context length
    with torch.no_grad():
        losses = [hf(w[None, :-1], labels=w[None, :-1]).loss for w in windows]  # HF shifts labels itself
        # HF's loss drops the last position's target; add it back to get every target token.
        last = [torch.nn.functional.cross_entropy(hf(w[None, :-1]).logits[0, -1:], w[-1:]) for w in windows]
    total = sum(loss.item() * 31 + tail.item() for loss, tail in zip(losses, last, strict=True))
    expected = total / (32 * len(windows))
    assert results["eval_windows"] == len(windows)
    assert results["loss"] == pytest.approx(expected, rel=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_evaluate_text_shorter_than_context_uses_one_window(evaluate_config: Callable[..., DictConfig]) -> None:
    cfg = evaluate_config("model.context_length=128", "logger=none")
    results = evaluate.run(validate_config(cfg))
    assert results["eval_windows"] == 1
    assert results["eval_tokens"] == len(text_to_token_ids(TEXT)) - 1


def test_evaluate_needs_a_text_file(evaluate_config: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = evaluate_config("data.path=null")
    with pytest.raises(UserError, match=r"data\.path=/path"):
        run_task(cfg)
    assert read_results(tmp_path)["status"] == "failed"
    cfg = evaluate_config("data.path=missing.txt")
    with pytest.raises(UserError, match="does not exist"):
        run_task(cfg)
