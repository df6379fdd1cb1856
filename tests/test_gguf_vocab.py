"""GPT-2's vocabulary as a GGUF file lists it (scripts/gguf_export.py, the llama.cpp bench row), rebuilt
from tiktoken's ranks: checked against OpenAI's published ``encoder.json`` / ``vocab.bpe`` (the files
gpt_lab's tokenizer is built from, SHA-256 checked) and by encoding real text with the merges."""

from __future__ import annotations

import itertools
import json

import pytest
import regex

from gpt_lab.tokenizer import GPT2_PATTERN, bpe_files, get_tokenizer
from scripts.gguf_export import byte_to_unicode, gpt2_vocab


@pytest.fixture(scope="module")
def vocab() -> tuple[list[str], list[str], list[int]]:
    return gpt2_vocab(get_tokenizer())


def test_byte_to_unicode_is_gpt2s_table() -> None:
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    # GPT-2's well-known stand-ins: space is "Ġ" (U+0120), newline "Ċ" (U+010A), byte 0 is U+0100
    assert (table[ord(" ")], table[ord("\n")], table[0], table[ord("A")]) == ("Ġ", "Ċ", "Ā", "A")


def test_tokens_and_merges_are_openais_published_files(vocab: tuple[list[str], list[str], list[int]]) -> None:
    tokens, merges, types = vocab
    vocab_bpe, encoder_json = bpe_files()
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    assert len(tokens) == 50257 and {t: i for i, t in enumerate(tokens)} == encoder
    published = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line]
    assert len(merges) == 50000 and merges == published
    assert types[50256] == 3 and set(types[:50256]) == {1}  # <|endoftext|> CONTROL, the rest NORMAL


def test_the_merges_encode_text_as_tiktoken_does(vocab: tuple[list[str], list[str], list[int]]) -> None:
    """Byte-level BPE written out here (lowest-ranked adjacent pair first) with the rebuilt merges."""
    tokens, merges, _ = vocab
    rank = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    token_id = {t: i for i, t in enumerate(tokens)}
    table = byte_to_unicode()
    text = (
        "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no "
        "great surprise to me to hear that, in the height of his glory, he had dropped his painting, married "
        "a rich widow, and established himself in a villa on the Riviera. (Though I rather thought it would "
        'have been Rome or Florence.)\n\n"The height of his glory"--that was what the women called it. '
        "Naïve café prices: 3.50 € or 12,000¥ -- don't you'd've; tabs\tand   spaces   \n"
    )
    ids = []
    for piece in regex.findall(GPT2_PATTERN, text):
        parts = [table[b] for b in piece.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            best, i = min(pairs)
            if best == len(rank):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [token_id[p] for p in parts]
    assert ids == get_tokenizer().encode_ordinary(text)
