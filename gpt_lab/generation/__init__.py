"""Turning a model into text: the book's greedy loop, cached greedy and sampled generation, the CPU
decoding path, prompts."""

from gpt_lab import lazy_exports

_NAMES = {
    "is_decode_call": "gpt_lab.generation.decoding",
    "split_linear": "gpt_lab.generation.decoding",
    "transposed_chunks": "gpt_lab.generation.decoding",
    "busy_cpu_seconds": "gpt_lab.generation.decoding",
    "CoreMonitor": "gpt_lab.generation.decoding",
    "Decoder": "gpt_lab.generation.decoding",
    "encode_prompt": "gpt_lab.generation.prompts",
    "continue_prompt": "gpt_lab.generation.prompts",
    "TextPrinter": "gpt_lab.generation.prompts",
    "generate_text_simple": "gpt_lab.generation.sampling",
    "sample_next_token": "gpt_lab.generation.sampling",
    "generate": "gpt_lab.generation.sampling",
    "generate_stream": "gpt_lab.generation.sampling",
    "PromptStyle": "gpt_lab.generation.prompt_styles",
    "PromptStyleError": "gpt_lab.generation.prompt_styles",
    "PROMPT_STYLES": "gpt_lab.generation.prompt_styles",
    "register_prompt_style": "gpt_lab.generation.prompt_styles",
    "get_prompt_style": "gpt_lab.generation.prompt_styles",
    "use_weights": "gpt_lab.generation.weights",
    "check_weights_device": "gpt_lab.generation.weights",
    "format_prompt": "gpt_lab.generation.prompt_styles",
    "format_response": "gpt_lab.generation.prompt_styles",
    "format_example": "gpt_lab.generation.prompt_styles",
    "extract_response": "gpt_lab.generation.prompt_styles",
    "answer": "gpt_lab.generation.responses",
    "generate_response": "gpt_lab.generation.responses",
    "generate_responses": "gpt_lab.generation.responses",
    "saved_prompt_style": "gpt_lab.generation.responses",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
