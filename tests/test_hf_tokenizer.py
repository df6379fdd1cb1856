"""Other families' tokenizer.json through the ``tokenizers`` library: ids, special and end-of-turn
tokens, the beginning-of-text token, the checks against the model's vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_files import TEXT, write_tokenizer

from gpt_lab.errors import InitFromError
from gpt_lab.hf_tokenizer import load_hf_tokenizer

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen3's first special tokens, in its order
LLAMA = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def test_qwen_like_ids_match_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    write_tokenizer(tmp_path, CHATML, eos_token="<|im_end|>")
    ours = load_hf_tokenizer(tmp_path, vocab_size=400)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    chat = "<|im_start|>user\nHello, I am<|im_end|>\n<|im_start|>assistant\n"
    for text in [*TEXT, chat]:
        assert ours.encode(text) == theirs(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == text
    # Special tokens written in the text are the trainer's ids 0, 1, 2 (given in that order).
    assert ours.encode("<|im_start|>user<|im_end|>")[0] == 1
    assert ours.encode("<|im_start|>user<|im_end|>")[-1] == 2
    assert ours.n_vocab == theirs.vocab_size == len(theirs)
    assert ours.bos_id is None


def test_corpus_encoding_keeps_special_looking_text_plain(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, CHATML, eos_token="<|im_end|>")
    tok = load_hf_tokenizer(tmp_path)
    ids = tok.encode_ordinary("a<|im_end|>b")
    assert 2 not in ids and len(ids) > 3
    assert tok.decode(ids) == "a<|im_end|>b"
    assert tok.encode("a<|im_end|>b") != ids  # the chat path still sees the token (and the flag is restored)


def test_beginning_of_text_added_once_and_not_decoded(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    write_tokenizer(tmp_path, LLAMA, bos="<|begin_of_text|>")
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [1, 4]}))
    tok = load_hf_tokenizer(tmp_path, vocab_size=300)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    ids = tok.encode("Hello, I am")
    assert ids == theirs("Hello, I am")["input_ids"] and ids[0] == 0
    assert tok.encode("<|begin_of_text|>Hello, I am") == ids  # not twice
    assert tok.decode(ids) == "Hello, I am"
    assert tok.stop_ids == (1, 4) and tok.eot_token == 1


def test_stop_ids_from_every_file_then_end_of_turn_tokens(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    tok = load_hf_tokenizer(tmp_path)
    assert tok.stop_ids == (1, 4)  # <eos> from the file, <end_of_turn> (Gemma 3's) from the vocabulary


def test_missing_tokenizer_is_one_paragraph(tmp_path: Path) -> None:
    with pytest.raises(InitFromError, match=r"no tokenizer\.json beside the weights"):
        load_hf_tokenizer(tmp_path)


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, CHATML)
    n = load_hf_tokenizer(tmp_path).n_vocab
    load_hf_tokenizer(tmp_path, vocab_size=n)  # equal: fine; more rows than tokens (Qwen3 pads): fine
    with pytest.raises(InitFromError, match=f"holds {n} tokens but the model's vocabulary"):
        load_hf_tokenizer(tmp_path, vocab_size=n - 1)


def test_no_end_of_sequence_token_is_refused(tmp_path: Path) -> None:
    write_tokenizer(tmp_path, ["<unk>"])
    with pytest.raises(InitFromError, match="no end-of-sequence token"):
        load_hf_tokenizer(tmp_path)


def test_unreadable_tokenizer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InitFromError, match="not a readable tokenizer"):
        load_hf_tokenizer(tmp_path)


def test_entries_of_a_chat_family_keep_their_markup(tmp_path: Path) -> None:
    from gpt_lab.tokenizer import encode_text, get_tokenizer

    write_tokenizer(tmp_path, CHATML)
    tok = load_hf_tokenizer(tmp_path)
    assert encode_text(tok, "<|im_start|>user\nHi<|im_end|>")[0] == 1  # the special token, not its letters
    assert 50256 not in encode_text(get_tokenizer(), "<|endoftext|>")  # GPT-2's entries: ordinary text


def test_a_run_reads_the_tokenizer_and_stop_ids_of_its_family(tmp_path: Path) -> None:
    """A run trained from a family directory copies its tokenizer files, config.json's end-of-sequence id
    kept in front (config.json itself stays behind: the run is not the family's weights)."""
    from gpt_lab.hf_tokenizer import copy_tokenizer_files, tokenizer_directory, tokenizer_for

    family = tmp_path / "family"
    write_tokenizer(family, CHATML, eos_token="<|im_end|>")
    (family / "config.json").write_text(json.dumps({"model_type": "qwen3", "eos_token_id": 1}))
    (family / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
    run = tmp_path / "run"
    copy_tokenizer_files(family, run)
    assert not (run / "config.json").exists() and tokenizer_directory(run / "model.pth") == run
    assert tokenizer_directory(run / "checkpoints" / "last.ckpt") == run
    assert tokenizer_for(run).stop_ids == tokenizer_for(family).stop_ids == (1, 0, 2)
    assert tokenizer_directory(tmp_path / "elsewhere" / "model.pth") is None  # GPT-2's
