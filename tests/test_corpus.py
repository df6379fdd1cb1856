"""task=prepare and data=corpus: exact counts, the split rule, windows, refusals, train/evaluate/resume/DDP.

Expected token streams are computed here a second way: tiktoken's ``encode_ordinary`` of each file
plus one ``<|endoftext|>``, concatenated in the documents' (sorted) order, cut into blocks of
``context_length + 1``; the validation documents are ``random.Random(seed).sample`` of the usable ones.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import validate_config
from gpt_lab.data.corpus import CorpusDataModule
from gpt_lab.data.corpus_prepare import prepare_corpus
from gpt_lab.data.corpus_sources import META_FILE
from gpt_lab.errors import ConfigError, UserError
from gpt_lab.model.gpt import GPTModel
from gpt_lab.run.job import run_task
from gpt_lab.tokenizer import get_tokenizer

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
CONTEXT = 16
BATCH = 4
EOT = 50256
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "under", "mat", "door", "and", "a", "big", "small", "red", "blue"]
# The model and run settings of the corpus runs: tiny, a few steps, no TensorBoard.
SMALL = [
    "data=corpus",
    "model=tiny",
    f"model.context_length={CONTEXT}",
    "model.emb_dim=16",
    "model.n_heads=2",
    "model.n_layers=1",
    f"data.batch_size={BATCH}",
    "logger=none",
    "callbacks.lr_monitor=null",
    "callbacks.progress_bar=null",
    "callbacks.sample_text.max_new_tokens=3",
    "+trainer.enable_model_summary=false",
    "max_new_tokens=3",
]


def _document(i: int, n_words: int = 120) -> str:
    words = random.Random(i)  # not periodic: no two windows of the corpus are alike
    return " ".join(words.choice(WORDS) for _ in range(n_words)) + ".\n"


def _write_sources(src: Path) -> list[Path]:
    """Six UTF-8 documents (one holding the literal text <|endoftext|>, one with \\r\\n line ends), a Latin-1
    file and an empty file."""
    src.mkdir(parents=True)
    docs = []
    for i in range(6):
        text = _document(i) + ("He wrote <|endoftext|> in the story.\n" if i == 2 else "")
        if i == 3:
            text = text.replace(" ", "\r\n", 5)  # Windows line ends are part of the text
        path = src / f"doc{i}.txt"
        path.write_bytes(text.encode("utf-8"))
        docs.append(path)
    (src / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (src / "empty.txt").write_bytes(b"")
    return docs


def _tokens(path: Path) -> list[int]:
    return [*get_tokenizer().encode_ordinary(path.read_bytes().decode("utf-8")), EOT]


def _blocks(stream: list[int], size: int) -> list[list[int]]:
    return [stream[i : i + size] for i in range(0, len(stream) - size + 1, size)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A prepared corpus (one worker, so each split is one chunk in document order) and its expected streams."""
    root = tmp_path_factory.mktemp("corpus")
    docs = _write_sources(root / "src")
    meta = prepare_corpus("src", root / "prepared", root, val_fraction=0.34, seed=123, num_workers=1)
    val_idx = set(random.Random(123).sample(range(6), round(0.34 * 6)))
    streams = {"train": [], "val": []}
    for i, path in enumerate(docs):
        streams["val" if i in val_idx else "train"] += _tokens(path)
    return {"root": root, "dir": root / "prepared", "meta": meta, "docs": docs, "streams": streams}


def _config(root: Path, out: Path, *overrides: str) -> DictConfig:
    paths = [f"paths.root_dir={root}", f"paths.project_dir={root}", f"paths.output_dir={out}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test_corpus"):
        return compose("config", overrides=[*SMALL, *overrides, *paths])


def _datamodule(corpus: dict[str, Any], **kwargs: Any) -> CorpusDataModule:
    dm = CorpusDataModule(str(corpus["dir"]), context_length=CONTEXT, batch_size=BATCH, **kwargs)
    dm.setup()
    return dm


def _windows(batches: Any) -> list[list[int]]:
    """Batches of (inputs, targets) → the blocks they came from (inputs + the last target)."""
    out = []
    for inputs, targets in batches:
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # targets are the inputs shifted by one
        out += torch.cat([inputs, targets[:, -1:]], dim=1).tolist()
    return out


