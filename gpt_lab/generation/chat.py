"""A multi-turn conversation with a model (task=chat): the history kept within the context, replies streamed.

Each turn's prompt is the whole conversation in the model's prompt style
(``format_conversation``); when it and the reply's room (``max_new_tokens``) outgrow the model's
context, the oldest exchanges are left out, one at a time. The reply is generated up to the
style's end-of-turn token (or end-of-text), written out piece by piece as it is produced, and
kept (the style's extraction) for the next turns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gpt_lab.errors import UserError
from gpt_lab.generation.prompt_styles import PromptStyle, extract_response, format_conversation, get_prompt_style
from gpt_lab.generation.sampling import generate_stream


def stop_id(tokenizer: Any, style: str | PromptStyle) -> int:
    """The id a reply in ``style`` ends with: the style's end-of-turn token when the vocabulary has it
    as one token, else the tokenizer's end-of-text."""
    eot = get_prompt_style(style).end_of_turn
    token_id = getattr(tokenizer, "token_id", None)
    found = token_id(eot) if eot and token_id else None
    return tokenizer.eot_token if found is None else found


def stop_ids(tokenizer: Any, style: str | PromptStyle | None = None) -> int | tuple[int, ...]:
    """Every id generation stops at (``generate``'s ``eos_id``): ``style``'s end of turn (``stop_id``)
    and each end-of-sequence / end-of-turn id a family's directory lists (gpt_lab.hf_tokenizer's
    ``stop_ids``: generation_config.json's ``eos_token_id`` may be a list); GPT-2: its end-of-text."""
    first = stop_id(tokenizer, style) if style is not None else tokenizer.eot_token
    listed = tuple(getattr(tokenizer, "stop_ids", ()))
    return tuple(dict.fromkeys((first, *listed))) if listed else int(first)


@dataclass
class Conversation:
    """The exchanges so far and how to continue them."""

    model: nn.Module
    tokenizer: Any
    style: PromptStyle
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    exchanges: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0  # exchanges left out to fit the context

    def prompt_ids(self, message: str) -> tuple[str, list[int]]:
        """The prompt for ``message`` after the kept exchanges, oldest left out until it fits."""
        room = int(self.model.context_length) - self.max_new_tokens
        while True:
            text = format_conversation(self.exchanges, message, self.style)
            ids = self.tokenizer.encode(text)
            if len(ids) <= room or not self.exchanges:
                break
            self.exchanges.pop(0)
            self.dropped += 1
        if len(ids) > room:
            raise UserError(
                f"the message is {len(ids)} tokens with its chat markup; with max_new_tokens={self.max_new_tokens} "
                f"the model's context of {self.model.context_length} leaves room for {room}: write less"
            )
        return text, ids

    def reply(self, message: str, write: Callable[[str], None]) -> str:
        """Answer ``message``: the reply is written out as produced and returned (extracted)."""
        text, ids = self.prompt_ids(message)
        device = next(self.model.parameters()).device
        new: list[int] = []
        shown = ""
        for token in generate_stream(
            self.model,
            torch.tensor([ids], device=device),
            self.max_new_tokens,
            int(self.model.context_length),
            temperature=self.temperature,
            top_k=self.top_k,
            eos_id=stop_ids(self.tokenizer, self.style),
        ):
            new.append(int(token))
            piece = self.tokenizer.decode(ids + new)[len(text) :]
            if not piece.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                write(piece[len(shown) :])
                shown = piece
        generated = self.tokenizer.decode(ids + new)
        write(generated[len(text) + len(shown) :])  # what was held back, at the end
        answer = extract_response(generated, text, self.style)
        self.exchanges.append((message, answer))
        return answer


def chat_loop(conversation: Conversation, read: Callable[[str], str], write: Callable[[str], None]) -> int:
    """Read messages with ``read`` (``input``) until end of input (Ctrl-D), answering each; returns the turns."""
    turns = 0
    while True:
        try:
            message = read("> ")
        except EOFError:
            write("\n")
            return turns
        if not message.strip():
            continue
        conversation.reply(message, write)
        write("\n")
        turns += 1
