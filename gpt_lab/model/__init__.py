"""The book's model as pure PyTorch: its classes, weights in and out (book model.pth, Hugging Face
GPT-2, book checkpoints), size statistics."""

from gpt_lab import lazy_exports

_NAMES = {
    "export_book_state_dict": "gpt_lab.model.book_checkpoint",
    "save_book_checkpoint": "gpt_lab.model.book_checkpoint",
    "model_config_dict": "gpt_lab.model.gpt",
    "LayerNorm": "gpt_lab.model.gpt",
    "GELU": "gpt_lab.model.gpt",
    "FeedForward": "gpt_lab.model.gpt",
    "KVCache": "gpt_lab.model.gpt",
    "MultiHeadAttention": "gpt_lab.model.gpt",
    "TransformerBlock": "gpt_lab.model.gpt",
    "GPTModel": "gpt_lab.model.gpt",
    "DummyTransformerBlock": "gpt_lab.model.gpt",
    "DummyLayerNorm": "gpt_lab.model.gpt",
    "DummyGPTModel": "gpt_lab.model.gpt",
    "read_hf_config": "gpt_lab.model.hf",
    "convert_hf_state_dict": "gpt_lab.model.hf",
    "export_hf_state_dict": "gpt_lab.model.hf",
    "n_blocks": "gpt_lab.model.hf",
    "count_params": "gpt_lab.model.stats",
    "count_params_tied": "gpt_lab.model.stats",
    "size_mb": "gpt_lab.model.stats",
    "model_report": "gpt_lab.model.stats",
    "PretrainedWeights": "gpt_lab.model.weights",
    "load_pretrained": "gpt_lab.model.weights",
    "resolve_model_config": "gpt_lab.model.weights",
    "build_model": "gpt_lab.model.weights",
    "init_model_config": "gpt_lab.model.weights",
    "model_from_weights": "gpt_lab.model.weights",
    "LoRALinear": "gpt_lab.model.lora",
    "apply_lora": "gpt_lab.model.lora",
    "merge_lora": "gpt_lab.model.lora",
    "merged_state_dict": "gpt_lab.model.lora",
    "lora_disabled": "gpt_lab.model.lora",
    "lora_scale": "gpt_lab.model.lora",
    "select_trainable": "gpt_lab.model.finetune",
    "load_base_state": "gpt_lab.model.finetune",
    "save_finetuned": "gpt_lab.model.finetune",
    "load_finetuned": "gpt_lab.model.finetune",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
