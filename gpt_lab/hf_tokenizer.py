"""Other families' tokenizers: a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library.

GPT-2 keeps tiktoken (gpt_lab.tokenizer). A Llama 3, Qwen3 or Gemma 3 directory carries its own
``tokenizer.json``; ``load_hf_tokenizer`` reads it into an ``HFTokenizer``, which answers the part
of ``tiktoken.Encoding``'s interface the rest of gpt_lab uses (``encode``, ``encode_ordinary``,
``decode``, ``eot_token``, ``n_vocab``, ``name``), so tasks take either.

Conventions (transformers' own defaults): ``encode`` adds what the file's post-processor adds —
Llama 3's ``<|begin_of_text|>``, Gemma 3's ``<bos>``, nothing for Qwen3 — unless the text already
starts with it, and special tokens written in the text (``<|im_start|>``, ``<end_of_turn>``) are
those tokens, which chat formats need. ``decode`` keeps special tokens but drops that one leading
beginning-of-text token, so ``decode(encode(text)) == text``. ``stop_ids`` are the ids that end a
reply: the end-of-sequence ids the directory's ``config.json`` / ``generation_config.json`` /
``tokenizer_config.json`` name, then every end-of-turn token of ``END_OF_TURN_TOKENS`` the
vocabulary holds; ``eot_token`` is the first of them (what ``stop_at_eos`` stops at).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpt_lab.errors import InitFromError

TOKENIZER_FILE = "tokenizer.json"
# What a family's tokenizer is read from besides tokenizer.json (its end-of-sequence ids, its eos
# token): copied with it into the directory of a run trained from that family (``copy_tokenizer_files``)
# and into an export.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# The end-of-turn tokens of the chat formats gpt_lab writes (gpt_lab.generation.prompt_styles):
# Llama 3's, Qwen3's (ChatML) and Gemma 3's.
LLAMA3_EOT = "<|eot_id|>"
CHATML_EOT = "<|im_end|>"
GEMMA_EOT = "<end_of_turn>"
END_OF_TURN_TOKENS = (LLAMA3_EOT, CHATML_EOT, GEMMA_EOT)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with the slice of tiktoken's interface gpt_lab calls."""

    def __init__(self, tokenizer: Any, stop_ids: Iterable[int], name: str = "huggingface") -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in stop_ids))
        if not self.stop_ids:
            raise ValueError("a tokenizer needs at least one end-of-sequence id")
        self.bos_id = self._leading_special_id()

    def _leading_special_id(self) -> int | None:
        """The id the post-processor puts in front of every text (None when it adds nothing there)."""
        plain = self.tokenizer.encode("a", add_special_tokens=False).ids
        full = self.tokenizer.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[1:] == plain:
            return int(full[0])
        return None

    @property
    def n_vocab(self) -> int:
        """Ids the tokenizer can produce, added (special) tokens included."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def eot_token(self) -> int:
        return self.stop_ids[0]

    def token_id(self, token: str) -> int | None:
        found = self.tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def encode(self, text: str, *, allowed_special: Any = "all", disallowed_special: Any = ()) -> list[int]:
        """``text``'s ids, special tokens in the text recognised, the beginning-of-text id in front.

        ``allowed_special`` / ``disallowed_special`` are accepted for tiktoken's callers and ignored:
        a chat format's markers are special tokens of these vocabularies and must encode as such.
        """
        ids = [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).ids]
        if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def encode_markup(self, text: str, continuation: bool = False) -> list[int]:
        """A chat-formatted text's ids (gpt_lab.tokenizer.encode_text): markers as special tokens; the
        beginning-of-text token in front unless ``continuation`` (text that follows a prompt)."""
        if continuation:
            return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).ids]
        return self.encode(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """``text``'s ids with nothing added and special-looking text as plain text (a corpus document)."""
        self.tokenizer.encode_special_tokens = True
        try:
            return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).ids]
        finally:
            self.tokenizer.encode_special_tokens = False

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.bos_id is not None and ids and ids[0] == self.bos_id:
            ids = ids[1:]
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if isinstance(v, int)]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def check_vocab(n_vocab: int, vocab_size: int, where: str | Path) -> None:
    """A tokenizer of ``n_vocab`` tokens fits a model of ``vocab_size`` embedding rows (models may
    have more rows than tokens, never fewer); an ``InitFromError`` naming both otherwise."""
    if n_vocab > vocab_size:
        raise InitFromError(
            f"init_from={where}: {TOKENIZER_FILE} holds {n_vocab} tokens but the model's vocabulary "
            f"(model.vocab_size) has {vocab_size} rows: the tokenizer belongs to another model"
        )


