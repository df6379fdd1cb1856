"""Small Hugging Face files for tests: a byte-level BPE ``tokenizer.json`` trained on a few lines
with the ``tokenizers`` library (as the families' tokenizers are made), with their special tokens."""

from __future__ import annotations

import json
from pathlib import Path

TEXT = [
    "Every effort moves you forward, and every day holds a lesson.",
    "Hello, I am a small model that speaks in short sentences.",
    "Rewrite the sentence using a simile. The car is very fast.",
    "Ünïcödé — 漢字 tabs\tand  spaces\n\nemoji 🙂",
]


def write_tokenizer(
    directory: Path,
    specials: list[str],
    bos: str | None = None,
    vocab_size: int = 300,
    eos_token: str | None = None,
) -> Path:
    """A byte-level BPE tokenizer.json in ``directory``; ``specials`` take ids 0, 1, ... in order.

    With ``bos``, the post-processor puts that token in front of every text (Llama 3, Gemma 3).
    With ``eos_token``, a tokenizer_config.json names it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    if eos_token is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))
    return directory / "tokenizer.json"


# Small random configs of the four families (transformers' keyword names), with what each family
# adds: Llama 3's RoPE scaling, Qwen3's explicit head_dim, Qwen3-MoE's experts, Gemma 3's sliding
# layers (window 4, full attention every 3rd layer here) and its two RoPE bases.
SMALL_CONFIGS: dict[str, dict[str, object]] = {
    "llama": {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        "tie_word_embeddings": True,
    },
    "qwen3": {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rope_theta": 10000000.0,
        "tie_word_embeddings": False,
    },
    "gemma3_text": {
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 4,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "max_position_embeddings": 64,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
}
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}


def hf_model(family: str, seed: int = 0, **overrides: object) -> object:
    """transformers' model of ``family`` at its small size (``overrides`` changing its config),
    float32, eval mode, every norm weight randomised (their defaults, ones or zeros, would hide a
    wrong mapping); generation does not stop at an end-of-sequence id."""
    import torch
    import transformers

    config_name, model_name = CLASSES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**{**SMALL_CONFIGS[family], **overrides})
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 1.5)
    model.generation_config.eos_token_id = None
    return model.float().eval()


def save_hf_model(
    family: str, directory: Path, seed: int = 0, max_shard_size: str | None = None, **overrides: object
) -> object:
    """``hf_model(family)`` written with ``save_pretrained`` into ``directory`` (sharded when asked)."""
    model = hf_model(family, seed, **overrides)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    return model
