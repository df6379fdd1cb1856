"""The sources of a corpus (``task=prepare``): which files, checked as UTF-8 documents, their
fingerprint, the validation documents drawn from ``seed``, and each document's tokens
(``encode_ordinary(text)`` then one ``<|endoftext|>``).
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
from gpt_lab.tokenizer import ENDOFTEXT_ID, get_tokenizer

log = logging.getLogger(__name__)

META_FILE = "meta.json"
SPLITS = ("train", "val")
TOKENIZER_NAME = "gpt2"
TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the disk of int32
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


def document_tokens(path: str | Path) -> np.ndarray:
    """A document's token ids: ``encode_ordinary(text) + [<|endoftext|>]`` as uint16."""
    text = Path(path).read_bytes().decode("utf-8")  # as it is: no newline translation (\r\n stays)
    ids = get_tokenizer().encode_ordinary(text)
    ids.append(ENDOFTEXT_ID)
    return np.asarray(ids, dtype=TOKEN_DTYPE)


class TokenizeDocument:
    """litdata's ``fn``: a file path → its token array (run in litdata's worker processes).

    ``part`` is "all", or "head"/"tail" of a single document split by tokens. ``progress`` is a
    shared array (files, bytes, tokens, unreadable files) the main process reads for its progress
    bar. A file that cannot be read or decoded any more (it changed after the scan) gives no
    tokens and is counted: the prepare then fails with a paragraph instead of a worker's traceback.
    """

    def __init__(self, progress: Any, part: str = "all", val_fraction: float = 0.0) -> None:
        self.progress = progress
        self.part = part
        self.val_fraction = val_fraction

    def __call__(self, path: str) -> Iterator[np.ndarray]:
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