def test_prepare_counts_documents_and_tokens_exactly(corpus: dict[str, Any]) -> None:
    meta = corpus["meta"]
    on_disk = json.loads((corpus["dir"] / META_FILE).read_text())
    assert on_disk["tokens"] == meta["tokens"]
    assert (meta["tokenizer"], meta["eot_id"]) == ("gpt2", EOT)
    assert meta["documents"] == {"train": 4, "val": 2}
    assert meta["tokens"] == {split: len(stream) for split, stream in corpus["streams"].items()}
    assert sum(meta["tokens"].values()) == sum(len(_tokens(p)) for p in corpus["docs"])
    # <|endoftext|> written in a document is ordinary text: one 50256 per document, at its end.
    all_tokens = corpus["streams"]["train"] + corpus["streams"]["val"]
    assert all_tokens.count(EOT) == 6
    skipped = {Path(s["path"]).name: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {"latin1.txt", "empty.txt"}
    assert skipped["empty.txt"] == "empty" and skipped["latin1.txt"].startswith("not UTF-8")
    assert not (corpus["dir"] / ".prepare-in-progress").exists()


def test_windows_are_slices_of_the_token_stream(corpus: dict[str, Any]) -> None:
    dm = _datamodule(corpus)
    for split in ("train", "val"):
        expected = _blocks(corpus["streams"][split], CONTEXT + 1)
        assert dm.windows[split] == len(expected)
        assert _windows(dm.eval_dataloader(split)) == expected
    # Evaluation reads at most eval_max_batches batches, from the start of the split.
    bounded = _datamodule(corpus, eval_max_batches=2).eval_dataloader("train")
    assert len(bounded) == 2
    assert _windows(bounded) == _blocks(corpus["streams"]["train"], CONTEXT + 1)[: 2 * BATCH]


def test_training_windows_are_shuffled_with_the_seed(corpus: dict[str, Any]) -> None:
    expected = _blocks(corpus["streams"]["train"], CONTEXT + 1)
    epoch = _windows(_datamodule(corpus, seed=1).train_dataloader())
    assert len(epoch) == len(expected) // BATCH * BATCH  # full batches only
    assert Counter(map(tuple, epoch)) <= Counter(map(tuple, expected))  # each window at most once
    assert epoch != expected[: len(epoch)]
    assert _windows(_datamodule(corpus, seed=1).train_dataloader()) == epoch
    assert _windows(_datamodule(corpus, seed=2).train_dataloader()) != epoch


def test_prepare_again_does_nothing_and_other_sources_refuse(corpus: dict[str, Any]) -> None:
    chunks = sorted((corpus["dir"] / "train").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in chunks]
    again = prepare_corpus("src", corpus["dir"], corpus["root"], val_fraction=0.34, seed=123, num_workers=1)
    assert again["prepared"] is False and again["tokens"] == corpus["meta"]["tokens"]
    assert [p.stat().st_mtime_ns for p in chunks] == mtimes
    with pytest.raises(UserError, match=r"data\.dir=.*another prepared corpus.*data\.overwrite=true"):
        prepare_corpus("src/doc1.txt", corpus["dir"], corpus["root"], val_fraction=0.34, seed=123)
    with pytest.raises(UserError, match=r"data\.dir=.*data\.overwrite=true"):  # other settings: another corpus
        prepare_corpus("src", corpus["dir"], corpus["root"], val_fraction=0.5, seed=123)


def test_prepare_refuses_bad_sources_and_directories(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.source=nothing/\*\.txt matches no file"):
        prepare_corpus("nothing/*.txt", tmp_path / "out", tmp_path, 0.1, 123)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match=r"data\.source=bad has no usable document"):
        prepare_corpus("bad", tmp_path / "out", tmp_path, 0.1, 123)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UserError, match=r"data\.dir=.*a-file/corpus is not writable"):
        prepare_corpus("bad", tmp_path / "a-file" / "corpus", tmp_path, 0.1, 123)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"data\.dir=.*full already holds other files \(notes\.txt\)"):
        prepare_corpus("bad", tmp_path / "full", tmp_path, 0.1, 123)


