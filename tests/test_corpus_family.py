"""A corpus prepared with a family's tokenizer (issue 26, point 5): ``task=prepare ... init_from=<Qwen3
directory>`` stores the ids the ``tokenizers`` library itself gives each document, then that tokenizer's
end-of-sequence id; ids beyond 16 bits are stored as uint32; a Qwen3 model trains on it; and a corpus
is refused by a model whose tokenizer it was not prepared with (either way round)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hf_files import TEXT, save_hf_model, write_tokenizer

from gpt_lab.data.corpus import CorpusDataModule
from gpt_lab.data.corpus_prepare import prepare_corpus
from gpt_lab.data.corpus_sources import CorpusError, corpus_tokenizer, token_dtype

pytest.importorskip("transformers")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
ENDOFTEXT = 0  # Qwen3 base models' end of sequence (generation_config.json below)
VOCAB = 320  # model rows; the tokenizer has 300 tokens
N_DOCS, VAL_FRACTION, SEED = 6, 0.34, 123


def _document(i: int) -> str:
    lines = random.Random(i).sample(TEXT[:3], 3)
    text = " ".join(lines * 4) + "\n"
    return text + ("She typed <|im_end|> as text.\n" if i == 2 else "")  # special-looking text stays text


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("qwen")
    save_hf_model("qwen3", directory, seed=3, vocab_size=VOCAB)
    write_tokenizer(directory, SPECIALS, vocab_size=300)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    return directory


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the sources in src/ (six documents)."""
    where = tmp_path_factory.mktemp("corpusfam")
    (where / "src").mkdir()
    for i in range(N_DOCS):
        (where / "src" / f"doc{i}.txt").write_text(_document(i), encoding="utf-8")
    return where


def library_ids(tokenizer_json: Path, text: str) -> list[int]:
    """The ``tokenizers`` library's own ids of a document, special-looking text kept as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.encode_special_tokens = True
    return tok.encode(text, add_special_tokens=False).ids


def stored_ids(split_dir: Path, dtype: np.dtype) -> list[int]:
    """Every token of a split's litdata chunks, in index order (a chunk file is a header, then its tokens)."""
    chunks = json.loads((split_dir / "index.json").read_text())["chunks"]
    ids = []
    for chunk in chunks:
        raw = (split_dir / chunk["filename"]).read_bytes()
        ids += np.frombuffer(raw[len(raw) - chunk["dim"] * dtype.itemsize :], dtype=dtype).tolist()
    return ids


def expected_streams(tokenizer_json: Path, docs: list[Path], eos: int) -> dict[str, list[int]]:
    val_idx = set(random.Random(SEED).sample(range(len(docs)), round(VAL_FRACTION * len(docs))))
    streams: dict[str, list[int]] = {"train": [], "val": []}
    for i, path in enumerate(docs):
        streams["val" if i in val_idx else "train"] += [*library_ids(tokenizer_json, path.read_text("utf-8")), eos]
    return streams


def test_token_dtype_is_uint16_while_the_largest_id_fits_16_bits() -> None:
    assert token_dtype(50257) == np.uint16  # GPT-2: unchanged
    assert token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32  # id 65536 does not fit
    assert token_dtype(151669) == np.uint32  # Qwen3's tokenizer


