"""Prompts in, text out: what every task does with ``prompt`` (encode it, continue it, show it)."""

from __future__ import annotations

import sys
import time
from typing import Any

import tiktoken
import torch
from omegaconf import DictConfig

from gpt_lab.errors import UserError
from gpt_lab.generation.chat import stop_ids
from gpt_lab.generation.sampling import generate_stream
from gpt_lab.model.gpt import GPTModel


def encode_prompt(tokenizer: tiktoken.Encoding, prompt: str) -> list[int]:
    """``prompt``'s token ids (``<|endoftext|>`` allowed); an empty encoding is a ``UserError``."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise UserError(f"prompt={prompt!r} encodes to no tokens; give some text, e.g. prompt='Hello, I am'")
    return ids


def continue_prompt(
    model: GPTModel,
    tokenizer: tiktoken.Encoding,
    prompt_ids: list[int],
    cfg: DictConfig,
    stream: bool = False,
) -> dict[str, Any]:
    """Continue one prompt with ``cfg``'s settings (greedy unless ``cfg.temperature > 0``), timed.

    ``cfg`` is the run's config (``max_new_tokens``, ``temperature``, ``top_k``, ``stop_at_eos``,
    ``use_cache``).
    With ``stream``, the prompt and each new piece of text are written to stdout as produced.
    """
    printer = TextPrinter(tokenizer, prompt_ids) if stream else None
    output_ids = list(prompt_ids)
    started = time.perf_counter()
    steps = generate_stream(
        model,
        torch.tensor([prompt_ids], device=model.tok_emb.weight.device),  # (1, n_prompt)
        cfg.max_new_tokens,
        model.context_length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        eos_id=stop_ids(tokenizer) if cfg.stop_at_eos else None,  # a family: every id its files list
        use_cache=cfg.use_cache,
    )
    for token in steps:
        output_ids.append(int(token))
        if printer:
            printer.show(output_ids)
    seconds = time.perf_counter() - started
    if printer:
        printer.close()
    new_tokens = len(output_ids) - len(prompt_ids)
    return {
        "output_ids": output_ids,
        "output_text": tokenizer.decode(output_ids),
        "new_tokens": new_tokens,
        "generation_seconds": seconds,
        "generation_tokens_per_second": new_tokens / seconds if seconds > 0 else float("nan"),
    }


class TextPrinter:
    """Writes a growing token sequence's text to stdout, holding back half a UTF-8 character."""

    def __init__(self, tokenizer: tiktoken.Encoding, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.shown = ""
        self.show(prompt_ids)

    def show(self, ids: list[int]) -> None:
        text = self.tokenizer.decode(ids)
        if text.endswith("\ufffd"):  # a token that ends inside a multi-byte character: wait for the rest
            return
        sys.stdout.write(text[len(self.shown) :])
        sys.stdout.flush()
        self.shown = text

    def close(self) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()
