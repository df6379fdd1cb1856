"""Sampling from the CLI (chapter 5): several prompts, temperature / top-k, seed, streaming, eos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from gpt_lab.generation.prompts import TextPrinter
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.tokenizer import get_tokenizer

PROMPTS = "prompts=[Every effort moves you,Hello]"


def _run(compose_config: Callable[..., DictConfig], *overrides: str) -> dict:
    return run_task(compose_config("model=tiny", "max_new_tokens=8", "logger=none", *overrides))


def test_several_prompts_in_one_run(compose_config) -> None:
    results = _run(compose_config, PROMPTS)
    tok = get_tokenizer()
    assert [s["prompt"] for s in results["samples"]] == ["Every effort moves you", "Hello"]
    for sample in results["samples"]:
        assert sample["output_ids"][: len(tok.encode(sample["prompt"]))] == tok.encode(sample["prompt"])
        assert len(sample["output_ids"]) == len(tok.encode(sample["prompt"])) + 8
        assert sample["output_text"] == tok.decode(sample["output_ids"])
    assert results["output_text"] == results["samples"][0]["output_text"]  # the first fills the contract keys
    assert results["new_tokens"] == 16


def test_seed_controls_the_sample(compose_config) -> None:
    sampled = ("temperature=1.5", "top_k=50")
    first = _run(compose_config, *sampled, "seed=7")["output_ids"]
    again = _run(compose_config, *sampled, "seed=7")["output_ids"]
    other = _run(compose_config, *sampled, "seed=8")["output_ids"]
    assert first == again
    assert first != other


def test_top_k_one_equals_greedy(compose_config) -> None:
    greedy = _run(compose_config, PROMPTS)
    top1 = _run(compose_config, PROMPTS, "temperature=2.0", "top_k=1")
    assert [s["output_ids"] for s in top1["samples"]] == [s["output_ids"] for s in greedy["samples"]]


def test_streamed_text_is_the_output(compose_config, capsys: pytest.CaptureFixture[str]) -> None:
    results = _run(compose_config, PROMPTS, "stream=true", "temperature=1.0")
    printed = capsys.readouterr().out.splitlines()
    for sample in results["samples"]:
        assert sample["output_text"] in printed


def test_streaming_holds_back_half_characters(capsys: pytest.CaptureFixture[str]) -> None:
    tok = get_tokenizer()
    ids = tok.encode("a 漢字 b")
    assert any("\ufffd" in tok.decode(ids[:i]) for i in range(1, len(ids)))  # some prefix splits a character
    printer = TextPrinter(tok, ids[:1])
    for i in range(2, len(ids) + 1):
        printer.show(ids[:i])
    printer.close()
    assert capsys.readouterr().out == "a 漢字 b\n"


def test_stop_at_end_of_text(compose_config, tmp_path: Path) -> None:
    # A model that always predicts <|endoftext|>: the final norm outputs ones, the head's eos row is ones.
    cfg = compose_config("model=tiny")
    model = GPTModel(dict(cfg.model))
    with torch.no_grad():
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight.zero_()
        model.out_head.weight[50256] = 1.0
    torch.save(model.state_dict(), tmp_path / "eos.pth")
    ids = get_tokenizer().encode("Hello, I am")
    stopped = _run(compose_config, "init_from=eos.pth", "stop_at_eos=true")
    assert stopped["output_ids"] == ids and stopped["new_tokens"] == 0
    unstopped = _run(compose_config, "init_from=eos.pth")
    assert unstopped["output_ids"] == ids + [50256] * 8


def test_empty_prompt_in_list_is_refused(compose_config) -> None:
    from gpt_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"prompts\[1\]='' is empty"):
        _run(compose_config, "prompts=[Hello,'']")