@pytest.fixture(scope="module")
def prepared(qwen: Path, root: Path) -> Path:
    """``task=prepare`` through the CLI with init_from=<the Qwen3 directory>, two worker processes."""
    import subprocess
    import sys

    run_py = Path(__file__).resolve().parents[1] / "scripts" / "run.py"
    args = [
        "task=prepare",
        "data=corpus",
        "data.source=src",
        "data.dir=prepared",
        f"data.val_fraction={VAL_FRACTION}",
        "data.num_workers=2",
        f"init_from={qwen}",
        "hydra.run.dir=prepare_run",
    ]
    done = subprocess.run([sys.executable, str(run_py), *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "prepared"


def test_prepare_stores_the_family_tokenizers_ids_and_end_of_sequence(qwen: Path, root: Path, prepared: Path) -> None:
    import hashlib

    meta = json.loads((prepared / "meta.json").read_text())
    sha = hashlib.sha256((qwen / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["tokenizer"] == "huggingface" and meta["tokenizer_sha256"] == sha
    assert (meta["eot_id"], meta["vocab_size"], meta["dtype"]) == (ENDOFTEXT, 300, "uint16")
    docs = sorted((root / "src").glob("*.txt"))
    streams = expected_streams(qwen / "tokenizer.json", docs, ENDOFTEXT)
    for split in ("train", "val"):
        # two workers write a contiguous share of the documents each: in index order, the documents' order
        assert stored_ids(prepared / split, np.dtype(np.uint16)) == streams[split]
        assert meta["tokens"][split] == len(streams[split])
    im_end = library_ids(qwen / "tokenizer.json", "<|im_end|>")
    assert len(im_end) > 1 and 2 not in streams["train"] + streams["val"]  # the marker's text is not id 2


def test_a_vocabulary_beyond_16_bits_is_stored_as_uint32(tmp_path: Path) -> None:
    """A word-level tokenizer.json of 70,000 words (no config.json: as a run trained from a family keeps it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    n = 70_000
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(n)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = tmp_path / "words"
    words.mkdir()
    tok.save(str(words / "tokenizer.json"))
    (words / "generation_config.json").write_text(json.dumps({"eos_token_id": n - 1}))
    (tmp_path / "src").mkdir()
    docs = []
    for d in range(N_DOCS):
        ids = random.Random(d).sample(range(1, n - 1), 80)  # about 6% of them beyond 65,535
        (tmp_path / "src" / f"doc{d}.txt").write_text(" ".join(f"w{i}" for i in ids), encoding="utf-8")
        docs.append(tmp_path / "src" / f"doc{d}.txt")
    tokenizer = corpus_tokenizer(words)
    meta = prepare_corpus("src", tmp_path / "data", tmp_path, VAL_FRACTION, SEED, num_workers=1, tokenizer=tokenizer)
    assert (meta["dtype"], meta["vocab_size"], meta["eot_id"]) == ("uint32", n, n - 1)
    streams = expected_streams(words / "tokenizer.json", docs, n - 1)
    assert max(streams["train"]) > 65535  # ids uint16 could not hold
    assert stored_ids(tmp_path / "data" / "train", np.dtype(np.uint32)) == streams["train"]
    # Read back as training windows of 17 tokens: (inputs, targets) shifted by one, the ids intact.
    dm = CorpusDataModule(str(tmp_path / "data"), 16, 2, tokenizer_identity=tokenizer.identity)
    dm.setup()
    windows = [w for x, y in dm.eval_dataloader("train") for w in zip(x.tolist(), y.tolist(), strict=True)]
    blocks = [streams["train"][i : i + 17] for i in range(0, len(streams["train"]) - 16, 17)]
    assert [x + y[-1:] for x, y in windows] == blocks


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_qwen3_trains_on_its_corpus_and_the_loss_falls_then_evaluates(
    qwen: Path, prepared: Path, tmp_path: Path, run_cli: Callable, compose_config: Callable
) -> None:
    done = run_cli(
        "task=train",
        "data=corpus",
        f"data.dir={prepared}",
        f"init_from={qwen}",
        "data.batch_size=2",
        "trainer.max_steps=15",
        "optim.lr=0.01",
        "callbacks.sample_text.max_new_tokens=2",
        "hydra.run.dir=train",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = _results(tmp_path / "train")
    assert results["status"] == "completed" and results["global_step"] == 15
    assert results["train_loss"] < results["initial_train_loss"] - 0.5
    assert results["val_loss"] < results["initial_val_loss"]
    assert results["tokens"] == json.loads((prepared / "meta.json").read_text())["tokens"]
    # task=evaluate of the trained run (which kept the family's tokenizer.json): its validation loss again.
    from gpt_lab.run.job import run_task

    cfg = compose_config("task=evaluate", "data=corpus", f"data.dir={prepared}", "init_from=train", "logger=none")
    evaluated = run_task(cfg)
    assert evaluated["status"] == "completed"
    assert evaluated["loss"] == pytest.approx(results["val_loss"], abs=1e-4)


def test_a_corpus_of_another_tokenizer_is_refused_naming_both(
    qwen: Path, root: Path, prepared: Path, tmp_path: Path, compose_config: Callable, run_cli: Callable
) -> None:
    gpt2_corpus = tmp_path / "gpt2"
    prepare_corpus(str(root / "src"), gpt2_corpus, root, VAL_FRACTION, SEED, num_workers=1)
    # GPT-2's corpus, a Qwen3 model: exit 2, one paragraph naming both tokenizers, no run files beyond it.
    done = run_cli("task=train", "data=corpus", f"data.dir={gpt2_corpus}", f"init_from={qwen}", "hydra.run.dir=r")
    assert done.returncode == 2, done.stderr[-3000:]
    message = " ".join(done.stderr.split())
    assert "prepared with tokenizer 'gpt2'" in message and f"init_from={qwen} reads tokenizer 'huggingface'" in message
    assert "Traceback" not in done.stderr
    # The Qwen3 corpus, GPT-2's tiny model (and task=evaluate): refused the same way, before any model.
    cfg = compose_config("task=evaluate", "data=corpus", f"data.dir={prepared}", "model=tiny")
    with pytest.raises(CorpusError, match=r"prepared with tokenizer 'huggingface' of .*qwen.*GPT-2 models read "):
        CorpusDataModule.from_config(cfg, 16).setup()
    # task=prepare with an init_from that does not exist: a paragraph, not GPT-2's tokenizer by default.
    from gpt_lab.tasks.prepare import run as prepare

    cfg = compose_config("task=prepare", "data=corpus", "data.source=src", "data.dir=out", "init_from=no-such-dir")
    with pytest.raises(CorpusError, match=r"init_from=no-such-dir does not exist"):
        prepare(cfg)
    assert not (tmp_path / "out").exists()


def test_a_family_with_a_beginning_of_text_token_starts_every_document_with_it(tmp_path: Path) -> None:
    """Llama 3 and Gemma 3 were pretrained on <bos> document <eos>: a corpus of theirs stores the same
    (Qwen3, without one, stores document <eos>: the test above)."""
    from gpt_lab.data.corpus_sources import corpus_tokenizer, document_tokens, use_tokenizer

    llama = tmp_path / "llama"
    save_hf_model("llama", llama, seed=3, vocab_size=VOCAB)
    specials = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>"]  # Llama 3's bos 1 / eos 2 of config.json
    write_tokenizer(llama, specials, bos="<|begin_of_text|>", vocab_size=300)
    (llama / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    doc = tmp_path / "doc.txt"
    doc.write_text(_document(1), encoding="utf-8")
    tokenizer = corpus_tokenizer(llama)
    assert tokenizer.identity["bos_id"] == 1
    use_tokenizer(tokenizer)
    try:
        ids = document_tokens(doc).tolist()
    finally:
        use_tokenizer(None)
    assert ids == [1, *library_ids(llama / "tokenizer.json", _document(1)), 2]
