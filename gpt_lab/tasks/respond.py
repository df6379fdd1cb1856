"""task=respond: answer one instruction with an instruction-tuned model, in the prompt style it learned.

``init_from`` names the fine-tuning run (its directory, or its ``model.pth``); the ``model.json``
beside the weights gives the model's size and its prompt style, so nothing is typed twice. Weights
without one (a book ``model.pth``, a Hugging Face directory) are built with ``model=...`` and need
``prompt_style=...``. The answer is the book's: greedy unless ``temperature > 0``, at most
``max_response_tokens`` new tokens, stopping at end-of-text, the text after the prompt stripped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import input_path
from gpt_lab.errors import InitFromError, UserError
from gpt_lab.generation.prompt_styles import PROMPT_STYLES, PromptStyleError, get_prompt_style
from gpt_lab.generation.responses import BOOK_RESPONSE_TOKENS, answer, saved_meta, saved_prompt_style
from gpt_lab.model.finetuned import load_finetuned
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import build_model
from gpt_lab.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


def load_instruction_model(cfg: DictConfig) -> tuple[GPTModel, str]:
    """The model of ``init_from`` in eval mode and the prompt style to use (saved, or ``prompt_style``)."""
    init_from = input_path(cfg, cfg.init_from)
    if init_from is None:
        raise UserError(
            f"task={cfg.task.name} needs an instruction-tuned model: init_from=outputs/<run> (the directory of an "
            "experiment=ch07 run, or its model.pth)"
        )
    if not init_from.exists():
        raise InitFromError(f"init_from={init_from}: no such file or directory")
    saved = saved_prompt_style(init_from)
    if cfg.prompt_style is not None:
        style = get_prompt_style(cfg.prompt_style, key="prompt_style").name
        if saved is not None and saved != style:
            log.warning("prompt_style=%s replaces the style %s the model was trained with", style, saved)
    elif saved is not None:
        style = saved
    else:
        raise PromptStyleError(
            f"init_from={cfg.init_from} carries no prompt style (no model.json with one beside the weights): add "
            f"prompt_style=alpaca (the book's), or another of {', '.join(sorted(PROMPT_STYLES))}, the style the "
            "model was fine-tuned with"
        )
    meta = saved_meta(init_from)
    if meta is not None and isinstance(meta.get("model"), dict):
        model, _ = load_finetuned(init_from)  # the saved config: no model=... to repeat
    else:
        model = build_model(OmegaConf.to_container(cfg.model), init_from)
    return model.eval(), style


def run(cfg: DictConfig) -> dict[str, Any]:
    """Answer ``cfg.instruction`` (with ``cfg.input``); print the response; return the results.json fields."""
    if not cfg.instruction:
        raise UserError("task=respond needs an instruction: instruction='Rewrite the sentence using a simile.'")
    model, style = load_instruction_model(cfg)
    entry = {"instruction": cfg.instruction, "input": cfg.input or ""}
    torch.manual_seed(cfg.seed)  # a sampled answer (temperature > 0) depends on the seed only
    got = answer(
        model,
        get_tokenizer(),
        entry,
        style,
        cfg.max_response_tokens or BOOK_RESPONSE_TOKENS,
        cfg.temperature,
        cfg.top_k,
    )
    log.info("Prompt (%s):\n%s", style, got["prompt"])
    log.info("%s\nResponse:", "-" * 40)  # the answer below is the model's, not the prompt's end
    print(got["response"], flush=True)
    return {
        "model_config": model.cfg,
        **model_report(model),
        "init_from": str(input_path(cfg, cfg.init_from)),
        "instruction": cfg.instruction,
        "input": cfg.input or "",
        "prompt_style": style,
        **got,
    }
