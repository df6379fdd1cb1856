"""The sources of a corpus (``task=prepare``): which files, checked as UTF-8 documents, their
fingerprint, the validation documents drawn from ``seed``, and each document's tokens
(``encode_ordinary(text)`` then one end-of-sequence id: GPT-2's ``<|endoftext|>``, or the end of
sequence of a family's ``tokenizer.json`` when ``init_from`` names one, with that family's
beginning-of-text id in front where it has one — Llama 3's ``<|begin_of_text|>``, Gemma 3's
``<bos>``, as they were pretrained; Qwen3 has none: ``CorpusTokenizer``).
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# litdata asks PyPI for a newer version of itself unless told not to: gpt_lab never uses the network.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from gpt_lab.errors import UserError
from gpt_lab.tokenizer import ENDOFTEXT_ID, N_VOCAB, get_tokenizer

log = logging.getLogger(__name__)

META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKENIZER_NAME = "gpt2"
HF_TOKENIZER_NAME = "huggingface"  # a family's tokenizer.json; meta.json's tokenizer_sha256 says which one
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the disk of int32
WIDE_TOKEN_DTYPE = np.uint32  # Llama 3's, Qwen3's and Gemma 3's ids (vocabularies over 128,000 tokens) do not
READ_BLOCK = 16 * 2**20  # the UTF-8 check reads files in blocks (a huge file is not held in memory)
GLOB_CHARS = "*?["


class CorpusError(UserError):
    """``data.source`` / ``data.dir`` do not give a usable corpus."""


@dataclass
class SourceScan:
    """The documents of ``data.source``, checked: usable files (sorted) and the skipped ones with why."""

    documents: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    n_bytes: int = 0  # of the usable documents


def is_url(location: str) -> bool:
    """``s3://bucket/x`` and the like: a location litdata reads, not a local path."""
    return "://" in location


def find_source_files(source: str, root: str | Path) -> list[Path]:
    """The files ``data.source`` names: a file, every file under a directory, or a glob (``**`` recurses).

    Relative sources resolve against ``root`` (the directory the user ran from). Sorted, so the
    documents' order (and the split drawn from ``seed``) does not depend on the file system.
    """
    pattern = os.path.join(str(root), os.path.expanduser(source))
    if any(c in source for c in GLOB_CHARS):
        files = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(pattern):
        files = [p for p in Path(pattern).rglob("*") if p.is_file()]
    elif os.path.isfile(pattern):
        files = [Path(pattern)]
    else:
        files = []
    if not files:
        raise CorpusError(
            f"data.source={source} matches no file ({pattern}): give a text file, a directory of text files "
            "or a glob such as 'books/**/*.txt' (relative to the directory you ran from)"
        )
    return sorted({p.resolve() for p in files})


def check_document(path: Path) -> str | None:
    """Why ``path`` cannot be a document (empty, not UTF-8, unreadable), or None when it can.

    Decodes block by block with an incremental decoder, so memory stays flat for any file size.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(READ_BLOCK):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    return f"not UTF-8 (byte {offset + err.start}: {err.reason})"
                offset += len(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return f"not UTF-8 (truncated character at byte {offset + err.start})"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return "empty" if offset == 0 else None


def scan_sources(files: list[Path]) -> SourceScan:
    """Check every file once before any split is drawn (the split counts usable documents only)."""
    from tqdm import tqdm

    scan = SourceScan()
    with tqdm(files, desc="checking", unit="file", mininterval=0.5) as bar:
        for path in bar:
            problem = check_document(path)
            if problem is None:
                scan.documents.append(path)
                scan.n_bytes += path.stat().st_size
            else:
                scan.skipped.append({"path": str(path), "reason": problem})
    if scan.skipped:
        shown = "; ".join(f"{item['path']}: {item['reason']}" for item in scan.skipped[:3])
        more = f" and {len(scan.skipped) - 3} more" if len(scan.skipped) > 3 else ""
        log.info("Skipped %d file(s) (listed in meta.json): %s%s", len(scan.skipped), shown, more)
    return scan


def source_stats(files: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, modification time in ns) of every source file; (path, -1, -1) for one that is gone."""
    stats = []
    for path in files:
        try:
            st = path.stat()
            stats.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((str(path), -1, -1))
    return stats


