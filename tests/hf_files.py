"""Small Hugging Face files for tests: a byte-level BPE ``tokenizer.json`` trained on a few lines
with the ``tokenizers`` library (as the families' tokenizers are made), with their special tokens."""

from __future__ import annotations

import json
from pathlib import Path

TEXT = [
    "Every effort moves you forward, and every day holds a lesson.",
    "Hello, I am a small model that speaks in short sentences.",
    "Rewrite the sentence using a simile. The car is very fast.",
    "Ünïcödé — 漢字 tabs\tand  spaces\n\nemoji 🙂",
]


def write_tokenizer(
    directory: Path,
    specials: list[str],
    bos: str | None = None,
    vocab_size: int = 300,
    eos_token: str | None = None,
) -> Path:
    """A byte-level BPE tokenizer.json in ``directory``; ``specials`` take ids 0, 1, ... in order.

    With ``bos``, the post-processor puts that token in front of every text (Llama 3, Gemma 3).
    With ``eos_token``, a tokenizer_config.json names it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if eos_token is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))
    return directory / "tokenizer.json"
