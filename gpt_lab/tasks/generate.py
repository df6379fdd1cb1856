"""The generate task (the default): build the model, print the chapter's report, continue the prompt.

It uses the plain ``GPTModel`` (no Lightning: generation needs no Trainer, and the run starts
seconds sooner), freshly initialised or holding the weights of ``init_from``. Seeded with
``cfg.seed`` right before the model is built, as the book does, so the default run prints
chapter 4's exact output. It writes TensorBoard events (model graph, hyper-parameters,
generated text) where the configured TensorBoardLogger would.

The steps (``encode_prompt``, ``build``, ``continue_prompt``, ``write_events``) are separate so
that several prompts, streaming or other reports can reuse them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import tiktoken
import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import UserError
from gpt_lab.generate import generate
from gpt_lab.model import GPTModel
from gpt_lab.pretrained import build_model
from gpt_lab.run_files import flatten_hparams, tensorboard_logger, write_tensorboard
from gpt_lab.stats import model_report
from gpt_lab.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate from ``cfg.prompt``; returns the results.json fields of DESIGN.md."""
    tokenizer = get_tokenizer()
    prompt_ids = encode_prompt(tokenizer, cfg.prompt)
    model = build(cfg)
    report = model_report(model)
    log.info(f"Total number of parameters: {report['total_params']:,}")
    log.info(f"Number of trainable parameters considering weight tying: {report['total_params_tied']:,}")
    log.info(f"Total size of the model: {report['size_mb']:.2f} MB")

    log.info(f"encoded: {prompt_ids}")
    continuation = continue_prompt(model, tokenizer, prompt_ids, cfg)
    log.info(f"Output: {continuation['output_ids']}")
    log.info(f"Output length: {len(continuation['output_ids'])}")
    log.info(continuation["output_text"])
    log.info(
        f"({continuation['new_tokens']} new tokens in {continuation['generation_seconds']:.2f} s: "
        f"{continuation['generation_tokens_per_second']:.1f} tokens/s)"
    )
    results = {
        "model_config": model.cfg,  # as built (init_from may have set qkv_bias, tie_weights, context_length)
        **report,
        "prompt": cfg.prompt,
        "input_ids": prompt_ids,
        **continuation,
    }
    write_events(cfg, model, torch.tensor([prompt_ids]), results)
    log.info(f"Run directory: {cfg.paths.output_dir}")
    return results


def encode_prompt(tokenizer: tiktoken.Encoding, prompt: str) -> list[int]:
    """``prompt``'s token ids (``<|endoftext|>`` allowed); an empty encoding is a ``UserError``."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise UserError(f"prompt={prompt!r} encodes to no tokens; give some text, e.g. prompt='Hello, I am'")
    return ids


def build(cfg: DictConfig) -> GPTModel:
    """The run's model in eval mode: seeded with ``cfg.seed`` first (the book's weights), or ``init_from``'s."""
    torch.manual_seed(cfg.seed)
    init_from = Path(cfg.paths.root_dir, cfg.init_from) if cfg.init_from else None
    return build_model(OmegaConf.to_container(cfg.model), init_from).eval()  # InitFromError is a UserError


def continue_prompt(
    model: GPTModel, tokenizer: tiktoken.Encoding, prompt_ids: list[int], cfg: DictConfig
) -> dict[str, Any]:
    """Continue one prompt with ``cfg``'s settings (greedy unless ``cfg.temperature > 0``), timed."""
    started = time.perf_counter()
    out = generate(
        model,
        torch.tensor([prompt_ids]),  # (1, n_prompt)
        cfg.max_new_tokens,
        model.context_length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
    )
    seconds = time.perf_counter() - started
    output_ids = out[0].tolist()
    new_tokens = len(output_ids) - len(prompt_ids)
    return {
        "output_ids": output_ids,
        "output_text": tokenizer.decode(output_ids),
        "new_tokens": new_tokens,
        "generation_seconds": seconds,
        "generation_tokens_per_second": new_tokens / seconds if seconds > 0 else float("nan"),
    }


def write_events(cfg: DictConfig, model: GPTModel, example_input: torch.Tensor, results: dict[str, Any]) -> None:
    """TensorBoard events where ``cfg.logger``'s TensorBoardLogger writes (none without one)."""
    tensorboard = tensorboard_logger(OmegaConf.to_container(cfg.logger) if cfg.logger else None)
    if tensorboard is None:
        return
    log_dir, log_graph = tensorboard
    write_tensorboard(
        log_dir,
        model=model if log_graph else None,
        example_input=example_input,
        hparams=_hparams(cfg),
        metrics={
            "generation/tokens_per_second": results["generation_tokens_per_second"],
            "model/total_params": float(results["total_params"]),
            "model/size_mb": results["size_mb"],
        },
        texts={
            "generation/prompt": cfg.prompt,
            "generation/output_text": results["output_text"],
            "config": "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "),  # indented: Markdown code
        },
    )
    log.info(f"TensorBoard: tensorboard --logdir {log_dir}")


def _hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The run's hyper-parameters as primitives: the model's keys and the generation settings."""
    keys = ("task", "model", "seed", "prompt", "max_new_tokens", "temperature", "top_k", "init_from")
    return flatten_hparams({k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys})