def sources_fingerprint(stats: list[tuple[str, int, int]]) -> str:
    """SHA-256 over every source file's path, size and modification time: equal means "same sources"."""
    digest = hashlib.sha256()
    for path, size, mtime in stats:
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def choose_val_documents(n_documents: int, val_fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the validation documents: ``round(val_fraction * n)``, at least one and
    leaving at least one for training; drawn with ``random.Random(seed)``. Empty for one document
    (that document's last tokens validate instead)."""
    if n_documents < 2:
        return []
    n_val = min(n_documents - 1, max(1, round(val_fraction * n_documents)))
    return sorted(random.Random(seed).sample(range(n_documents), n_val))


def split_single_document(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """One document's tokens → (training head, validation tail): the tail is its last ``val_fraction``
    (at least one token, and at least one left for training)."""
    n_val = min(len(tokens) - 1, max(1, round(val_fraction * len(tokens))))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


def token_dtype(n_vocab: int) -> np.dtype:
    """The smallest stored type of a vocabulary's ids: uint16 while the largest id (``n_vocab - 1``)
    fits in 16 bits (GPT-2), uint32 beyond (the families')."""
    return np.dtype(TOKEN_DTYPE if n_vocab - 1 <= np.iinfo(TOKEN_DTYPE).max else WIDE_TOKEN_DTYPE)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CorpusTokenizer:
    """The tokenizer a corpus is written with (``encoding``: tiktoken's or an ``HFTokenizer``) and
    ``identity``, what meta.json records of it and what a model's corpus must match: ``tokenizer``
    ("gpt2" or "huggingface"), ``tokenizer_sha256`` (of tokenizer.json; families only), ``eot_id``,
    ``vocab_size`` and the stored ``dtype``."""

    encoding: Any
    identity: dict[str, Any]
    source: str | None = None  # the directory of tokenizer.json (None: GPT-2's)

    @property
    def eot_id(self) -> int:
        return int(self.identity["eot_id"])

    @property
    def bos_id(self) -> int | None:
        """The id each document starts with (a family's beginning-of-text token), None for none."""
        return self.identity.get("bos_id")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.identity["dtype"])

    def describe(self) -> str:
        if self.identity["tokenizer"] == TOKENIZER_NAME:
            return f"GPT-2's tokenizer (end of text {self.eot_id})"
        sha = self.identity["tokenizer_sha256"][:12]
        return f"the tokenizer.json of {self.source} (sha256 {sha}…, end of sequence {self.eot_id})"


def corpus_tokenizer(init_from: str | Path | None = None) -> CorpusTokenizer:
    """The tokenizer of the model at ``init_from`` (gpt_lab.hf_tokenizer.tokenizer_directory: a family's
    directory or a run trained from one), GPT-2's without one or for GPT-2's weights."""
    from gpt_lab.hf_tokenizer import TOKENIZER_FILE, load_hf_tokenizer, tokenizer_directory

    directory = tokenizer_directory(init_from)
    if directory is None:
        identity = {"tokenizer": TOKENIZER_NAME, "eot_id": ENDOFTEXT_ID, "vocab_size": N_VOCAB}
        return CorpusTokenizer(get_tokenizer(), {**identity, "dtype": token_dtype(N_VOCAB).name})
    encoding = load_hf_tokenizer(directory)
    identity = {
        "tokenizer": HF_TOKENIZER_NAME,
        "tokenizer_sha256": file_sha256(directory / TOKENIZER_FILE),
        "eot_id": int(encoding.eot_token),
        "vocab_size": int(encoding.n_vocab),
        "dtype": token_dtype(encoding.n_vocab).name,
    }
    if encoding.bos_id is not None:  # each document starts with it (Llama 3, Gemma 3)
        identity["bos_id"] = int(encoding.bos_id)
    return CorpusTokenizer(encoding, identity, str(directory))


# The tokenizer document_tokens uses in this process: set by TokenizeDocument in litdata's workers
# (None: GPT-2's, built once and inherited by forked workers).
_active: CorpusTokenizer | None = None


def use_tokenizer(tokenizer: CorpusTokenizer | None) -> None:
    """Make ``tokenizer`` the one ``document_tokens`` encodes with in this process (None: GPT-2's)."""
    global _active
    _active = tokenizer


def document_tokens(path: str | Path) -> np.ndarray:
    """A document's token ids: ``encode_ordinary(text) + [end of sequence]`` in the stored dtype
    (GPT-2's ``<|endoftext|>`` as uint16 unless ``use_tokenizer`` chose a family's, whose
    beginning-of-text id, if it has one, comes first)."""
    text = Path(path).read_bytes().decode("utf-8")  # as it is: no newline translation (\r\n stays)
    if _active is None:
        ids = get_tokenizer().encode_ordinary(text)
        ids.append(ENDOFTEXT_ID)
        return np.asarray(ids, dtype=TOKEN_DTYPE)
    ids = _active.encoding.encode_ordinary(text)
    if _active.bos_id is not None:
        ids.insert(0, _active.bos_id)
    ids.append(_active.eot_id)
    return np.asarray(ids, dtype=_active.dtype)


class TokenizeDocument:
    """litdata's ``fn``: a file path → its token array (run in litdata's worker processes).

    ``part`` is "all", or "head"/"tail" of a single document split by tokens; ``tokenizer`` is a
    family's (``corpus_tokenizer``) or None for GPT-2's. ``progress`` is a
    shared array (files, bytes, tokens, unreadable files) the main process reads for its progress
    bar. A file that cannot be read or decoded any more (it changed after the scan) gives no
    tokens and is counted: the prepare then fails with a paragraph instead of a worker's traceback.
    """

    def __init__(
        self, progress: Any, part: str = "all", val_fraction: float = 0.0, tokenizer: CorpusTokenizer | None = None
    ) -> None:
        self.progress = progress
        self.part = part
        self.val_fraction = val_fraction
        self.tokenizer = tokenizer  # None: GPT-2's

    def __call__(self, path: str) -> Iterator[np.ndarray]:
        use_tokenizer(self.tokenizer)  # in the worker (forked or spawned), before its first document
        try:
            tokens = document_tokens(path)
            n_bytes = os.path.getsize(path)
        except (OSError, UnicodeDecodeError):
            with self.progress.get_lock():
                self.progress[3] += 1
            return
        if self.part != "all":
            head, tail = split_single_document(tokens, self.val_fraction)
            tokens = head if self.part == "head" else tail
        with self.progress.get_lock():
            self.progress[0] += 1
            self.progress[1] += n_bytes
            self.progress[2] += len(tokens)
        yield tokens
