"""Issue 29, point 5: DPO's other losses (IPO, hinge, label smoothing), reference-free, the reference's
log-probabilities computed once before training, and TRL's metric names — against formulas written out."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import test_dpo
import torch
from omegaconf import DictConfig
from test_dpo import MODEL, _batch, _written_out_logprob

from gpt_lab.config import validate_config
from gpt_lab.data.preferences import PreferenceDataset, collate_preferences
from gpt_lab.errors import ConfigError
from gpt_lab.run.job import run_task
from gpt_lab.training.dpo import DPOLitModule
from gpt_lab.training.dpo_loss import dpo_loss

files, dpo_config = test_dpo.files, test_dpo.dpo_config  # the DPO tests' tiny model, pairs and preset

# Four log-probabilities per pair: z = (pc - rc) - (pr - rr) is 1.5, -1.5 and -0.25.
PC, PR = torch.tensor([-1.0, -2.5, -2.0]), torch.tensor([-3.0, -1.0, -2.0])
RC, RR = torch.tensor([-1.5, -2.0, -2.0]), torch.tensor([-2.0, -2.0, -2.25])
Z = [1.5, -1.5, -0.25]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_with_label_smoothing_is_conservative_dpo() -> None:
    beta, eps = 0.5, 0.2
    out = dpo_loss(PC, PR, RC, RR, beta, "sigmoid", eps)
    for i, z in enumerate(Z):
        expected = -(1 - eps) * _log_sigmoid(beta * z) - eps * _log_sigmoid(-beta * z)
        assert float(out.loss[i]) == pytest.approx(expected, rel=1e-6)


def test_ipo_is_the_squared_distance_of_the_margin_from_one_over_two_beta() -> None:
    beta = 0.1
    out = dpo_loss(PC, PR, RC, RR, beta, "ipo")
    assert out.loss.tolist() == pytest.approx([(z - 1 / (2 * beta)) ** 2 for z in Z], rel=1e-6)
    # Its minimum is at z = 1 / (2 beta): the loss does not push the margin beyond it.
    at_target = dpo_loss(
        torch.tensor([5.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta, "ipo"
    )
    assert float(at_target.loss) == 0.0


def test_hinge_is_relu_of_one_minus_beta_times_the_margin() -> None:
    beta = 2.0
    out = dpo_loss(PC, PR, RC, RR, beta, "hinge")
    assert out.loss.tolist() == pytest.approx([max(0.0, 1 - beta * z) for z in Z], abs=1e-6)
    assert float(out.loss[0]) == 0.0  # beta * z = 3 > 1: no loss, no gradient


def test_trl_metrics_are_beta_scaled_rewards_and_the_policy_logps() -> None:
    beta = 0.1
    means = dpo_loss(PC, PR, RC, RR, beta).means()
    chosen = [float(a - b) for a, b in zip(PC, RC, strict=True)]
    rejected = [float(a - b) for a, b in zip(PR, RR, strict=True)]
    assert float(means["rewards/chosen"]) == pytest.approx(beta * sum(chosen) / 3)
    assert float(means["rewards/rejected"]) == pytest.approx(beta * sum(rejected) / 3)
    assert float(means["rewards/margins"]) == pytest.approx(beta * sum(Z) / 3)
    assert float(means["rewards/accuracies"]) == pytest.approx(1 / 3)  # z > 0 for one pair of three
    assert float(means["logps/chosen"]) == pytest.approx(float(PC.mean()))
    assert float(means["logps/rejected"]) == pytest.approx(float(PR.mean()))
    # The book's, beside them: not scaled by beta.
    assert float(means["reward_margin"]) == pytest.approx(sum(Z) / 3)


def _moved(lit: DPOLitModule) -> DPOLitModule:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in lit.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return lit


def test_reference_free_takes_the_reference_as_zero() -> None:
    torch.manual_seed(0)
    lit = DPOLitModule({**MODEL, "qkv_bias": False}, 1e-3, 0.0, beta=0.1, reference_free=True)
    lit.attach_reference()
    _, pairs, batch = _batch()
    out = lit.eval_metrics([batch])
    losses = []
    for pair in pairs:
        pc = _written_out_logprob(lit.model, pair.prompt, pair.chosen, "mean")
        pr = _written_out_logprob(lit.model, pair.prompt, pair.rejected, "mean")
        losses.append(-_log_sigmoid(0.1 * (pc - pr)))
    assert out["loss"] == pytest.approx(sum(losses) / 3, rel=1e-4)


class _Data:
    def __init__(self, pairs: list) -> None:
        self.datasets = {"train": PreferenceDataset(pairs[:2]), "val": PreferenceDataset(pairs[2:])}


def test_precomputed_reference_gives_the_frozen_copys_losses_without_a_reference_model() -> None:
    torch.manual_seed(0)
    frozen = DPOLitModule({**MODEL, "qkv_bias": False}, 1e-3, 0.0, beta=0.1)
    frozen.attach_reference()
    torch.manual_seed(0)
    pre = DPOLitModule({**MODEL, "qkv_bias": False}, 1e-3, 0.0, beta=0.1, precompute_reference=True)
    _, pairs, plain_batch = _batch()
    pre.precompute_reference_logprobs(_Data(pairs), batch_size=2)
    assert pre.reference is None and pre.reference_kind == "precomputed"
    batch = collate_preferences(pairs)
    assert len(batch) == 3 and batch[2].shape == (6,)
    _moved(frozen), _moved(pre)  # the same steps away from the start, in both
    assert torch.equal(frozen.model.tok_emb.weight, pre.model.tok_emb.weight)
    got, want = pre.eval_metrics([batch]), frozen.eval_metrics([plain_batch])
    assert got["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the policy moved from the reference
    for key in ("loss", "reward_margin", "rewards/chosen", "logps/rejected"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dpo.loss=kto", r"dpo.loss=kto is not a DPO loss; choose one of sigmoid, ipo, hinge"),
        ("dpo.label_smoothing=0.5", r"dpo.label_smoothing=0.5 must be in \[0, 0.5\)"),
    ],
)
def test_bad_dpo_options_are_config_errors(
    dpo_config: Callable[..., DictConfig], tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(dpo_config(tmp_path, override))
    with pytest.raises(ConfigError, match=r"applies to dpo\.loss=sigmoid only"):
        validate_config(dpo_config(tmp_path, "dpo.loss=ipo", "dpo.label_smoothing=0.1"))


def test_dpo_run_with_a_precomputed_reference_and_the_ipo_loss(
    dpo_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    out = tmp_path / "pre"
    overrides = ("dpo.precompute_reference=true", "dpo.loss=ipo", "logger=csv", "dpo.test_responses=1")
    results = run_task(dpo_config(out, *overrides))
    assert (results["dpo_reference"], results["dpo_loss"]) == ("precomputed", "ipo")
    # Before the first step the policy is the reference: z = 0, so the loss is (1 / (2 beta))^2 = 25.
    assert results["initial_val_loss"] == pytest.approx(25.0, rel=1e-6)
    assert results["initial_val_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert results["train_reward_margin"] > 0 and results["train_loss"] < 25.0
    (entry,) = json.loads((out / "test-responses.json").read_text())
    assert "model_response" in entry and "reference_response" not in entry  # no reference model to answer
    (metrics,) = list(out.rglob("metrics.csv"))
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/rewards/chosen", "train/rewards/margins", "val/rewards/accuracies", "val/logps/chosen"} <= set(
        header
    )
