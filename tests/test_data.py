"""The book's sliding-window dataset and the data module's split, loaders and input checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_lab.data.text import DataError, GPTDatasetV1, TextDataModule, split_text
from gpt_lab.errors import UserError
from gpt_lab.tokenizer import get_tokenizer


def test_dataset_windows_match_hand_computed_example() -> None:
    # ids 0..9, windows of 4 every 3 tokens: starts range(0, 10 - 4, 3) = 0, 3
    ds = GPTDatasetV1(list(range(10)), max_length=4, stride=3)
    assert len(ds) == 2
    x0, y0 = ds[0]
    x1, y1 = ds[1]
    assert x0.tolist() == [0, 1, 2, 3] and y0.tolist() == [1, 2, 3, 4]
    assert x1.tolist() == [3, 4, 5, 6] and y1.tolist() == [4, 5, 6, 7]
    assert x0.dtype == torch.long


def test_dataset_needs_one_token_more_than_a_window() -> None:
    assert len(GPTDatasetV1(list(range(4)), max_length=4, stride=4)) == 0
    assert len(GPTDatasetV1(list(range(5)), max_length=4, stride=4)) == 1


def test_split_is_by_characters() -> None:
    assert split_text("abcdefghij", 0.9) == ("abcdefghi", "j")
    assert split_text("abcdefghij", 0.25) == ("ab", "cdefghij")  # int(2.5) = 2


def _write(tmp_path: Path, text: str, name: str = "text.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_datamodule_windows_and_split_of_a_text(tmp_path: Path) -> None:
    # " a" is one GPT-2 token (id 257) and " b" another (id 275): 100 chars = 50 tokens.
    text = " a b" * 25
    path = _write(tmp_path, text)
    dm = TextDataModule(path, max_length=4, batch_size=2, stride=2, train_ratio=0.8)
    dm.setup("fit")
    a, b = get_tokenizer().encode(" a b")
    # 80 characters train = 40 tokens; starts range(0, 36, 2) -> 18 windows. 20 chars val = 10 tokens -> 3 windows.
    assert (dm.n_train_tokens, dm.n_val_tokens) == (40, 10)
    assert len(dm.train_dataset) == 18 and len(dm.val_dataset) == 3
    x, y = dm.val_dataset[2]  # start 4
    assert x.tolist() == [a, b, a, b] and y.tolist() == [b, a, b, a]
    # Training: shuffled, full batches only; validation: in order, every window.
    train_batches = list(dm.train_dataloader())
    assert len(train_batches) == 9 and all(xb.shape == (2, 4) for xb, _ in train_batches)
    val_batches = list(dm.val_dataloader())
    assert [xb.shape[0] for xb, _ in val_batches] == [2, 1]
    assert dm.stride == 2


def test_train_loader_is_shuffled_with_its_own_generator(tmp_path: Path) -> None:
    tokens = get_tokenizer().decode(list(range(1000, 1100)))  # 100 distinct tokens
    path = _write(tmp_path, tokens + " end")
    dm = TextDataModule(path, max_length=2, batch_size=1, stride=2, train_ratio=0.9, seed=1)
    dm.setup()
    order = [int(x[0, 0]) for x, _ in dm.train_dataloader()]
    assert order != sorted(order)  # shuffled
    again = TextDataModule(path, max_length=2, batch_size=1, stride=2, train_ratio=0.9, seed=1)
    again.setup()
    assert [int(x[0, 0]) for x, _ in again.train_dataloader()] == order  # same seed, same order
    # The generator's state travels in checkpoints: a restored module draws the next epoch's order.
    state = dm.state_dict()
    nxt = [int(x[0, 0]) for x, _ in dm.train_dataloader()]
    again.load_state_dict(state)
    assert [int(x[0, 0]) for x, _ in again.train_dataloader()] == nxt


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    dm = TextDataModule(tmp_path / "nope.txt", max_length=4)
    with pytest.raises(UserError, match=r"data.path=.*nope.txt does not exist"):
        dm.setup()


def test_directory_and_non_utf8_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a file"):
        TextDataModule(tmp_path, max_length=4).setup()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        TextDataModule(bad, max_length=4).setup()


def test_validation_split_shorter_than_a_window_names_the_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, " a" * 100)  # 100 tokens: 90 train, 10 validation
    dm = TextDataModule(path, max_length=16)
    with pytest.raises(DataError, match=r"validation split .* has 10 tokens .* context_length=16 needs at least 17"):
        dm.setup()


def test_training_split_shorter_than_a_window_names_the_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, " a" * 10)
    with pytest.raises(DataError, match=r"training split .* has 9 tokens .* context_length=16 needs at least 17"):
        TextDataModule(path, max_length=16).setup()


def test_batch_larger_than_the_training_windows(tmp_path: Path) -> None:
    path = _write(tmp_path, " a" * 100)  # 90 training tokens, windows of 8 -> range(0, 82, 8): 11 windows
    with pytest.raises(DataError, match=r"data.batch_size=12 is larger than the 11 training windows"):
        TextDataModule(path, max_length=8, batch_size=12).setup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"stride": 0}, "data.stride=0"),
        ({"train_ratio": 1.0}, "data.train_ratio=1.0"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        TextDataModule(tmp_path / "x.txt", max_length=4, **kwargs)
