"""Chapter 6's classifier: the output head replaced by ``Linear(emb_dim, num_classes)`` and the class
read from one position of the sequence (``classifier.pooling``).

- ``last``: the last position's logits (the book: with causal attention only the last token has
  seen the whole text);
- ``last_nonpad``: the last position that is not padding (the bonus table's "last non-padding
  position"; texts are right-padded with 50256);
- ``first``: the first position (exercise 6.3);
- ``mean``: the logits averaged over every position, padding included (the bonus script's
  ``--average_embeddings``).

``classify_texts`` is the book's ``classify_review`` for many texts at once. Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpt_lab.config import POOLINGS
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.tokenizer import ENDOFTEXT_ID, encode_text

PAD_TOKEN_ID = ENDOFTEXT_ID  # the book pads texts with <|endoftext|>


class NotAClassifierError(UserError):
    """The weights given to ``task=classify`` have no classification head."""


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Put a fresh ``Linear(emb_dim, num_classes)`` (with bias, PyTorch's default init: seed first) in
    place of ``model.out_head``, as chapter 6 does; the model's config records it."""
    head = nn.Linear(model.out_head.in_features, num_classes, device=model.out_head.weight.device)
    model.out_head = head
    model.cfg["num_classes"] = num_classes
    model.cfg["tie_weights"] = False
    return head


def last_nonpad_positions(idx: torch.Tensor, pad_token_id: int = PAD_TOKEN_ID) -> torch.Tensor:
    """(b,) index of each row's last token before its right padding (0 for an all-padding row)."""
    return ((idx != pad_token_id).sum(dim=1) - 1).clamp(min=0)


def pooled_logits(
    model: nn.Module, idx: torch.Tensor, pooling: str = "last", pad_token_id: int = PAD_TOKEN_ID
) -> torch.Tensor:
    """Token ids (b, t) → class logits (b, num_classes) read at ``pooling`` (see the module)."""
    if pooling == "last":
        return model(idx, last_only=True)[:, -1]  # the head on the last position only
    if pooling not in POOLINGS:
        raise ConfigError(f"classifier.pooling={pooling} is not a pooling; choose one of {', '.join(POOLINGS)}")
    logits = model(idx)  # (b, t, num_classes)
    if pooling == "first":
        return logits[:, 0]
    if pooling == "mean":
        return logits.mean(dim=1)
    rows = torch.arange(idx.shape[0], device=idx.device)
    return logits[rows, last_nonpad_positions(idx, pad_token_id).to(idx.device)]


def encode_for_classification(
    tokenizer: Any, text: str, max_length: int | None, context_length: int, pad_token_id: int = PAD_TOKEN_ID
) -> list[int]:
    """The book's ``classify_review`` input: tokens cut to ``min(max_length, context)``, padded to it."""
    ids = encode_text(tokenizer, text)  # "<|endoftext|>" in a text is text: 50256 is padding only
    length = min(max_length or len(ids), context_length)
    ids = ids[:length]
    return ids + [pad_token_id] * (length - len(ids))


@torch.inference_mode()
def classify_texts(
    model: nn.Module,
    texts: Sequence[str],
    class_names: Sequence[str],
    pooling: str = "last",
    max_length: int | None = None,
    batch_size: int = 8,
    tokenizer: Any = None,
    pad_token_id: int = PAD_TOKEN_ID,
) -> list[dict[str, Any]]:
    """Each text's class: ``[{"text", "label", "probability", "probabilities": {name: p}}]``.

    ``max_length``: the length the classifier was trained with (texts padded / cut to it, as the
    book's ``classify_review``); None: each text as it is (one at a time, no padding). ``tokenizer``
    and ``pad_token_id``: the model's (a family's, gpt_lab.hf_tokenizer), GPT-2's by default.
    """
    from gpt_lab.tokenizer import get_tokenizer

    tokenizer = tokenizer or get_tokenizer()
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_for_classification(tokenizer, t, max_length, model.context_length, pad_token_id) for t in texts]
    step = batch_size if max_length else 1
    out: list[dict[str, Any]] = []
    for start in range(0, len(encoded), step):
        idx = torch.tensor(encoded[start : start + step], dtype=torch.long, device=device)
        probs = torch.softmax(pooled_logits(model, idx, pooling, pad_token_id).float(), dim=-1).cpu()
        for row, text in zip(probs, texts[start : start + step], strict=True):
            best = int(row.argmax())
            out.append(
                {
                    "text": text,
                    "label": class_names[best],
                    "probability": float(row[best]),
                    "probabilities": {name: float(p) for name, p in zip(class_names, row, strict=True)},
                }
            )
    return out


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A classification run's model and its ``model.json`` (class names, pooling, max_length)."""
    from gpt_lab.model.finetuned import load_finetuned

    model, meta = load_finetuned(path)
    if model.cfg.get("num_classes") is None or not meta.get("class_names"):
        raise NotAClassifierError(
            f"init_from={path}: these weights have no classification head (kind {meta.get('kind')!r}, an output "
            f"layer of {model.out_head.out_features} tokens); give the directory of a data=classification run"
        )
    if len(meta["class_names"]) != model.cfg["num_classes"]:
        raise NotAClassifierError(
            f"init_from={path}: model.json names {len(meta['class_names'])} classes but the head has "
            f"{model.cfg['num_classes']} outputs"
        )
    return model, meta


def classify(path: str | Path, texts: str | Sequence[str]) -> list[dict[str, Any]]:
    """From Python: ``classify("outputs/.../run", ["You won a prize!"])`` → each text's class and probability."""
    model, meta = load_classifier(path)
    if isinstance(texts, str):
        texts = [texts]
    return classify_texts(model, texts, meta["class_names"], meta.get("pooling", "last"), meta.get("max_length"))
