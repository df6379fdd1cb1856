"""Book-layout checkpoints move both ways with identical logits."""

from __future__ import annotations

from pathlib import Path

import torch
from configs import TINY

from gpt_lab.model.book_checkpoint import export_book_state_dict, save_book_checkpoint
from gpt_lab.model.gpt import GPTModel
from scripts.book_reference import RefGPT

BIASED = {**TINY, "qkv_bias": True}  # the biases travel too


def test_book_checkpoint_loads_with_plain_load_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(21)
    book = RefGPT(BIASED).eval()
    path = tmp_path / "model.pth"
    torch.save(book.state_dict(), path)  # as the book's readers do; includes att.mask buffers
    assert any(k.endswith("att.mask") for k in torch.load(path))
    ours = GPTModel(BIASED).eval()
    ours.load_state_dict(torch.load(path))  # strict, as the book's readers write it
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(ours(idx), book(idx), rtol=1e-5, atol=1e-5)


def test_export_loads_into_book_model_strictly(tmp_path: Path) -> None:
    torch.manual_seed(22)
    ours = GPTModel(BIASED).eval()
    path = save_book_checkpoint(ours, tmp_path / "sub" / "model.pth")
    book = RefGPT(BIASED).eval()
    book.load_state_dict(torch.load(path, weights_only=True), strict=True)
    torch.testing.assert_close(book.trf_blocks[0].att.mask, torch.triu(torch.ones(8, 8), diagonal=1))
    idx = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(book(idx), ours(idx), rtol=1e-5, atol=1e-5)


def test_tied_model_exports_both_keys() -> None:
    torch.manual_seed(23)
    tied = GPTModel({**BIASED, "tie_weights": True}).eval()
    state = export_book_state_dict(tied)
    torch.testing.assert_close(state["out_head.weight"], state["tok_emb.weight"])
    book = RefGPT(BIASED).eval()
    book.load_state_dict(state, strict=True)
    idx = torch.randint(0, 64, (1, 5))
    torch.testing.assert_close(book(idx), tied(idx), rtol=1e-5, atol=1e-5)
