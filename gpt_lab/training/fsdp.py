"""``trainer=fsdp``: Lightning's FSDPStrategy sharding each TransformerBlock across the GPUs.

Hydra cannot write a set of classes in YAML, so the config names this factory instead of
``FSDPStrategy`` itself. Lightning refuses FSDP without CUDA: on CPU the config is only composed.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from gpt_lab.model.gpt import TransformerBlock


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs: Any) -> FSDPStrategy:
    """FSDP with one shard unit per ``TransformerBlock`` (the embeddings and the output head live in
    the root unit). ``activation_checkpointing`` recomputes each block's activations in the backward
    pass: less memory for about a third more compute. ``kwargs`` go to ``FSDPStrategy``
    (``sharding_strategy``, ``cpu_offload``, ``state_dict_type``, ...)."""
    return FSDPStrategy(
        auto_wrap_policy={TransformerBlock},
        activation_checkpointing_policy={TransformerBlock} if activation_checkpointing else None,
        **kwargs,
    )


def gathered_model_state(trainer: L.Trainer) -> dict[str, torch.Tensor]:
    """The LightningModule's ``model`` state dict, whole: under FSDP the shards gathered (the strategy's
    ``lightning_module_state_dict``; whole on rank 0). A collective: every process must call it. What a
    finished run saves its ``model.pth`` from (rank 0's own parameters are only its shards)."""
    lit = getattr(trainer, "lightning_module", None)
    if lit is not None:
        lit.whole_state_dict = True  # the frozen base too (a LoRA run's checkpoints leave it out)
    try:
        state = trainer.strategy.lightning_module_state_dict()
    finally:
        if lit is not None:
            lit.whole_state_dict = False
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
