"""task=generate (the default): build the model, print the chapter's report, continue the prompt.

It uses the plain ``GPTModel`` (no Lightning: generation needs no Trainer, and the run starts
seconds sooner), freshly initialised or holding the weights of ``init_from``. Seeded with
``cfg.seed`` right before the model is built, as the book does, so the default run prints
chapter 4's exact output. It writes TensorBoard events (model graph, hyper-parameters,
generated text) where the configured TensorBoardLogger would.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import input_path
from gpt_lab.generation.prompts import continue_prompt, encode_prompt
from gpt_lab.generation.weights import check_weights_device, use_weights
from gpt_lab.hf_tokenizer import HFTokenizer, check_vocab, tokenizer_for
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import build_model, require_language_model
from gpt_lab.run.tensorboard import run_hparams, write_run_tensorboard

log = logging.getLogger(__name__)

# The run's settings in TensorBoard's HPARAMS tab: the model's keys and the generation settings.
HPARAM_KEYS = (
    "task",
    "model",
    "seed",
    "prompt",
    "prompts",
    "max_new_tokens",
    "temperature",
    "top_k",
    "init_from",
    "generation",
)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Continue ``cfg.prompt`` (or each of ``cfg.prompts``); returns the run's results.json fields.

    The first prompt's continuation fills ``prompt``/``output_ids``/``output_text``; with several
    prompts, ``samples`` lists every one.
    """
    init_from = input_path(cfg, cfg.init_from)
    tokenizer = tokenizer_for(init_from)  # GPT-2's, or a family directory's tokenizer.json
    prompts = list(cfg.prompts) or [cfg.prompt]
    prompt_ids = [encode_prompt(tokenizer, text) for text in prompts]
    check_weights_device(cfg.generation.weights, "cpu")  # before any weight is read
    model = build(cfg)
    if isinstance(tokenizer, HFTokenizer):
        check_vocab(tokenizer.n_vocab, int(model.cfg["vocab_size"]), init_from)
    report = model_report(model)  # the book's counts, of the model as built
    use_weights(model, cfg.generation.weights)
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
        "generation_weights": cfg.generation.weights,
        "input_ids": prompt_ids[0],
        **samples[0],
        "new_tokens": new_tokens,
        "generation_seconds": seconds,
        "generation_tokens_per_second": speed,
    }
    if len(samples) > 1:
        results["samples"] = samples
    write_run_tensorboard(
        cfg,
        model,
        torch.tensor([prompt_ids[0]]),
        hparams=run_hparams(cfg, HPARAM_KEYS),
        metrics={
            "generation/tokens_per_second": speed,
            "model/total_params": float(report["total_params"]),
            "model/size_mb": report["size_mb"],
        },
        texts={
            "generation/prompt": cfg.prompt,
            "generation/output_text": results["output_text"],
            "config": "    " + OmegaConf.to_yaml(cfg).replace("\n", "\n    "),  # indented: Markdown code
        },
    )
    return results


def build(cfg: DictConfig) -> GPTModel:
    """The run's model in eval mode: seeded with ``cfg.seed`` first (the book's weights), or ``init_from``'s."""
    torch.manual_seed(cfg.seed)
    # InitFromError (a UserError) when init_from does not fit cfg.model.
    model = build_model(OmegaConf.to_container(cfg.model), input_path(cfg, cfg.init_from))
    require_language_model(model.cfg, cfg.init_from, f"task={cfg.task.name}")
    return model.eval()


def _log_to_files(message: str) -> None:
    """Log ``message`` to the run's log file only (the terminal has it already)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
