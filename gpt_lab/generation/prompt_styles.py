"""Prompt styles for instruction fine-tuning (chapter 7): how an entry becomes the text a model reads.

An entry is a mapping with ``instruction``, ``input`` (may be empty) and ``output``. A style turns
its instruction and input into the prompt (what the model is given at inference), and its output
into the response text that follows the prompt in training. After generation the response is the
text after the prompt, with the style's response marker removed and whitespace stripped (the book's
extraction). Special-looking markers such as Phi-3's ``<|user|>`` are plain text here: GPT-2's
tokenizer has no such tokens.

The chat families' styles (``llama3``, ``qwen3``, ``qwen3_nothink``, ``gemma3``) write the turns of
their own chat templates, whose markers are special tokens of those families' tokenizers: the
prompt ends with the assistant's header, the response with the end-of-turn token. The
beginning-of-text token is not part of the text: the family's tokenizer adds it (gpt_lab.hf_tokenizer).
A ``ChatFormat`` also writes a whole conversation (``format_conversation``, task=chat).

The registry is ``PROMPT_STYLES``; ``register_prompt_style`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpt_lab.errors import UserError
from gpt_lab.hf_tokenizer import CHATML_EOT, GEMMA_EOT, LLAMA3_EOT

ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


class PromptStyleError(UserError):
    """An unknown prompt style, or a model that carries none."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat template's turns: ``header(role) + content + end_of_turn + separator``.

    ``roles`` maps ``user`` / ``assistant`` to the names the template writes (Gemma 3: ``model``);
    ``generation_suffix`` follows the assistant's header when the model is asked to answer (Qwen3
    without thinking: an empty think block); ``strip`` trims each message, as Llama 3's and
    Gemma 3's templates do.
    """

    header: str  # with {role}
    end_of_turn: str
    separator: str = ""
    roles: tuple[tuple[str, str], ...] = (("user", "user"), ("assistant", "assistant"))
    generation_suffix: str = ""
    strip: bool = False

    def role_header(self, role: str) -> str:
        return self.header.format(role=dict(self.roles)[role])

    def turn(self, role: str, content: str) -> str:
        content = content.strip() if self.strip else content
        return self.role_header(role) + content + self.end_of_turn + self.separator

    def conversation(self, messages: list[tuple[str, str]]) -> str:
        """``messages`` (role, content) as text, then the assistant's header: the model answers next."""
        return "".join(self.turn(r, c) for r, c in messages) + self.role_header("assistant") + self.generation_suffix


LLAMA3_CHAT = ChatFormat("<|start_header_id|>{role}<|end_header_id|>\n\n", LLAMA3_EOT, strip=True)
QWEN3_CHAT = ChatFormat("<|im_start|>{role}\n", CHATML_EOT, "\n")
QWEN3_THINK_BLOCK = "<think>\n\n</think>\n\n"  # the empty block Qwen3's template writes to skip thinking
QWEN3_NOTHINK_CHAT = ChatFormat("<|im_start|>{role}\n", CHATML_EOT, "\n", generation_suffix=QWEN3_THINK_BLOCK)
GEMMA3_CHAT = ChatFormat(
    "<start_of_turn>{role}\n", GEMMA_EOT, "\n", roles=(("user", "user"), ("assistant", "model")), strip=True
)


@dataclass(frozen=True)
class PromptStyle:
    """``prompt(instruction, input)`` is the text a model is given; ``response_marker`` starts the answer.

    The training text of an entry is ``prompt + response_prefix + output``; ``response_marker``
    (contained in ``response_prefix``) is what the book removes from the generated text. A chat
    family's style has its ``chat`` format; the training text then ends with its end-of-turn token.
    """

    name: str
    prompt: Callable[[str, str], str]
    response_prefix: str
    response_marker: str
    description: str = ""
    chat: ChatFormat | None = None

    @property
    def end_of_turn(self) -> str:
        return self.chat.end_of_turn if self.chat else ""


def _alpaca(instruction: str, input_text: str) -> str:
    text = f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}"
    return text + (f"\n\n### Input:\n{input_text}" if input_text else "")


def _phi3(instruction: str, input_text: str) -> str:
    return f"<|user|>\n{instruction}" + (f"\n{input_text}" if input_text else "")


def _request(instruction: str, input_text: str) -> str:
    """A chat family's user message: the instruction, and the input after a blank line."""
    return instruction + (f"\n\n{input_text}" if input_text else "")


def _chat_prompt(chat: ChatFormat) -> Callable[[str, str], str]:
    return lambda instruction, input_text: chat.conversation([("user", _request(instruction, input_text))])


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


for _name, _chat, _prefix, _what in (
    ("llama3", LLAMA3_CHAT, "", "Llama 3's chat template (header tokens, <|eot_id|>)"),
    ("qwen3", QWEN3_CHAT, QWEN3_THINK_BLOCK, "Qwen3's chat template, thinking on (the model writes <think>)"),
    ("qwen3_nothink", QWEN3_NOTHINK_CHAT, "", "Qwen3's chat template with enable_thinking=False"),
    ("gemma3", GEMMA3_CHAT, "", "Gemma 3's chat template (<start_of_turn>, <end_of_turn>)"),
):
    register_prompt_style(PromptStyle(_name, _chat_prompt(_chat), _prefix, "", _what, _chat))


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
    """The text that follows the prompt in training: the response marker, ``entry["output"]`` and,
    for a chat family, its end-of-turn token."""
    chosen = get_prompt_style(style)
    return chosen.response_prefix + entry["output"] + chosen.end_of_turn


def format_example(entry: Mapping[str, Any], style: str | PromptStyle = "alpaca") -> str:
    """Prompt and response together: the training text of ``entry`` (the book's ``full_text``)."""
    return format_prompt(entry, style) + format_response(entry, style)


def extract_response(generated: str, prompt: str, style: str | PromptStyle = "alpaca") -> str:
    """The book's extraction: ``generated`` after ``prompt``, the response marker removed, stripped.

    A chat family's reply ends at its end-of-turn token, and a Qwen3 think block before the answer
    (``<think>...</think>``) is not part of it.
    """
    chosen = get_prompt_style(style)
    text = generated[len(prompt) :]
    if chosen.response_marker:
        text = text.replace(chosen.response_marker, "")
    if chosen.chat:
        text = text.split(chosen.end_of_turn, 1)[0]
        if "</think>" in text:
            text = text.split("</think>", 1)[1]
    return text.strip()


def format_conversation(exchanges: list[tuple[str, str]], message: str, style: str | PromptStyle) -> str:
    """The prompt of a multi-turn chat: past ``(user, assistant)`` exchanges, then ``message``.

    A chat family writes its template's turns; alpaca / phi3 write each exchange as a training
    example (prompt, response prefix, answer) followed by a blank line.
    """
    chosen = get_prompt_style(style)
    if chosen.chat:
        messages = [m for user, reply in exchanges for m in (("user", user), ("assistant", reply))]
        return chosen.chat.conversation([*messages, ("user", message)])
    past = "".join(format_example({"instruction": u, "output": a}, chosen) + "\n\n" for u, a in exchanges)
    return past + format_prompt({"instruction": message}, chosen) + chosen.response_prefix
