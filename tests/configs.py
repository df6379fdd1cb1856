"""The tests' tiny model, in one place.

``TINY`` is a plain config with the book's keys for tests that build ``GPTModel`` directly
(litgpt's habit: vocabulary 64, context 8, width 16); a test that needs a variant spells out the
one key it changes, e.g. ``{**TINY, "qkv_bias": True}``. ``TINY_RUN`` is the Hydra overrides
of a run just as small: the ``tiny`` model group option (GPT-2's vocabulary, so the tokenizer's
ids fit) cut down to one block of width 16 and a 16-token context.
"""

from __future__ import annotations

from pathlib import Path

TINY = {
    "vocab_size": 64,
    "context_length": 8,
    "emb_dim": 16,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}
TINY_RUN = ("model=tiny", "model.context_length=16", "model.emb_dim=16", "model.n_heads=2", "model.n_layers=1")

# A small header-less SMS-style file (label<TAB>text), n ham and n spam rows; ``spam`` names the second label.
HAM = ["see you at lunch", "how was the game", "call me later", "the meeting moved"]
SPAM = ["win a prize now", "free money click here", "urgent offer call now"]


def write_sms(path: Path, n: int = 12, spam: str = "spam") -> Path:
    lines = [f"ham\t{HAM[i % 4]} {i}" for i in range(n)] + [f"{spam}\t{SPAM[i % 3]} {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
