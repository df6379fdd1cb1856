"""An instruction-tuned model's answers: the book's generation and response extraction (chapter 7)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken
import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import input_path
from gpt_lab.errors import InitFromError, UserError
from gpt_lab.generation.chat import stop_ids
from gpt_lab.generation.prompt_styles import (
    PROMPT_STYLES,
    PromptStyleError,
    extract_response,
    format_prompt,
    get_prompt_style,
)
from gpt_lab.generation.sampling import generate
from gpt_lab.model.finetuned import load_finetuned
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.hf_families import CHAT_STYLES
from gpt_lab.model.hf_files import family_directory, read_config
from gpt_lab.model.model_file import MODEL_FILE, read_meta
from gpt_lab.model.weights import build_model, require_language_model
from gpt_lab.tokenizer import encode_text

log = logging.getLogger(__name__)

BOOK_RESPONSE_TOKENS = 256  # the book's max_new_tokens for test responses (max_response_tokens: null)
RESPONSE_KEY = "model_response"  # the key the book adds to each test entry
RESPONSES_FILE = "test-responses.json"  # the test entries with their responses, in a chapter-7 run directory


def answer(
    model: GPTModel,
    tokenizer: tiktoken.Encoding,
    entry: Mapping[str, Any],
    style: str,
    max_new_tokens: int = BOOK_RESPONSE_TOKENS,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The model's answer to ``entry`` (instruction and input), the book's way, timed.

    The prompt is tokenized with special-looking text as ordinary text (as in training); generation
    is greedy unless ``temperature > 0``, stops at ``eos_id`` (None: ``stop_ids``, GPT-2's end-of-text;
    a chat family: its end-of-turn token and its end-of-sequence ids) and slides the window past the
    context. Returns ``prompt``, ``output_ids`` / ``output_text`` (prompt and continuation),
    ``response`` (the book's extraction), ``new_tokens`` and the speed.
    """
    prompt = format_prompt(entry, style)
    ids = encode_text(tokenizer, prompt)
    eos_id = stop_ids(tokenizer, style) if eos_id is None else eos_id
    device = model.tok_emb.weight.device  # not out_head.weight: a packed bf16 head would unpack a copy
    started = time.perf_counter()
    out = generate(
        model,
        torch.tensor([ids], device=device),
        max_new_tokens,
        model.context_length,
        temperature=temperature,
        top_k=top_k,
        eos_id=eos_id,
    )[0].tolist()
    seconds = time.perf_counter() - started
    text = tokenizer.decode(out)
    new_tokens = len(out) - len(ids)
    return {
        "prompt": prompt,
        "output_ids": out,
        "output_text": text,
        "response": extract_response(text, prompt, style),
        "new_tokens": new_tokens,
        "generation_seconds": seconds,
        "generation_tokens_per_second": new_tokens / seconds if seconds > 0 else float("nan"),
    }


def generate_response(
    model: GPTModel,
    tokenizer: tiktoken.Encoding,
    entry: Mapping[str, Any],
    style: str,
    max_new_tokens: int = BOOK_RESPONSE_TOKENS,
    temperature: float = 0.0,
    top_k: int | None = None,
) -> str:
    """The model's response to ``entry``: the generated text after the prompt, marker removed, stripped."""
    return answer(model, tokenizer, entry, style, max_new_tokens, temperature, top_k)["response"]


def generate_responses(
    model: GPTModel,
    tokenizer: tiktoken.Encoding,
    entries: Iterable[Mapping[str, Any]],
    style: str,
    max_new_tokens: int = BOOK_RESPONSE_TOKENS,
    temperature: float = 0.0,
    top_k: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Each entry with its answer added under ``model_response`` (the book's layout), with a progress bar."""
    from tqdm.auto import tqdm

    entries = list(entries)
    out = []
    for entry in tqdm(entries, desc="Test responses", unit="entry", disable=not progress):
        response = generate_response(model, tokenizer, entry, style, max_new_tokens, temperature, top_k)
        out.append({**entry, RESPONSE_KEY: response})
    return out


def saved_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``model.json`` saved with the weights at ``path`` (a run directory or its model.pth); None if none."""
    path = Path(path)
    return read_meta(path / MODEL_FILE if path.is_dir() else path)


def saved_prompt_style(path: str | Path) -> str | None:
    """The prompt style saved with the weights at ``path`` (a run directory or its model.pth); None if none."""
    style = (saved_meta(path) or {}).get("prompt_style")
    if style is None:
        return None
    try:
        return get_prompt_style(style, key=f"prompt_style in the model.json of {path}").name
    except PromptStyleError as err:
        raise InitFromError(str(err)) from None


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
    family = family_directory(init_from)
    # A Hugging Face directory of a chat family: the family's chat format (another one is warned below).
    saved = saved or (CHAT_STYLES[str(read_config(family)["model_type"])] if family else None)
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
    require_language_model(model.cfg, cfg.init_from, f"task={cfg.task.name}")
    return model.eval(), style
