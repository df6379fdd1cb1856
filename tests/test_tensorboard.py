"""The generate task's TensorBoard events, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from gpt_lab.run.job import run_task


@pytest.fixture
def events(compose_config, tmp_path: Path) -> EventAccumulator:
    run_task(compose_config("model=tiny", "max_new_tokens=3"))
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_graph_shows_the_module_hierarchy(events: EventAccumulator) -> None:
    names = [node.name for node in events.Graph().node]
    assert any("trf_blocks" in n and "att" in n and "W_query" in n for n in names)
    assert any("trf_blocks" in n and "ff" in n and "layers" in n for n in names)
    for module in ("tok_emb", "pos_emb", "final_norm", "out_head", "norm1", "drop_shortcut"):
        assert any(module in n for n in names), module
    # Two blocks in the tiny model, each its own scope.
    assert any("TransformerBlock[0]" in n for n in names) and any("TransformerBlock[1]" in n for n in names)


def test_tensorboard_holds_the_generated_text(events: EventAccumulator, tmp_path: Path) -> None:
    tags = events.Tags()["tensors"]
    assert "generation/output_text/text_summary" in tags
    text = events.Tensors("generation/output_text/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("Hello, I am")
    assert text == json.loads((tmp_path / "results.json").read_text())["output_text"]


def test_tensorboard_hparams_are_primitives(events: EventAccumulator) -> None:
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = start.hparams
    assert hp["model/emb_dim"].number_value == 32
    assert hp["model/name"].string_value == "tiny"
    assert hp["model/qkv_bias"].bool_value is False
    assert hp["prompt"].string_value == "Hello, I am"
    assert hp["top_k"].string_value == "None"
    assert events.Scalars("generation/tokens_per_second")[0].value > 0


def test_tensorboard_logger_none_writes_no_events(compose_config, tmp_path: Path) -> None:
    run_task(compose_config("model=tiny", "max_new_tokens=1", "logger=none"))
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "results.json").is_file()


TRACE_MEMORY_SCRIPT = """
import resource, sys, torch
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.tensorboard import write_tensorboard
cfg = dict(vocab_size=50257, context_length=256, emb_dim=512, n_heads=8, n_layers=8, drop_rate=0.1, qkv_bias=False)
model = GPTModel(cfg).eval()
idx = torch.tensor([[15496, 11, 314, 716]])
with torch.no_grad():
    model(idx)  # the forward pass's own peak, before the trace
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_tensorboard(sys.argv[1], model=model, example_input=idx)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024, sum(p.numel() for p in model.parameters()) * 4 / 2**20)
"""


@pytest.mark.slow
def test_tensorboard_graph_trace_adds_no_copy_of_the_weights(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", TRACE_MEMORY_SCRIPT, str(tmp_path / "tb")], capture_output=True, text=True, check=True
    )
    growth_mib, weights_mib = map(float, out.stdout.split())
    assert weights_mib > 100
    assert growth_mib < 0.25 * weights_mib, (growth_mib, weights_mib)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_scalars_sit_at_the_steps_the_log_and_results_name(compose_config, tmp_path: Path) -> None:
    """Issue 27 point 6: an evaluation after step 3 is at step 3 in TensorBoard, as in results.json and the
    plot (Lightning's own x-axis is the count of steps finished before the one that logs: 2)."""
    from configs import TINY_RUN, write_sms

    cfg = compose_config(
        "experiment=ch06",
        *TINY_RUN,
        f"data.path={write_sms(tmp_path / 'sms.tsv')}",
        "data.batch_size=4",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "classifier.initial_eval_batches=1",
        "callbacks.progress_bar=null",
        "+trainer.enable_model_summary=false",
        "logger.tensorboard.log_graph=false",
        run_dir=tmp_path / "run",
    )
    results = run_task(cfg)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    # The evaluations of results.json (step 0 is the untrained model's, before the first step).
    assert [r["step"] for r in results["eval_history"]] == [0, 3, 6]
    assert [e.step for e in acc.Scalars("val/loss")] == [0, 3, 6]
    assert [e.step for e in acc.Scalars("val/accuracy")] == [3, 6]
    # The loss of step k (1-based, as the progress line counts) is at k; so is the gradient norm of that step.
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 2, 3, 4, 5, 6]
    val = {e.step: e.value for e in acc.Scalars("val/loss")}
    for row in results["eval_history"]:
        assert val[row["step"]] == pytest.approx(row["val_loss"], rel=1e-6)
