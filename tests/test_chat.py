"""task=chat: turns in the model's prompt style, replies as plain greedy generation gives them,
the history cut to the context, Ctrl-D, and the refusal without a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RUN_SCRIPT
from hf_files import write_tokenizer

from gpt_lab.generation.chat import Conversation, chat_loop, stop_id
from gpt_lab.generation.prompt_styles import get_prompt_style
from gpt_lab.generation.sampling import generate
from gpt_lab.hf_tokenizer import load_hf_tokenizer
from gpt_lab.model.gpt import GPTModel
from gpt_lab.tokenizer import get_tokenizer

TINY = {"vocab_size": 50257, "context_length": 64, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0}


def _model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel({**TINY, "qkv_bias": False}).eval()


def test_replies_are_greedy_generation_of_the_whole_conversation() -> None:
    model, tok = _model(), get_tokenizer()
    chat = Conversation(model, tok, get_prompt_style("phi3"), max_new_tokens=6)
    shown: list[str] = []
    first = chat.reply("Hi", shown.append)
    second = chat.reply("Bye", shown.append)
    # The second turn's prompt, written out: the first exchange, then the new message.
    prompt = f"<|user|>\nHi\n<|assistant|>:\n{first}\n\n<|user|>\nBye\n<|assistant|>:\n"
    ids = tok.encode(prompt)
    out = generate(model, torch.tensor([ids]), 6, 64, eos_id=50256)[0].tolist()
    text = tok.decode(out)
    assert second == text[len(prompt) :].replace("<|assistant|>:", "").strip()
    assert chat.exchanges == [("Hi", first), ("Bye", second)]
    # What was streamed is the generated text itself.
    assert "".join(shown).endswith(text[len(prompt) :])


def test_history_is_cut_to_the_context() -> None:
    model, tok = _model(), get_tokenizer()
    chat = Conversation(model, tok, get_prompt_style("alpaca"), max_new_tokens=8)
    for _ in range(4):
        chat.reply("Tell me about the small model and its tokens.", lambda _: None)
    assert chat.dropped > 0 and len(chat.exchanges) < 4
    _, ids = chat.prompt_ids("Again.")
    assert len(ids) <= 64 - 8
    with pytest.raises(Exception, match="leaves room for 56: write less"):
        chat.prompt_ids("word " * 80)


def test_loop_ends_at_end_of_input() -> None:
    model, tok = _model(), get_tokenizer()
    chat = Conversation(model, tok, get_prompt_style("phi3"), max_new_tokens=3)
    messages = iter(["Hello", "   ", "Again"])

    def read(prompt: str) -> str:
        try:
            return next(messages)
        except StopIteration:
            raise EOFError from None

    assert chat_loop(chat, read, lambda _: None) == 2  # the blank line is not a turn
    assert [m for m, _ in chat.exchanges] == ["Hello", "Again"]


def test_stop_id_is_the_end_of_turn_token(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = load_hf_tokenizer(tmp_path)
    assert stop_id(tok, "qwen3") == 2
    assert stop_id(get_tokenizer(), "alpaca") == 50256


def test_chat_without_a_terminal_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN_SCRIPT), "task=chat", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2
    assert "task=chat is a conversation in the terminal and stdin is not one" in done.stderr


def _first_greedy_token_becomes(model: torch.nn.Module, ids: list[int], target: int) -> None:
    """Swap ``target``'s output-head row with the row greedy decoding picks first after ``ids``."""
    with torch.no_grad():
        first = int(model(torch.tensor([ids]))[0, -1].argmax())
        head = model.out_head.weight
        head[[first, target]] = head[[target, first]]


def test_generation_stops_at_every_id_the_family_lists(tmp_path: Path) -> None:
    """generation_config.json's eos_token_id may be a list (Qwen3: <|im_end|>, <|endoftext|>): stop_at_eos
    stops at each, and a chat reply at its end of turn and at each of them."""
    import json

    from omegaconf import OmegaConf

    from gpt_lab.generation.prompts import continue_prompt

    write_tokenizer(tmp_path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    tok = load_hf_tokenizer(tmp_path)
    assert tok.stop_ids == (0, 2) and tok.eot_token == 0
    cfg = OmegaConf.create({"max_new_tokens": 5, "temperature": 0.0, "top_k": None, "use_cache": True})
    ids = tok.encode("Hello, I am")
    for stop_at_eos, new_tokens in ((False, 5), (True, 0)):
        model = _model()
        _first_greedy_token_becomes(model, ids, 2)  # the list's second id
        got = continue_prompt(model, tok, ids, OmegaConf.merge(cfg, {"stop_at_eos": stop_at_eos}))
        assert len(got["output_ids"]) - len(ids) == new_tokens
        assert stop_at_eos or got["output_ids"][len(ids)] == 2

    model = _model()
    chat = Conversation(model, tok, get_prompt_style("qwen3_nothink"), max_new_tokens=5)
    _, prompt_ids = chat.prompt_ids("Hi")
    _first_greedy_token_becomes(model, prompt_ids, 0)  # <|endoftext|>, not the style's <|im_end|>
    assert chat.reply("Hi", lambda _: None) == ""