def test_single_document_validates_on_its_last_tokens_and_interrupted_prepare_leaves_no_meta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpt_lab.data.corpus_prepare as corpus_module

    doc = tmp_path / "book.txt"
    doc.write_text(_document(0, 400), encoding="utf-8")
    out = tmp_path / "out"
    real_write_split = corpus_module.write_split

    def interrupted(inputs: list[str], output_dir: Path, *args: Any, **kwargs: Any) -> tuple[int, int]:
        if output_dir.name == "val":
            raise KeyboardInterrupt
        return real_write_split(inputs, output_dir, *args, **kwargs)

    monkeypatch.setattr(corpus_module, "write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus("book.txt", out, tmp_path, 0.1, 123, num_workers=1)
    assert (out / "train").is_dir() and not (out / META_FILE).exists()
    monkeypatch.setattr(corpus_module, "write_split", real_write_split)

    meta = prepare_corpus("book.txt", out, tmp_path, 0.1, 123, num_workers=1)  # the leftovers are replaced
    tokens = _tokens(doc)
    n_val = round(0.1 * len(tokens))
    assert meta["documents"] == {"train": 1, "val": 1}
    assert meta["tokens"] == {"train": len(tokens) - n_val, "val": n_val}
    dm = CorpusDataModule(str(out), context_length=CONTEXT, batch_size=BATCH)
    dm.setup()
    assert _windows(dm.eval_dataloader("val")) == _blocks(tokens[-n_val:], CONTEXT + 1)


def test_train_and_evaluate_refuse_a_directory_without_a_usable_corpus(corpus: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.dir=.*holds no prepared corpus.*run task=prepare first"):
        run_task(_config(tmp_path, tmp_path / "r1", "task=train", f"data.dir={tmp_path}"))
    with pytest.raises(UserError, match=r"split of data\.dir=.*model\.context_length\+1=2049"):
        run_task(
            _config(corpus["root"], tmp_path / "r2", "task=evaluate", "data.dir=prepared", "model.context_length=2048")
        )
    # Another tokenizer's corpus, and a damaged chunk (copies of the prepared directory).
    other = tmp_path / "other"
    shutil.copytree(corpus["dir"], other)
    meta = json.loads((other / META_FILE).read_text())
    (other / META_FILE).write_text(json.dumps({**meta, "tokenizer": "cl100k_base"}))
    with pytest.raises(UserError, match=r"data\.dir=.*prepared with tokenizer 'cl100k_base'"):
        run_task(_config(tmp_path, tmp_path / "r3", "task=train", f"data.dir={other}"))
    damaged = tmp_path / "damaged"
    shutil.copytree(corpus["dir"], damaged)
    chunk = next((damaged / "train").glob("*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"data\.dir=.*chunk .* is damaged"):
        run_task(_config(tmp_path, tmp_path / "r4", "task=evaluate", f"data.dir={damaged}"))


def test_corpus_config_composes_and_its_keys_are_checked(compose_config: Callable) -> None:
    cfg = validate_config(compose_config("task=prepare", "data=corpus"))
    assert (cfg.task.name, cfg.data.name, cfg.data.val_fraction, cfg.data.num_workers) == (
        "prepare",
        "corpus",
        0.01,
        None,
    )
    assert cfg.trainer.limit_val_batches == cfg.data.eval_max_batches == 50  # bounded evaluation by default
    assert validate_config(compose_config()).data.name == "text"
    with pytest.raises(ConfigError, match=r"data\.val_fraction=1\.5 must be in \(0, 1\)"):
        validate_config(compose_config("data=corpus", "data.val_fraction=1.5"))
    with pytest.raises(ConfigError, match=r"data\.eval_max_batches=0 must be >= 1, or null"):
        validate_config(compose_config("data=corpus", "data.eval_max_batches=0"))


class BatchRecorder(L.Callback):
    """Appends each training batch's windows to ``path`` (one JSON line per step, per rank)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(_windows([batch])) + "\n")


def _recorded(path: Path, rank: int = 0) -> list[list[list[int]]]:
    return [json.loads(line) for line in Path(f"{path}.rank{rank}").read_text().splitlines()]


def test_train_lowers_the_loss_then_evaluate_reports_loss_and_perplexity(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "train"
    steps = 24
    results = run_task(
        _config(corpus["root"], out, "task=train", "data.dir=prepared", f"++trainer.max_steps={steps}", "optim.lr=0.02")
    )
    assert results["status"] == "completed"
    assert results["val_loss"] < results["initial_val_loss"] - 0.5
    assert results["train_loss"] < results["initial_train_loss"] - 0.5
    assert results["tokens_seen"] == steps * BATCH * CONTEXT
    assert results["data_dir"] == str(corpus["dir"])
    assert results["tokens"] == corpus["meta"]["tokens"] and results["documents"] == {"train": 4, "val": 2}

    evaluated = run_task(
        _config(
            corpus["root"], tmp_path / "eval", "task=evaluate", "data.dir=prepared", f"init_from={out / 'model.pth'}"
        )
    )
    # The loss written out: the trained weights on every validation window (fewer than eval_max_batches).
    model = GPTModel(OmegaConf.to_container(_config(corpus["root"], out).model)).eval()
    model.load_state_dict(torch.load(out / "model.pth", weights_only=True))
    blocks = torch.tensor(_blocks(corpus["streams"]["val"], CONTEXT + 1))
    with torch.no_grad():
        logits = model(blocks[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert evaluated["loss"] == pytest.approx(expected, rel=1e-5)
    assert evaluated["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert evaluated["eval_windows"] == len(blocks)


VARIANT = [
    "attention=gqa",
    "model.n_kv_heads=1",
    "window=sliding",
    "model.sliding_window=6",
    "model.sliding_pattern=1:1",
    "model.n_layers=2",
    "pos_emb=rope",
    "norm=rmsnorm",
    "ffn=swiglu",
]


def test_a_lab_variant_pretrains_on_the_corpus_and_evaluates_from_its_run_directory(
    corpus: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 25 point 4: corpus pretraining of a composed variant (GQA, sliding window shorter than the
    context, RoPE, RMSNorm, SwiGLU); evaluate rebuilds it from the run's model.json alone."""
    out = tmp_path / "train"
    results = run_task(
        _config(
            corpus["root"], out, "task=train", "data.dir=prepared", "++trainer.max_steps=24", "optim.lr=0.02", *VARIANT
        )
    )
    assert results["status"] == "completed"
    assert results["val_loss"] < results["initial_val_loss"] - 0.5
    saved = json.loads((out / "model.json").read_text())["model"]
    assert (saved["attention"], saved["window"], saved["pos_emb"], saved["ffn"]) == ("gqa", "sliding", "rope", "swiglu")

    evaluated = run_task(
        _config(corpus["root"], tmp_path / "eval", "task=evaluate", "data.dir=prepared", f"init_from={out}")
    )
    model = GPTModel(saved).eval()  # the variant, from the file a user would pass on
    model.load_state_dict(torch.load(out / "model.pth", weights_only=True))
    blocks = torch.tensor(_blocks(corpus["streams"]["val"], CONTEXT + 1))
    with torch.no_grad():
        expected = F.cross_entropy(model(blocks[:, :-1]).flatten(0, 1), blocks[:, 1:].flatten()).item()
    assert evaluated["loss"] == pytest.approx(expected, rel=1e-5)


def test_resume_mid_epoch_continues_with_the_same_batches(corpus: dict[str, Any], tmp_path: Path) -> None:
    n_batches = len(_blocks(corpus["streams"]["train"], CONTEXT + 1)) // BATCH
    assert n_batches >= 6  # step 3 is in the middle of the first epoch
    every = [
        "callbacks.model_checkpoint.every_n_epochs=null",
        "++callbacks.model_checkpoint.every_n_train_steps=3",
        "+callbacks.recorder._target_=test_corpus.BatchRecorder",
    ]

    def train(name: str, *overrides: str) -> dict:
        record = f"+callbacks.recorder.path={tmp_path / name}.batches"
        # No dropout: the weights then depend only on the batches and the optimizer's state.
        settings = ["task=train", "data.dir=prepared", "dropout=none", *every, record, *overrides]
        return run_task(_config(corpus["root"], tmp_path / name, *settings))

    train("whole", "++trainer.max_steps=5")
    checkpoint = next((tmp_path / "whole" / "checkpoints").glob("*step3*.ckpt"))
    train("resumed", "++trainer.max_steps=5", f"ckpt_path={checkpoint}")
    whole, resumed = _recorded(tmp_path / "whole.batches"), _recorded(tmp_path / "resumed.batches")
    assert len(whole) == 5 and len(resumed) == 2
    assert resumed == whole[3:]
    a = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ddp_ranks_read_different_windows(
    corpus: dict[str, Any], tmp_path: Path, run_cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the processes import BatchRecorder from here
    record = tmp_path / "ddp.batches"
    proc = run_cli(
        "task=train",
        *SMALL,
        f"data.dir={corpus['dir']}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "++trainer.max_steps=2",
        "data.eval_max_batches=1",
        "+callbacks.recorder._target_=test_corpus.BatchRecorder",
        f"+callbacks.recorder.path={record}",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = {tuple(w) for step in _recorded(record, 0) for w in step}
    rank1 = {tuple(w) for step in _recorded(record, 1) for w in step}
    assert len(rank0) == len(rank1) == 2 * BATCH
    assert not rank0 & rank1
    expected = {tuple(b) for b in _blocks(corpus["streams"]["train"], CONTEXT + 1)}
    assert rank0 | rank1 <= expected
    assert np.isfinite(json.loads((tmp_path / "run" / "results.json").read_text())["val_loss"])


# Issue 21: prepare removes only what a prepare wrote, one prepare per directory, signals, layout, faults.


def test_prepare_never_removes_train_and_val_folders_it_did_not_write(tmp_path: Path) -> None:
    _write_sources(tmp_path / "src")
    data = tmp_path / "data"
    for split in ("train", "val"):  # the common layout of a user's own dataset
        (data / split).mkdir(parents=True)
        (data / split / "part-0.txt").write_text(f"my {split} data")
    with pytest.raises(UserError, match=r"data\.dir=.*other files \(train, val\) that task=prepare did not write"):
        prepare_corpus("src", data, tmp_path, 0.34, 123, num_workers=1)
    assert (data / "train" / "part-0.txt").read_text() == "my train data"
    assert (data / "val" / "part-0.txt").read_text() == "my val data"
    assert sorted(p.name for p in data.iterdir()) == ["train", "val"]


def test_a_second_prepare_is_refused_while_another_holds_the_directory(tmp_path: Path) -> None:
    import subprocess
    import sys

    _write_sources(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    # Another process holds the directory's lock (as a running prepare does), then is SIGKILLed.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(data),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=r"data\.dir=.* is being written by another task=prepare"):
            prepare_corpus("src", data, tmp_path, 0.34, 123, num_workers=1)
        assert list(data.iterdir()) == []  # the refused prepare wrote nothing
    finally:
        holder.kill()
        holder.wait()
    meta = prepare_corpus("src", data, tmp_path, 0.34, 123, num_workers=1)  # the OS released the dead one's lock
    assert meta["prepared"] is True and (data / META_FILE).is_file()


def _chunk_layout(data_dir: Path) -> dict[str, Any]:
    """Every split's index.json chunk list and the bytes of each chunk file."""
    layout = {}
    for split in ("train", "val"):
        chunks = json.loads((data_dir / split / "index.json").read_text())["chunks"]
        layout[split] = [(c["filename"], c["dim"], (data_dir / split / c["filename"]).read_bytes()) for c in chunks]
    return layout


def test_prepare_twice_gives_the_same_chunks_whatever_the_workers_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import gpt_lab.data.corpus_sources as corpus_module

    docs = _write_sources(tmp_path / "src")
    real = corpus_module.document_tokens

    def slow_on(name: str) -> Callable[[str], np.ndarray]:
        def tokens(path: str) -> np.ndarray:
            if Path(path).name == name:  # this worker falls behind: the other one may take more documents
                time.sleep(1.0)
            return real(path)

        return tokens

    layouts = []
    for run, slow in enumerate(("doc0.txt", "doc4.txt")):
        monkeypatch.setattr(corpus_module, "document_tokens", slow_on(slow))
        prepare_corpus("src", tmp_path / f"run{run}", tmp_path, 0.34, 123, num_workers=2)
        layouts.append(_chunk_layout(tmp_path / f"run{run}"))
    assert layouts[0] == layouts[1]
    assert len(layouts[0]["train"]) == 2  # two workers, one chunk each: the documents really were shared
    # Read in index order, the chunks hold the training documents in their (sorted) order.
    val_idx = set(random.Random(123).sample(range(6), 2))
    expected = [t for i, p in enumerate(docs) if i not in val_idx for t in _tokens(p)]
    # (a chunk file is litdata's header, then its `dim` tokens)
    stored = [t for _, dim, raw in layouts[0]["train"] for t in np.frombuffer(raw, dtype=np.uint16)[-dim:].tolist()]
    assert stored == expected


def test_prepare_of_sources_that_change_meanwhile_fails_with_a_paragraph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpt_lab.data.corpus_sources as corpus_module

    docs = _write_sources(tmp_path / "src")
    real = corpus_module.document_tokens

    def editing(path: str) -> np.ndarray:
        with open(docs[1], "ab") as f:  # someone appends to a source while the workers read
            f.write(b"\xff more")
        return real(path)

    monkeypatch.setattr(corpus_module, "document_tokens", editing)
    with pytest.raises(UserError, match=r"data\.source=src changed while task=prepare read it \(.*doc1\.txt\)"):
        prepare_corpus("src", tmp_path / "data", tmp_path, 0.34, 123, num_workers=2)
    assert not (tmp_path / "data" / META_FILE).exists()
    monkeypatch.setattr(corpus_module, "document_tokens", real)
    docs[1].write_text(_document(1), encoding="utf-8")
    assert prepare_corpus("src", tmp_path / "data", tmp_path, 0.34, 123, num_workers=2)["prepared"] is True


def test_prepare_on_a_full_disk_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from litdata.streaming.writer import BinaryWriter

    from gpt_lab.storage import StorageError

    _write_sources(tmp_path / "src")

    def disk_full(self: Any, *args: Any, **kwargs: Any) -> None:  # what a chunk write meets on a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(BinaryWriter, "write_chunk", disk_full)  # the workers are forked: they inherit it
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 4096))
    with pytest.raises(StorageError, match=r"task=prepare could not write .*the disk is full") as err:
        prepare_corpus("src", tmp_path / "data", tmp_path, 0.34, 123, num_workers=1)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert not (tmp_path / "data" / META_FILE).exists()


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc: parent ids)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running or sleeping: a process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
@pytest.mark.parametrize("signum", ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow), "SIGKILL"])
def test_prepare_stopped_by_a_signal_reports_it_and_leaves_no_process(tmp_path: Path, signum: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group), SIGTERM, SIGKILL while litdata's workers tokenize."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _write_sources(tmp_path / "src")
    busy = tmp_path / "busy"
    busy.mkdir()
    # The CLI, with every document taking a minute to tokenize (the workers are forked: they inherit it).
    hook = (
        "import os, runpy, sys, time\n"
        "import gpt_lab.data.corpus_sources as cp\n"
        "def slow(path):\n"
        f"    open(os.path.join({str(busy)!r}, str(os.getpid())), 'w').close()\n"
        "    time.sleep(60)\n"
        "sys.argv = sys.argv[1:]\n"
        "cp.document_tokens = slow\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    run_py = Path(__file__).resolve().parents[1] / "scripts" / "run.py"
    args = [
        "task=prepare",
        "data=corpus",
        "data.source=src",
        "data.dir=data",
        "data.num_workers=2",
        "hydra.run.dir=run",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", hook, str(run_py), *args],
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as a shell gives a command
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(busy.iterdir())) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None and len(list(busy.iterdir())) == 2, proc.stderr.read() if proc.poll() else ""
        started = _descendants(proc.pid)
        assert {int(p.name) for p in busy.iterdir()} <= started  # the two workers tokenizing
        if signum == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal sends
        else:
            os.kill(proc.pid, getattr(signal, signum))
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if _alive(pid)], "processes left behind"
    assert not (tmp_path / "data" / META_FILE).exists()
    if signum == "SIGKILL":
        return  # nothing can record a SIGKILL; no worker outlives the prepare
    assert proc.returncode == 128 + getattr(signal, signum), stderr[-2000:]
    assert f"interrupted by {signum}" in stderr and "Traceback" not in stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (results["status"], results["signal"]) == ("interrupted", signum)


def test_resume_refuses_other_data_or_other_batches_with_a_paragraph(corpus: dict[str, Any], tmp_path: Path) -> None:
    """Issue 21 case 4 and its tracebacks: a checkpoint resumes only on its data, in its batch size."""
    every = ["callbacks.model_checkpoint.every_n_epochs=null", "++callbacks.model_checkpoint.every_n_train_steps=2"]
    base = ["task=train", "dropout=none", "++trainer.max_steps=2", "callbacks.sample_text=null", *every]
    run_task(_config(corpus["root"], tmp_path / "corpus_run", *base, "data.dir=prepared"))
    corpus_ckpt = next((tmp_path / "corpus_run" / "checkpoints").glob("*step2*.ckpt"))
    story = tmp_path / "story.txt"
    story.write_text(" ".join(_document(i, 200) for i in range(3)), encoding="utf-8")
    text = [*base, "data=text", f"data.path={story}", "data.batch_size=2"]
    run_task(_config(tmp_path, tmp_path / "text_run", *text))
    text_ckpt = next((tmp_path / "text_run" / "checkpoints").glob("*step2*.ckpt"))
    other_dir = tmp_path / "copy"
    shutil.copytree(corpus["dir"], other_dir)

    def refused(*overrides: str) -> str:
        with pytest.raises(UserError) as err:
            run_task(_config(corpus["root"], tmp_path / f"r{len(list(tmp_path.iterdir()))}", *base, *overrides))
        assert "\n" not in str(err.value)
        return str(err.value)

    message = refused("data.dir=prepared", "data.batch_size=2", f"ckpt_path={corpus_ckpt}")
    assert f"trained with data.batch_size={BATCH}, and this run asks for data.batch_size=2" in message
    assert f"Resume with data.batch_size={BATCH}" in message and f"init_from={corpus_ckpt}" in message
    message = refused(f"data.dir={other_dir}", f"ckpt_path={corpus_ckpt}")
    assert f"trained on data.dir={corpus['dir']}, and this run reads data.dir={other_dir}" in message
    message = refused("data=text", f"data.path={story}", "data.batch_size=2", f"ckpt_path={corpus_ckpt}")
    assert f"trained with data=corpus data.dir={corpus['dir']}, and this run reads data=text" in message
    message = refused("data.dir=prepared", f"ckpt_path={text_ckpt}")  # was KeyError: 'current_epoch'
    assert f"trained with data=text data.path={story}, and this run reads data=corpus" in message
    message = refused("data=text", f"data.path={story}", "data.batch_size=3", f"ckpt_path={text_ckpt}")
    assert "trained with data.batch_size=2, and this run asks for data.batch_size=3" in message


class RemoveDirectory(L.Callback):
    """Deletes ``path`` after the first training step (a corpus removed under a running job)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 1:
            shutil.rmtree(self.path)


def test_training_on_a_corpus_removed_meanwhile_fails_with_a_paragraph(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):  # long documents: two chunks of many batches each
        (src / f"doc{i}.txt").write_text(_document(i, 1500), encoding="utf-8")
    prepare_corpus("src", tmp_path / "data", tmp_path, 0.34, 123, num_workers=2)
    remove = ["+callbacks.remove._target_=test_corpus.RemoveDirectory", f"+callbacks.remove.path={tmp_path / 'data'}"]
    cfg = _config(tmp_path, tmp_path / "run", "task=train", "data.dir=data", "++trainer.max_steps=500", *remove)
    with pytest.raises(UserError, match=r"data\.dir=.*data changed while this run read it \(.* is gone\)") as err:
        run_task(cfg)
    assert "download" not in str(err.value) and "ckpt_path=last" in str(err.value)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"
