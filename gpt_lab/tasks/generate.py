"""The generate task (the default): build the model, print the chapter's report, continue the prompt.

It uses the plain ``GPTModel`` (no Lightning: generation needs no Trainer, and the run starts
seconds sooner), freshly initialised or holding the weights of ``init_from``. Seeded with
``cfg.seed`` right before the model is built, as the book does, so the default run prints
chapter 4's exact output. It writes TensorBoard events (model graph,
hyper-parameters, generated text) where the configured TensorBoardLogger would.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import UserError
from gpt_lab.generate import generate
from gpt_lab.pretrained import build_model
from gpt_lab.run_files import flatten_hparams, tensorboard_logger, write_tensorboard
from gpt_lab.stats import model_report
from gpt_lab.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Generate from ``cfg.prompt``; returns the results.json fields of DESIGN.md."""
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(cfg.prompt, allowed_special="all")
    if not prompt_ids:
        raise UserError(f"prompt={cfg.prompt!r} encodes to no tokens; give some text, e.g. prompt='Hello, I am'")

    torch.manual_seed(cfg.seed)
    init_from = Path(cfg.paths.root_dir, cfg.init_from) if cfg.init_from else None
    model = build_model(OmegaConf.to_container(cfg.model), init_from).eval()  # InitFromError is a UserError
    report = model_report(model)
    log.info(f"Total number of parameters: {report['total_params']:,}")
    log.info(f"Number of trainable parameters considering weight tying: {report['total_params_tied']:,}")
    log.info(f"Total size of the model: {report['size_mb']:.2f} MB")

    idx = torch.tensor([prompt_ids])  # (1, n_prompt)
    log.info(f"encoded: {prompt_ids}")
    started = time.perf_counter()
    out = generate(
        model,
        idx,
        cfg.max_new_tokens,
        model.context_length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
    )
    seconds = time.perf_counter() - started
    output_ids = out[0].tolist()
    n_new = len(output_ids) - len(prompt_ids)
    tokens_per_second = n_new / seconds if seconds > 0 else float("nan")
    output_text = tokenizer.decode(output_ids)
    log.info(f"Output: {output_ids}")
    log.info(f"Output length: {len(output_ids)}")
    log.info(output_text)
    log.info(f"({n_new} new tokens in {seconds:.2f} s: {tokens_per_second:.1f} tokens/s)")

    results = {
        "model_config": model.cfg,  # as built (init_from may have set qkv_bias, tie_weights, context_length)
        **report,
        "prompt": cfg.prompt,
        "input_ids": prompt_ids,
        "output_ids": output_ids,
        "output_text": output_text,
        "new_tokens": n_new,
        "generation_seconds": seconds,
        "generation_tokens_per_second": tokens_per_second,
    }
    tensorboard = tensorboard_logger(OmegaConf.to_container(cfg.logger) if cfg.logger else None)
    if tensorboard is not None:
        log_dir, log_graph = tensorboard
        write_tensorboard(
            log_dir,
            model=model if log_graph else None,
            example_input=idx,
            hparams=_hparams(cfg),
            metrics={
                "generation/tokens_per_second": tokens_per_second,
                "model/total_params": float(report["total_params"]),
                "model/size_mb": report["size_mb"],
            },
            texts={
                "generation/prompt": cfg.prompt,
                "generation/output_text": output_text,
                "config": "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "),
            },
        )
        log.info(f"TensorBoard: tensorboard --logdir {log_dir}")
    log.info(f"Run directory: {cfg.paths.output_dir}")
    return results


def _hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The run's hyper-parameters as primitives: the model's keys and the generation settings."""
    keys = ("task", "model", "seed", "prompt", "max_new_tokens", "temperature", "top_k", "init_from")
    return flatten_hparams({k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys})
