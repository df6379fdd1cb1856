"""task=respond: answer one instruction with an instruction-tuned model, in the prompt style it learned.

``init_from`` names the fine-tuning run (its directory, or its ``model.pth``); the ``model.json``
beside the weights gives the model's size and its prompt style, so nothing is typed twice. A Hugging
Face directory of Llama 3, Qwen3 or Gemma 3 brings its config, tokenizer and chat format. Other
weights without one (a book ``model.pth``, GPT-2's files) are built with ``model=...`` and need
``prompt_style=...``. The answer is the book's: greedy unless ``temperature > 0``, at most
``max_response_tokens`` new tokens, stopping at end-of-text, the text after the prompt stripped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.chat import stop_ids
from gpt_lab.generation.responses import BOOK_RESPONSE_TOKENS, answer, load_instruction_model
from gpt_lab.generation.weights import check_weights_device, use_weights
from gpt_lab.hf_tokenizer import tokenizer_for
from gpt_lab.model.stats import model_report

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Answer ``cfg.instruction`` (with ``cfg.input``); print the response; return the results.json fields."""
    if not cfg.instruction:
        raise UserError("task=respond needs an instruction: instruction='Rewrite the sentence using a simile.'")
    check_weights_device(cfg.generation.weights, "cpu")  # before any weight is read
    model, style = load_instruction_model(cfg)
    report = model_report(model)  # the book's counts, of the model as built
    use_weights(model, cfg.generation.weights)
    entry = {"instruction": cfg.instruction, "input": cfg.input or ""}
    torch.manual_seed(cfg.seed)  # a sampled answer (temperature > 0) depends on the seed only
    tokenizer = tokenizer_for(input_path(cfg, cfg.init_from), int(model.cfg["vocab_size"]))
    got = answer(
        model,
        tokenizer,
        entry,
        style,
        cfg.max_response_tokens or BOOK_RESPONSE_TOKENS,
        cfg.temperature,
        cfg.top_k,
        eos_id=stop_ids(tokenizer, style),
    )
    log.info("Prompt (%s):\n%s", style, got["prompt"])
    log.info("%s\nResponse:", "-" * 40)  # the answer below is the model's, not the prompt's end
    print(got["response"], flush=True)
    return {
        "model_config": model.cfg,
        **report,
        "generation_weights": cfg.generation.weights,
        "init_from": str(input_path(cfg, cfg.init_from)),
        "instruction": cfg.instruction,
        "input": cfg.input or "",
        "prompt_style": style,
        **got,
    }
