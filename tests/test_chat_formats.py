"""The chat families' prompt styles against their chat templates' output, written out by hand
(Llama 3.2, Qwen3 with and without thinking, Gemma 3), and the conversation of task=chat."""

from __future__ import annotations

import pytest

from gpt_lab.generation.prompt_styles import (
    PROMPT_STYLES,
    extract_response,
    format_conversation,
    format_example,
    format_prompt,
)

ENTRY = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.", "output": "Fast."}
REQUEST = "Rewrite the sentence using a simile.\n\nThe car is very fast."

# What each template renders for [user: REQUEST] with add_generation_prompt=True (beginning-of-text
# token left to the tokenizer), and the training text's end: the answer and the end-of-turn token.
PROMPTS = {
    "llama3": (
        f"<|start_header_id|>user<|end_header_id|>\n\n{REQUEST}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "Fast.<|eot_id|>",
    ),
    "qwen3": (
        f"<|im_start|>user\n{REQUEST}<|im_end|>\n<|im_start|>assistant\n",
        "<think>\n\n</think>\n\nFast.<|im_end|>",
    ),
    "qwen3_nothink": (
        f"<|im_start|>user\n{REQUEST}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "Fast.<|im_end|>",
    ),
    "gemma3": (f"<start_of_turn>user\n{REQUEST}<end_of_turn>\n<start_of_turn>model\n", "Fast.<end_of_turn>"),
}


@pytest.mark.parametrize("style", sorted(PROMPTS))
def test_prompt_and_training_text_are_the_templates(style: str) -> None:
    prompt, answer = PROMPTS[style]
    assert format_prompt(ENTRY, style) == prompt
    assert format_example(ENTRY, style) == prompt + answer


def test_both_qwen3_styles_train_on_the_same_text() -> None:
    # Qwen3's template writes an empty think block before a final answer without reasoning either way;
    # the styles differ only in whether the prompt already holds it (thinking off) or the model writes it.
    assert format_example(ENTRY, "qwen3") == format_example(ENTRY, "qwen3_nothink")


def test_without_input_the_request_is_the_instruction() -> None:
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    assert format_prompt(entry, "gemma3") == "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    ("style", "generated", "expected"),
    [
        ("llama3", "A simile.<|eot_id|><|start_header_id|>user", "A simile."),
        ("qwen3", "<think>\nfast like what?\n</think>\n\nLike lightning.<|im_end|>\n", "Like lightning."),
        ("qwen3_nothink", " Like lightning.<|im_end|>", "Like lightning."),
        ("gemma3", "Like a bullet.<end_of_turn>\n<start_of_turn>user", "Like a bullet."),
    ],
)
def test_response_stops_at_end_of_turn_without_think_block(style: str, generated: str, expected: str) -> None:
    prompt = format_prompt(ENTRY, style)
    assert extract_response(prompt + generated, prompt, style) == expected


def test_conversation_keeps_turns_in_template_order() -> None:
    history = [("Hi", "Hello! How can I help?")]
    assert format_conversation(history, "Tell a joke.", "qwen3_nothink") == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell a joke.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert format_conversation(history, " Tell a joke. ", "llama3") == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert format_conversation(history, "Again.", "gemma3") == (
        "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nAgain.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_book_styles_are_unchanged_and_chat_in_alpaca_repeats_examples() -> None:
    assert format_example(ENTRY, "alpaca").endswith("\n\n### Input:\nThe car is very fast.\n\n### Response:\nFast.")
    assert PROMPT_STYLES["alpaca"].end_of_turn == "" and PROMPT_STYLES["phi3"].chat is None
    text = format_conversation([("Hi", "Hello.")], "Bye", "phi3")
    assert text == "<|user|>\nHi\n<|assistant|>:\nHello.\n\n<|user|>\nBye\n<|assistant|>:\n"
