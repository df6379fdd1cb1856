"""The evaluate task: loss and perplexity of the model over the run's data.

The model is the run's (fresh, or ``init_from`` a trained or pretrained one). The data module that
``data._target_`` names says what is read (its ``evaluation_data(cfg)``, checked before the model is
built): ``data=text`` cuts the whole of ``data.path`` into the book's sliding windows of
``context_length`` tokens, ``data.stride`` apart; ``data=corpus`` reads the first
``data.eval_max_batches`` batches of the prepared validation split. The loss is the mean
cross-entropy over every target token of every window, the perplexity ``exp(loss)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from gpt_lab.config import input_path
from gpt_lab.errors import ConfigError
from gpt_lab.generation.prompts import continue_prompt, encode_prompt
from gpt_lab.generation.weights import check_weights_device, use_weights
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import build_model, require_language_model
from gpt_lab.run.tensorboard import run_hparams, write_run_tensorboard
from gpt_lab.tokenizer import get_tokenizer
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


def evaluation_data(cfg: DictConfig) -> Any:
    """The data module's ``evaluation_data(cfg)``: the module is the class of ``data._target_``'s ``from_config``."""
    module = getattr(get_method(cfg.data._target_), "__self__", None)
    if not hasattr(module, "evaluation_data"):
        raise ConfigError(
            f"data={cfg.data.name} cannot be evaluated: its data module (data._target_={cfg.data._target_}) has no "
            "evaluation_data(cfg); task=evaluate reads data=text or data=corpus"
        )
    return module.evaluation_data(cfg)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on the run's data (``cfg`` validated); returns the results.json fields."""
    data = evaluation_data(cfg)  # inputs are checked before the (possibly large) model is read
    tokenizer = getattr(data, "tokenizer", None) or get_tokenizer()  # the model's (a family's tokenizer.json)
    prompt_ids = encode_prompt(tokenizer, cfg.prompt)

    device = _device(cfg)
    check_weights_device(cfg.generation.weights, device)  # before any weight is read
    torch.manual_seed(cfg.seed)
    model = build_model(OmegaConf.to_container(cfg.model), input_path(cfg, cfg.init_from))
    require_language_model(model.cfg, cfg.init_from, f"task={cfg.task.name}")
    report = model_report(model)  # the book's counts, of the model as built
    use_weights(model, cfg.generation.weights).to(device).eval()

    windows = data.windows(model.context_length)
    log.info(f"Evaluating on {windows.description}")
    # Token-weighted: the mean over every target token, whatever the last batch's size.
    loss = mean_loss(model, tqdm(windows.batches, desc="evaluate", unit="batch"), device)
    ppl = perplexity(loss)
    log.info(f"Loss: {loss:.4f}  Perplexity: {ppl:.2f}  ({windows.tokens:,} target tokens)")

    sample = continue_prompt(model, tokenizer, prompt_ids, cfg)
    log.info(sample["output_text"])
    write_run_tensorboard(
        cfg,
        model,
        torch.tensor([prompt_ids[: model.context_length]], device=device),
        # The model as built (after init_from), the data settings and where the weights came from.
        hparams=run_hparams(cfg, ["init_from"], task="evaluate", model=dict(model.cfg), data=windows.hparams),
        metrics={"eval/loss": loss, "eval/perplexity": ppl},
        texts={"generation/prompt": cfg.prompt, "generation/output_text": sample["output_text"]},
    )
    return {
        "model_config": model.cfg,  # as built (init_from may have changed it)
        **report,
        "generation_weights": cfg.generation.weights,
        "prompt": cfg.prompt,
        **sample,
        **windows.fields,
        "eval_tokens": windows.tokens,
        "eval_windows": windows.windows,
        "loss": loss,
        "perplexity": ppl,
    }
