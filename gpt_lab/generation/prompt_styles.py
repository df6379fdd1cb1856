"""Prompt styles for instruction fine-tuning (chapter 7): how an entry becomes the text a model reads.

An entry is a mapping with ``instruction``, ``input`` (may be empty) and ``output``. A style turns
its instruction and input into the prompt (what the model is given at inference), and its output
into the response text that follows the prompt in training. After generation the response is the
text after the prompt, with the style's response marker removed and whitespace stripped (the book's
extraction). Special-looking markers such as Phi-3's ``<|user|>`` are plain text here: GPT-2's
tokenizer has no such tokens.

The registry is ``PROMPT_STYLES``; ``register_prompt_style`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpt_lab.errors import UserError

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


class PromptStyleError(UserError):
    """An unknown prompt style, or a model that carries none."""


@dataclass(frozen=True)
class PromptStyle:
    """``prompt(instruction, input)`` is the text a model is given; ``response_marker`` starts the answer.

    The training text of an entry is ``prompt + response_prefix + output``; ``response_marker``
    (contained in ``response_prefix``) is what the book removes from the generated text.
    """

    name: str
    prompt: Callable[[str, str], str]
    response_prefix: str
    response_marker: str
    description: str = ""


def _alpaca(instruction: str, input_text: str) -> str:
    text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
    return text + (f"\n\n### Input:\n{input_text}" if input_text else "")


def _phi3(instruction: str, input_text: str) -> str:
    return f"<|user|>\n{instruction}" + (f"\n{input_text}" if input_text else "")


PROMPT_STYLES: dict[str, PromptStyle] = {}


def register_prompt_style(style: PromptStyle) -> PromptStyle:
    """Add ``style`` to the registry (``data.prompt_style=<style.name>`` then chooses it)."""
    PROMPT_STYLES[style.name] = style
    return style


register_prompt_style(
    PromptStyle("alpaca", _alpaca, "\n\n### Response:\n", "### Response:", "the book's Alpaca prompt (chapter 7)")
)
register_prompt_style(
    PromptStyle("phi3", _phi3, "\n<|assistant|>:\n", "<|assistant|>:", "Phi-3's chat layout (exercise 7.1)")
)


def get_prompt_style(name: str | PromptStyle, key: str = "data.prompt_style") -> PromptStyle:
    """The registered style called ``name``; a ``PromptStyleError`` naming ``key`` and the choices otherwise."""
    if isinstance(name, PromptStyle):
        return name
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise PromptStyleError(
            f"{key}={name} is not a prompt style; choose one of {', '.join(sorted(PROMPT_STYLES))}"
        ) from None


def format_prompt(entry: Mapping[str, Any], style: str | PromptStyle = "alpaca") -> str:
    """The prompt of ``entry`` (instruction, and input when not empty): the book's ``format_input``."""
    return get_prompt_style(style).prompt(entry["instruction"], entry.get("input") or "")


def format_response(entry: Mapping[str, Any], style: str | PromptStyle = "alpaca") -> str:
    """The text that follows the prompt in training: the response marker and ``entry["output"]``."""
    return get_prompt_style(style).response_prefix + entry["output"]


def format_example(entry: Mapping[str, Any], style: str | PromptStyle = "alpaca") -> str:
    """Prompt and response together: the training text of ``entry`` (the book's ``full_text``)."""
    return format_prompt(entry, style) + format_response(entry, style)


def extract_response(generated: str, prompt: str, style: str | PromptStyle = "alpaca") -> str:
    """The book's extraction: ``generated`` after ``prompt``, the response marker removed, stripped."""
    marker = get_prompt_style(style).response_marker
    return generated[len(prompt) :].replace(marker, "").strip()
