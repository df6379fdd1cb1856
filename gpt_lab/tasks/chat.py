"""task=chat: talk with a model in the terminal, turn after turn (Ctrl-D to leave).

``init_from`` names the model: a Hugging Face directory of a chat family (its tokenizer.json and,
unless ``prompt_style`` says otherwise, the family's chat format), or an instruction-tuned run
(the prompt style it was trained with). Replies are streamed, greedy unless ``temperature > 0``,
at most ``max_response_tokens`` (null: 256) each; the history is kept within the model's context
(gpt_lab.generation.chat). Refused, before anything is loaded, when stdin is not a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.chat import Conversation, chat_loop
from gpt_lab.generation.prompt_styles import get_prompt_style
from gpt_lab.generation.responses import BOOK_RESPONSE_TOKENS, load_instruction_model
from gpt_lab.generation.weights import check_weights_device, use_weights
from gpt_lab.hf_tokenizer import tokenizer_for

log = logging.getLogger(__name__)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The conversation; returns the results.json fields (turns, the exchanges kept)."""
    if not sys.stdin.isatty():
        raise UserError(
            "task=chat is a conversation in the terminal and stdin is not one (a pipe or a file); run it in a "
            "terminal, or answer one instruction with task=respond init_from=... instruction='...'"
        )
    check_weights_device(cfg.generation.weights, "cpu")  # before any weight is read
    model, style = load_instruction_model(cfg)
    use_weights(model, cfg.generation.weights)
    tokenizer = tokenizer_for(input_path(cfg, cfg.init_from), int(model.cfg["vocab_size"]))
    torch.manual_seed(cfg.seed)
    conversation = Conversation(
        model,
        tokenizer,
        get_prompt_style(style),
        cfg.max_response_tokens or BOOK_RESPONSE_TOKENS,
        cfg.temperature,
        cfg.top_k,
    )
    _write(f"Chatting with {cfg.init_from} ({style} format); Ctrl-D to leave.\n")
    turns = chat_loop(conversation, input, _write)
    return {
        "turns": turns,
        "prompt_style": style,
        "generation_weights": cfg.generation.weights,
        "exchanges": conversation.exchanges,
        "dropped": conversation.dropped,
    }
