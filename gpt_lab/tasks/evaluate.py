"""The evaluate task: loss and perplexity of the model over a text file.

The model is the run's (fresh, or ``init_from`` a trained or pretrained one). The text is cut
into the book's sliding windows of ``context_length`` tokens, ``data.stride`` apart; the loss is
the mean cross-entropy over every target token of every window, the perplexity ``exp(loss)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpt_lab.config import input_path
from gpt_lab.data.corpus import CorpusDataModule
from gpt_lab.data.text import DataError, GPTDatasetV1, packaged_text, read_text
from gpt_lab.generation.prompts import continue_prompt, encode_prompt
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import build_model
from gpt_lab.run.tensorboard import flatten_hparams, write_run_tensorboard
from gpt_lab.tokenizer import get_tokenizer, text_to_token_ids
from gpt_lab.training.loss import mean_loss

log = logging.getLogger(__name__)


def perplexity(loss: float) -> float:
    """``exp(loss)``; infinite rather than an overflow for absurd losses."""
    return math.exp(loss) if loss < 700 else math.inf


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _read_text(cfg: DictConfig) -> tuple[Path, str]:
    if not cfg.data.path:
        raise DataError("task=evaluate needs a text file: add data.path=/path/to/text.txt")
    path = packaged_text(cfg.data.path) or input_path(cfg, cfg.data.path)
    assert path is not None
    return path, read_text(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on ``cfg.data.path`` (``cfg`` validated); returns the results.json fields."""
    if cfg.data.name == "corpus":
        return _run_corpus(cfg)
    # Inputs are checked before the (possibly large) model is read.
    path, text = _read_text(cfg)
    tokenizer = get_tokenizer()
    ids = torch.tensor(text_to_token_ids(text, tokenizer), dtype=torch.long)
    if len(ids) < 2:
        raise DataError(f"data.path={cfg.data.path} holds {len(ids)} token(s); evaluation needs at least 2")
    prompt_ids = encode_prompt(tokenizer, cfg.prompt)

    torch.manual_seed(cfg.seed)
    model = build_model(OmegaConf.to_container(cfg.model), input_path(cfg, cfg.init_from))
    device = _device(cfg)
    model.to(device).eval()
    report = model_report(model)
    context_length = model.context_length

    # A text shorter than one context still gets one (shorter) window.
    max_length = min(context_length, len(ids) - 1)
    stride = cfg.data.stride or max_length
    windows = GPTDatasetV1(ids, max_length, stride)
    log.info(f"Evaluating on {path}: {len(ids):,} tokens, {len(windows):,} windows of {max_length} (stride {stride})")
    batches = DataLoader(windows, batch_size=cfg.data.batch_size, shuffle=False, drop_last=False)
    # Token-weighted: the mean over every target token, whatever the last batch's size.
    loss = mean_loss(model, tqdm(batches, desc="evaluate", unit="batch"), device)
    n_tokens = windows.target_ids.numel()
    ppl = perplexity(loss)
    log.info(f"Loss: {loss:.4f}  Perplexity: {ppl:.2f}  ({n_tokens:,} target tokens)")

    sample = continue_prompt(model, tokenizer, prompt_ids, cfg)
    log.info(sample["output_text"])

    write_run_tensorboard(
        cfg,
        model,
        windows.input_ids[:1, : min(8, max_length)].to(device),
        hparams=_hparams(cfg, model),
        metrics={"eval/loss": loss, "eval/perplexity": ppl},
        texts={"generation/prompt": cfg.prompt, "generation/output_text": sample["output_text"]},
    )
    return {
        "model_config": model.cfg,  # as built (init_from may have changed it)
        **report,
        "prompt": cfg.prompt,
        **sample,
        "data_path": str(path),
        "eval_tokens": n_tokens,
        "eval_windows": len(windows),
        "loss": loss,
        "perplexity": ppl,
    }


def _hparams(cfg: DictConfig, model: nn.Module) -> dict[str, bool | int | float | str]:
    """The model as built (after ``init_from``), the data settings and where the weights came from."""
    data = {k: cfg.data[k] for k in ("path", "batch_size", "stride")}
    return flatten_hparams({"task": "evaluate", "model": dict(model.cfg), "data": data, "init_from": cfg.init_from})


def _run_corpus(cfg: DictConfig) -> dict[str, Any]:
    """``data=corpus``: loss and perplexity over the first ``data.eval_max_batches`` batches of the val split."""
    # The prepared directory is checked before the model is read. init_from's weights fix the context
    # length, so with them the windows are counted (again) once the model is built.
    corpus = CorpusDataModule.from_config(cfg, 1 if cfg.init_from else cfg.model.context_length)
    corpus.setup("validate")
    tokenizer = get_tokenizer()
    prompt_ids = encode_prompt(tokenizer, cfg.prompt)
    torch.manual_seed(cfg.seed)
    model = build_model(OmegaConf.to_container(cfg.model), input_path(cfg, cfg.init_from))
    if model.context_length != corpus.context_length:
        corpus = CorpusDataModule.from_config(cfg, model.context_length)
        corpus.setup("validate")
    device = _device(cfg)
    model.to(device).eval()
    batches = corpus.eval_dataloader("val")
    n_windows = min(corpus.windows["val"], len(batches) * corpus.batch_size)
    log.info(f"Evaluating on {corpus.data_dir}: {n_windows:,} validation windows of {corpus.context_length}")
    loss = mean_loss(model, tqdm(batches, desc="evaluate", unit="batch"), device)
    ppl = perplexity(loss)
    log.info(f"Loss: {loss:.4f}  Perplexity: {ppl:.2f}  ({n_windows * corpus.context_length:,} target tokens)")
    sample = continue_prompt(model, tokenizer, prompt_ids, cfg)
    log.info(sample["output_text"])
    data = {k: cfg.data[k] for k in ("dir", "batch_size", "eval_max_batches")}
    write_run_tensorboard(
        cfg,
        model,
        torch.tensor([prompt_ids[: model.context_length]], device=device),
        hparams=flatten_hparams(
            {"task": "evaluate", "model": dict(model.cfg), "data": data, "init_from": cfg.init_from}
        ),
        metrics={"eval/loss": loss, "eval/perplexity": ppl},
        texts={"generation/prompt": cfg.prompt, "generation/output_text": sample["output_text"]},
    )
    return {
        "model_config": model.cfg,  # as built (init_from may have changed it)
        **model_report(model),
        "prompt": cfg.prompt,
        **sample,
        **corpus.split_sizes(),
        "eval_tokens": n_windows * corpus.context_length,
        "eval_windows": n_windows,
        "loss": loss,
        "perplexity": ppl,
    }
