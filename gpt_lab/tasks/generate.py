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
import sys
import time
from pathlib import Path
from typing import Any

import tiktoken
import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import UserError
from gpt_lab.generate import generate_stream
from gpt_lab.model import GPTModel
from gpt_lab.pretrained import build_model
from gpt_lab.run_files import flatten_hparams, tensorboard_logger, write_tensorboard
from gpt_lab.stats import model_report
from gpt_lab.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Continue ``cfg.prompt`` (or each of ``cfg.prompts``); returns the results.json fields of DESIGN.md.

    The first prompt's continuation fills ``prompt``/``output_ids``/``output_text``; with several
    prompts, ``samples`` lists every one.
    """
    tokenizer = get_tokenizer()
    prompts = list(cfg.prompts) or [cfg.prompt]
    prompt_ids = [encode_prompt(tokenizer, text) for text in prompts]
    model = build(cfg)
    report = model_report(model)
    log.info(f"Total number of parameters: {report['total_params']:,}")
    log.info(f"Number of trainable parameters considering weight tying: {report['total_params_tied']:,}")
    log.info(f"Total size of the model: {report['size_mb']:.2f} MB")

    stream = sys.stdout.isatty() if cfg.stream is None else cfg.stream
    torch.manual_seed(cfg.seed)  # the sample depends on the seed and the prompts, not on how the model was built
    samples = []
    for text, ids in zip(prompts, prompt_ids, strict=True):
        log.info(f"encoded: {ids}")
        sample = {"prompt": text, **continue_prompt(model, tokenizer, ids, cfg, stream=stream)}
        log.info(f"Output: {sample['output_ids']}")
        log.info(f"Output length: {len(sample['output_ids'])}")
        # A streamed text is already on the terminal: the log file still gets it.
        (_log_to_files if stream else log.info)(sample["output_text"])
        samples.append(sample)
    new_tokens = sum(s["new_tokens"] for s in samples)
    seconds = sum(s["generation_seconds"] for s in samples)
    speed = new_tokens / seconds if seconds > 0 else float("nan")
    log.info(f"({new_tokens} new tokens in {seconds:.2f} s: {speed:.1f} tokens/s)")
    results = {
        "model_config": model.cfg,  # as built (init_from may have set qkv_bias, tie_weights, context_length)
        **report,
        "input_ids": prompt_ids[0],
        **samples[0],
        "new_tokens": new_tokens,
        "generation_seconds": seconds,
        "generation_tokens_per_second": speed,
    }
    if len(samples) > 1:
        results["samples"] = samples
    write_events(cfg, model, torch.tensor([prompt_ids[0]]), results)
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
    model: GPTModel,
    tokenizer: tiktoken.Encoding,
    prompt_ids: list[int],
    cfg: DictConfig,
    stream: bool = False,
) -> dict[str, Any]:
    """Continue one prompt with ``cfg``'s settings (greedy unless ``cfg.temperature > 0``), timed.

    With ``stream``, the prompt and each new piece of text are written to stdout as produced.
    """
    printer = _TextPrinter(tokenizer, prompt_ids) if stream else None
    output_ids = list(prompt_ids)
    started = time.perf_counter()
    steps = generate_stream(
        model,
        torch.tensor([prompt_ids], device=model.out_head.weight.device),  # (1, n_prompt)
        cfg.max_new_tokens,
        model.context_length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        eos_id=tokenizer.eot_token if cfg.stop_at_eos else None,
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


class _TextPrinter:
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


def _log_to_files(message: str) -> None:
    """Log ``message`` to the run's log file only (the terminal has it already)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


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
    keys = ("task", "model", "seed", "prompt", "prompts", "max_new_tokens", "temperature", "top_k", "init_from")
    return flatten_hparams({k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys})