def load_hf_tokenizer(directory: str | Path, vocab_size: int | None = None) -> HFTokenizer:
    """The ``tokenizer.json`` of the Hugging Face directory ``directory``, checked against ``vocab_size``.

    Raises ``InitFromError`` (one paragraph, exit 2 on the command line) when the file is missing
    or unreadable, when it holds more tokens than the model's ``vocab_size`` embedding rows (models
    may have more rows than tokens, never fewer), or when no end-of-sequence token can be found.
    """
    from tokenizers import Tokenizer

    directory = Path(directory)
    file = directory / TOKENIZER_FILE
    if not file.is_file():
        raise InitFromError(
            f"init_from={directory}: no {TOKENIZER_FILE} beside the weights; copy the model's {TOKENIZER_FILE} "
            "from where you got its weights (the Hugging Face model page's 'Files' tab) into this directory"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:  # the library raises a bare Exception for a malformed file
        raise InitFromError(f"init_from={directory}: {TOKENIZER_FILE} is not a readable tokenizer ({err})") from None
    n_vocab = int(tok.get_vocab_size(with_added_tokens=True))
    if vocab_size is not None:
        check_vocab(n_vocab, vocab_size, directory)
    stop: list[int] = []
    for name in ("config.json", "generation_config.json"):
        config = _json(directory / name)
        stop += _ids(config.get("eos_token_id"))
        stop += _ids((config.get("text_config") or {}).get("eos_token_id"))
    eos_text = _token_text(_json(directory / "tokenizer_config.json").get("eos_token"))
    for text in (eos_text, *END_OF_TURN_TOKENS):
        found = tok.token_to_id(text) if text else None
        if found is not None:
            stop.append(int(found))
    stop = [i for i in stop if 0 <= i < n_vocab]
    if not stop:
        raise InitFromError(
            f"init_from={directory}: no end-of-sequence token: neither config.json nor generation_config.json "
            "names an eos_token_id, tokenizer_config.json no eos_token, and the vocabulary holds none of "
            + ", ".join(END_OF_TURN_TOKENS)
        )
    return HFTokenizer(tok, stop, name=f"huggingface:{directory.name}")


def tokenizer_directory(init_from: str | Path | None) -> Path | None:
    """The directory whose ``tokenizer.json`` is the tokenizer of the weights at ``init_from``: a Hugging
    Face directory of another family than GPT-2 (its ``config.json``), or a directory holding a
    ``tokenizer.json`` and no ``config.json`` (a run trained from such weights, which copied it there:
    ``copy_tokenizer_files``; its ``checkpoints/`` files look in the run directory). None: GPT-2's."""
    if init_from is None or str(init_from) == "":
        return None
    path = Path(init_from).expanduser()
    directory = path if path.is_dir() else path.parent
    candidates = [directory, directory.parent] if directory.name == "checkpoints" and not path.is_dir() else [directory]
    for place in candidates:
        model_type = _json(place / "config.json").get("model_type")
        if model_type not in (None, "gpt2") or (model_type is None and (place / TOKENIZER_FILE).is_file()):
            return place
        if model_type == "gpt2":
            return None
    return None


def tokenizer_for(init_from: str | Path | None, vocab_size: int | None = None) -> Any:
    """The tokenizer of the weights at ``init_from``: the ``tokenizer.json`` of its ``tokenizer_directory``
    (another family than GPT-2, or a run trained from one), GPT-2's tiktoken encoding otherwise (no
    ``init_from``, the book's files, GPT-2's, a run trained from those)."""
    from gpt_lab.tokenizer import get_tokenizer

    directory = tokenizer_directory(init_from)
    return get_tokenizer() if directory is None else load_hf_tokenizer(directory, vocab_size)


def copy_tokenizer_files(init_from: str | Path | None, run_dir: str | Path) -> list[Path]:
    """Copy the tokenizer files of ``init_from``'s family (``TOKENIZER_FILES`` that exist) into
    ``run_dir``, so ``init_from=<run_dir>`` later reads the same tokenizer; nothing for GPT-2's."""
    import shutil

    source = tokenizer_directory(init_from)
    run_dir = Path(run_dir)
    if source is None or source.resolve() == run_dir.resolve():
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            partial = run_dir / f"{name}.partial"
            shutil.copyfile(source / name, partial)
            copied.append(partial.replace(run_dir / name))
    # config.json stays behind (it would make the run directory look like the family's weights): its
    # end-of-sequence ids go in front of generation_config.json's, so the run reads the same stop_ids.
    config = _json(source / "config.json")
    first = _ids(config.get("eos_token_id")) + _ids((config.get("text_config") or {}).get("eos_token_id"))
    if first:
        generation = _json(source / "generation_config.json")
        generation["eos_token_id"] = list(dict.fromkeys(first + _ids(generation.get("eos_token_id"))))
        partial = run_dir / "generation_config.json.partial"
        partial.write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        written = partial.replace(run_dir / "generation_config.json")
        copied = [*[f for f in copied if f != written], written]
    return copied
