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
from tqdm import tqdm

from gpt_lab.data import DataError, GPTDatasetV1, read_text, resolve_data_path
from gpt_lab.lit_module import mean_loss
from gpt_lab.pretrained import build_model
from gpt_lab.run_files import flatten_hparams, tensorboard_logger, write_tensorboard
from gpt_lab.stats import model_report
from gpt_lab.tasks.generate import continue_prompt, encode_prompt
from gpt_lab.tokenizer import get_tokenizer, text_to_token_ids

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
    path = resolve_data_path(cfg.data.path, cfg.paths.root_dir)  # an absolute data.path stays as it is
    return path, read_text(path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on ``cfg.data.path`` (``cfg`` validated); returns the results.json fields."""
    # Inputs are checked before the (possibly large) model is read.
    path, text = _read_text(cfg)
    tokenizer = get_tokenizer()
    ids = torch.tensor(text_to_token_ids(text, tokenizer), dtype=torch.long)
    if len(ids) < 2:
        raise DataError(f"data.path={cfg.data.path} holds {len(ids)} token(s); evaluation needs at least 2")
    prompt_ids = encode_prompt(tokenizer, cfg.prompt)

    torch.manual_seed(cfg.seed)
    init_from = Path(cfg.paths.root_dir, cfg.init_from) if cfg.init_from else None
    model = build_model(OmegaConf.to_container(cfg.model), init_from)
    device = _device(cfg)
    model.to(device).eval()
    report = model_report(model)
    context_length = model.context_length

    # A text shorter than one context still gets one (shorter) window.
    max_length = min(context_length, len(ids) - 1)
    stride = cfg.data.stride or max_length
    windows = GPTDatasetV1(ids, max_length, stride)
    inputs, targets = windows.input_ids, windows.target_ids  # (windows, max_length)
    log.info(f"Evaluating on {path}: {len(ids):,} tokens, {len(inputs):,} windows of {max_length} (stride {stride})")
    size = cfg.data.batch_size
    batches = [(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(inputs), size)]
    # Token-weighted: the mean over every target token, whatever the last batch's size.
    loss = mean_loss(model, tqdm(batches, desc="evaluate", unit="batch"), device)
    n_tokens = targets.numel()
    ppl = perplexity(loss)
    log.info(f"Loss: {loss:.4f}  Perplexity: {ppl:.2f}  ({n_tokens:,} target tokens)")

    sample = continue_prompt(model, tokenizer, prompt_ids, cfg)
    log.info(sample["output_text"])

    tensorboard = tensorboard_logger(OmegaConf.to_container(cfg.logger) if cfg.logger else None)
    if tensorboard is not None:
        log_dir, log_graph = tensorboard
        write_tensorboard(
            log_dir,
            model=model if log_graph else None,
            example_input=inputs[:1, : min(8, max_length)].to(device),
            hparams=_hparams(cfg, model),
            metrics={"eval/loss": loss, "eval/perplexity": ppl},
            texts={"generation/prompt": cfg.prompt, "generation/output_text": sample["output_text"]},
        )
        log.info(f"TensorBoard: tensorboard --logdir {log_dir}")
    return {
        **report,
        "prompt": cfg.prompt,
        **sample,
        "data_path": str(path),
        "eval_tokens": n_tokens,
        "eval_windows": len(inputs),
        "loss": loss,
        "perplexity": ppl,
    }


def _hparams(cfg: DictConfig, model: nn.Module) -> dict[str, bool | int | float | str]:
    """The model as built (after ``init_from``), the data settings and where the weights came from."""
    data = {k: cfg.data[k] for k in ("path", "batch_size", "stride")}
    return flatten_hparams({"task": "evaluate", "model": dict(model.cfg), "data": data, "init_from": cfg.init_from})
