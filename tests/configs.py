"""The tests' tiny model, in one place.

``TINY`` is a plain config with the book's keys for tests that build ``GPTModel`` directly
(litgpt's habit: vocabulary 64, context 8, width 16); a test that needs a variant spells out the
one key it changes, e.g. ``{**TINY, "qkv_bias": True}``. ``TINY_RUN`` is the Hydra overrides
of a run just as small: the ``tiny`` model group option (GPT-2's vocabulary, so the tokenizer's
ids fit) cut down to one block of width 16 and a 16-token context.
"""

from __future__ import annotations

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
