"""Issue 30 case 7: a resumed run's history equals the uninterrupted run's — its evaluations (results.json's
``eval_history``, the plots, TensorBoard) and its epoch ends — wherever the first part stopped: SIGTERM on an
evaluated step mid-epoch or at an epoch's end, or a finished run extended with a larger ``trainer.max_steps``.

Independent expectation: the same command run once without a stop, compared field by field (losses to the bit).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from configs import TINY_RUN, write_sms
from omegaconf import DictConfig

from gpt_lab.run.job import run_task

C6 = ("experiment=ch06", *TINY_RUN, "classifier.initial_eval_batches=1", "logger=csv")


def test_case_7_a_resume_from_an_evaluated_step_keeps_every_evaluation(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """Evaluations every 2 steps of 6, 4 batches an epoch. SIGTERM during step 2 (mid-epoch) or step 4 (the
    epoch's last) stopped before that step's evaluation and the resume (Lightning skips the evaluation of the
    step it restarts at) lost it; a run extended from max_steps=4 replayed epoch 1's end with another
    shuffle and recorded the epoch twice. Each resumed run must equal the uninterrupted one."""
    from gpt_lab.run.status import RunInterrupted

    data = write_sms(tmp_path / "sms.tsv")
    common = (*C6, f"data.path={data}", "data.batch_size=4", "trainer.val_check_interval=2")
    whole = run_task(compose_config(*common, "trainer.max_steps=6", run_dir=tmp_path / "whole"))
    assert [r["step"] for r in whole["eval_history"]] == [0, 2, 4, 6]  # step 0: the untrained model
    assert [r["step"] for r in whole["epoch_history"]] == [4, 6]
    for batch, stop in ((1, 2), (3, 4), (None, 4)):
        run = tmp_path / f"run{batch}-{stop}"
        if batch is None:  # a finished run, extended
            run_task(compose_config(*common, f"trainer.max_steps={stop}", run_dir=run))
        else:
            sigterm = ("+callbacks.signal._target_=test_long_runs.SignalAtBatch", f"+callbacks.signal.batch={batch}")
            with pytest.raises(RunInterrupted) as stopped:
                run_task(compose_config(*common, "trainer.max_steps=6", *sigterm, run_dir=run))
            assert stopped.value.step == stop
        resumed = run_task(compose_config(*common, "trainer.max_steps=6", "ckpt_path=last", run_dir=run))
        assert resumed["eval_history"] == whole["eval_history"], (batch, stop)  # every field, losses to the bit
        assert resumed["epoch_history"] == whole["epoch_history"], (batch, stop)
        for key in ("val_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
            assert resumed[key] == whole[key], (batch, stop, key)


def test_case_7_a_resume_from_a_periodic_checkpoint_on_an_evaluated_step_keeps_every_evaluation(
    compose_config: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """A crash (SIGKILL, power loss) leaves only the periodic checkpoints
    (``callbacks.model_checkpoint.every_n_train_steps``). Lightning wrote those at the step's batch end, before
    that step's evaluation, and a resume skips the evaluation of the step it restarts at: a resume from step 2
    (mid-epoch) or step 4 (the epoch's last) lost that point. The crash is simulated by a run directory holding
    only the periodic checkpoint of that step, resumed with ``ckpt_path=last``; each must equal the run that
    never stopped."""
    data = write_sms(tmp_path / "sms.tsv")
    common = (*C6, f"data.path={data}", "data.batch_size=4", "trainer.val_check_interval=2", "trainer.max_steps=6")
    periodic = ("callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.model_checkpoint.save_top_k=-1")
    whole = run_task(compose_config(*common, *periodic, run_dir=tmp_path / "whole"))
    assert [r["step"] for r in whole["eval_history"]] == [0, 2, 4, 6]  # step 0: the untrained model
    assert [r["step"] for r in whole["epoch_history"]] == [4, 6]
    written = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("epoch*.ckpt"))
    assert written == ["epoch00-step2.ckpt", "epoch00-step4.ckpt", "epoch01-step6.ckpt"]
    for name in ("epoch00-step2.ckpt", "epoch00-step4.ckpt"):
        run = tmp_path / name.removesuffix(".ckpt")
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(tmp_path / "whole" / "checkpoints" / name, run / "checkpoints" / name)  # all a crash leaves
        resumed = run_task(compose_config(*common, *periodic, "ckpt_path=last", run_dir=run))
        assert resumed["eval_history"] == whole["eval_history"], name  # every field, losses to the bit
        assert resumed["epoch_history"] == whole["epoch_history"], name
        for key in ("val_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
            assert resumed[key] == whole[key], (name, key)
