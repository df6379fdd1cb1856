"""The classify task: a fine-tuned classifier's class for each text (the book's ``classify_review``).

``task=classify init_from=<a data=classification run directory, or its model.pth>`` with
``text='...'`` or ``text_file=texts.txt`` (UTF-8, one text per line) prints one line per text, its
class name and probability, and records them in results.json. From Python:
``gpt_lab.model.classifier.classify(path, texts)``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.weights import check_weights_device, use_weights
from gpt_lab.hf_tokenizer import tokenizer_for
from gpt_lab.model.classifier import classify_texts, load_classifier

log = logging.getLogger(__name__)


def _texts(cfg: DictConfig) -> list[str]:
    if not cfg.text and not cfg.text_file:
        raise UserError("task=classify needs text='some text' or text_file=texts.txt (one text per line)")
    texts = [str(cfg.text)] if cfg.text else []
    if cfg.text_file:
        path = input_path(cfg, cfg.text_file)
        assert path is not None
        if not path.is_file():
            raise UserError(f"text_file={path} is not a file; give a UTF-8 file with one text per line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"text_file={path} cannot be read as UTF-8 text ({err})") from None
        texts += [line for line in lines if line.strip()]
        if not texts:
            raise UserError(f"text_file={path} holds no text; give one text per line")
    return texts


def run(cfg: DictConfig) -> dict[str, Any]:
    """Classify ``cfg.text`` / the lines of ``cfg.text_file`` (``cfg`` validated); returns results.json fields."""
    if not cfg.init_from:
        raise UserError(
            "task=classify needs the classifier: init_from=<the run directory of a data=classification run>"
        )
    texts = _texts(cfg)
    on_gpu = torch.cuda.is_available() and str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
    check_weights_device(cfg.generation.weights, "cuda" if on_gpu else "cpu")  # before any weight is read
    model, meta = load_classifier(input_path(cfg, cfg.init_from))
    use_weights(model, cfg.generation.weights)
    if on_gpu:
        model = model.cuda()
    pooling = meta.get("pooling", "last")
    tokenizer = tokenizer_for(input_path(cfg, cfg.init_from), int(model.cfg["vocab_size"]))  # GPT-2's, or a family's
    pad_id = int(meta.get("pad_token_id", tokenizer.eot_token))
    predictions = classify_texts(
        model, texts, meta["class_names"], pooling, meta.get("max_length"), tokenizer=tokenizer, pad_token_id=pad_id
    )
    for p in predictions:
        print(f"{p['label']}\t{p['probability']:.4f}\t{p['text']}")
    return {
        "init_from": str(cfg.init_from),
        "generation_weights": cfg.generation.weights,
        "class_names": meta["class_names"],
        "pooling": pooling,
        "predictions": predictions,
    }
