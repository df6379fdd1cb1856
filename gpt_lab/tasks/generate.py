"""The generate task: build the model, report its size, continue the prompt greedily."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gpt_lab.generate import generate
from gpt_lab.model import GPTModel
from gpt_lab.stats import model_report
from gpt_lab.tokenizer import get_tokenizer


def run(cfg: DictConfig) -> dict[str, Any]:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(cfg.seed)
    model = GPTModel(model_cfg).eval()
    report = model_report(model)
    print(f"Total number of parameters: {report['total_params']:,}")
    print(f"Number of trainable parameters considering weight tying: {report['total_params_tied']:,}")
    print(f"Total size of the model: {report['size_mb']:.2f} MB")

    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode(cfg.prompt)
    if not prompt_ids:
        raise ValueError("prompt is empty: give at least one token, e.g. prompt='Hello, I am'")
    out = generate(model, torch.tensor([prompt_ids]), cfg.max_new_tokens, model.context_length)
    output_ids = out[0].tolist()
    output_text = tokenizer.decode(output_ids)
    print(f"Input: {cfg.prompt!r} -> {prompt_ids}")
    print(f"Output: {output_ids}")
    print(output_text)
    return {**report, "prompt": cfg.prompt, "output_ids": output_ids, "output_text": output_text}
