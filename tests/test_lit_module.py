"""GPTLitModule: the book's loss, AdamW setup, generation, checkpoints that load without Hydra."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from configs import TINY
from torch.utils.data import DataLoader, TensorDataset

from gpt_lab.generation.sampling import generate_text_simple
from gpt_lab.model.stats import count_params
from gpt_lab.training.lit_module import GPTLitModule, NonFiniteLossError
from gpt_lab.training.loss import mean_loss


def _loader(n: int = 8, t: int = 8, batch_size: int = 2, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, t + 1), generator=g)
    return DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=batch_size)


def _trainer(tmp_path: Path, **kwargs: object) -> L.Trainer:
    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**defaults, **kwargs})


def test_mean_loss_is_the_books_loss_over_all_batches() -> None:
    torch.manual_seed(0)
    lit = GPTLitModule(TINY, lr=4e-4, weight_decay=0.1)
    loader = _loader(n=6)
    # The book's calc_loss_loader: mean of per-batch cross-entropies over flattened logits, eval mode.
    lit.model.eval()
    with torch.no_grad():
        expected = sum(F.cross_entropy(lit.model(x).flatten(0, 1), y.flatten()).item() for x, y in loader) / len(loader)
    lit.model.train()
    assert mean_loss(lit.model, loader) == pytest.approx(expected, rel=1e-6)
    assert lit.model.training  # mode restored


def test_optimizer_is_adamw_with_config_values_and_a_tied_weight_once() -> None:
    lit = GPTLitModule({**TINY, "tie_weights": True}, lr=1e-3, weight_decay=0.05)
    opt = lit.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.05
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params)
    assert sum(p.numel() for p in params) == count_params(lit.model)
    assert group["fused"]  # PyTorch has a fused AdamW kernel for the CPU


def test_generate_is_the_books_greedy_loop() -> None:
    torch.manual_seed(1)
    lit = GPTLitModule(TINY, lr=4e-4, weight_decay=0.1)
    idx = torch.tensor([[1, 2, 3]])
    expected = generate_text_simple(lit.model.eval(), idx, 6, TINY["context_length"])
    torch.testing.assert_close(lit.generate(idx, 6), expected)
    torch.testing.assert_close(lit.predict_step(idx, 0)[:, :9], lit.generate(idx, 6))


def test_fit_lowers_the_loss_and_checkpoint_loads_without_hydra(tmp_path: Path) -> None:
    torch.manual_seed(2)
    lit = GPTLitModule(TINY, lr=1e-2, weight_decay=0.1)
    train = _loader(n=4, batch_size=4)
    before = mean_loss(lit.model, train)
    trainer = _trainer(tmp_path, max_steps=20, enable_checkpointing=False)
    trainer.fit(lit, train_dataloaders=train, val_dataloaders=_loader(n=2, seed=1))
    after = mean_loss(lit.model, train)
    assert after < before - 1.0
    assert lit.tokens_seen == 20 * 4 * 8

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)  # plain values only: no Hydra or OmegaConf objects
    assert raw["hyper_parameters"]["model_cfg"]["emb_dim"] == 16
    assert raw["tokens_seen"] == lit.tokens_seen
    loaded = GPTLitModule.load_from_checkpoint(path)
    assert loaded.hparams.lr == 1e-2
    for key, value in lit.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_non_finite_loss_stops_training_with_the_numbers(tmp_path: Path) -> None:
    torch.manual_seed(3)
    lit = GPTLitModule(TINY, lr=float("inf"), weight_decay=0.1)
    trainer = _trainer(tmp_path, max_steps=5, enable_checkpointing=False, num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 1 .*optim.lr=inf"):
        trainer.fit(lit, train_dataloaders=_loader())
