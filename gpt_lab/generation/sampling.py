"""Text generation: the book's greedy loop, and a key/value-cached loop with sampling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from gpt_lab.generation.decoding import Decoder, speeds_up
from gpt_lab.generation.fused import FusedStep
from gpt_lab.model.calls import straight
from gpt_lab.model.gpt import GPTModel


def _check_args(idx: torch.Tensor, max_new_tokens: int, context_size: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if context_size < 1:
        raise ValueError(f"context_size={context_size} must be >= 1")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(
            f"idx must hold token ids of shape (batch, n_tokens) with n_tokens >= 1, got {tuple(idx.shape)}"
        )


def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """Chapter 4's greedy loop: ``idx`` (b, n) → (b, n + max_new_tokens).

    Each step feeds the last ``context_size`` tokens through the whole model. The model is used
    in the mode it is in (call ``model.eval()`` first, as the book does).
    """
    _check_args(idx, max_new_tokens, context_size)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -context_size:])[:, -1, :]  # (b, vocab)
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # softmax is monotonic: skip it
            idx = torch.cat((idx, idx_next), dim=1)
    return idx


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Chapter 5's next-token rule on ``logits`` (b, vocab) → (b, 1).

    ``top_k`` keeps the k largest logits; ``temperature > 0`` samples from the softmax of
    ``logits / temperature``, ``temperature == 0`` takes the argmax. bf16 / fp16 logits are read as
    float32 (exactly: the same argmax; the CPU's argmax over bf16 took 4x float32's time).
    """
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if top_k is not None:
        top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
        logits = torch.where(logits < top_logits[:, -1:], torch.tensor(float("-inf"), device=logits.device), logits)
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1)
    return torch.argmax(logits, dim=-1, keepdim=True)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Greedy (``temperature == 0``) or sampled continuation of ``idx`` (b, n) → (b, n + new).

    Runs in eval mode (dropout off) and restores the model's mode afterwards. With the cache,
    each step feeds only the new token; once prompt + output outgrow ``context_size`` the window
    slides and positions shift, so every step then recomputes the window exactly as the book's
    loop does. Stops early, without appending it, when every sequence's next token is ``eos_id``
    (or one of them: a family's end-of-sequence and end-of-turn ids).
    """
    steps = generate_stream(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id, use_cache)
    return torch.cat((idx, *steps), dim=1)


def generate_stream(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | Sequence[int] | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """``generate``, one step at a time: yields each new token as it is produced, (b, 1).

    Arguments are checked at the call; the model's mode is restored when the iterator is
    exhausted or closed.
    """
    _check_args(idx, max_new_tokens, context_size)
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filter)")
    return _steps(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id, use_cache)


def _steps(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float,
    top_k: int | None,
    eos_id: int | Sequence[int] | None,
    use_cache: bool,
) -> Iterator[torch.Tensor]:
    stops = None if eos_id is None or isinstance(eos_id, int) else torch.tensor(list(eos_id), device=idx.device)
    was_training = model.training
    # eval() and train() set every module's flag (a Python call each: 0.2 ms for a small model's call);
    # a model with no module in training mode needs neither.
    switched = any(m.training for m in model.modules())
    if switched:
        model.eval()
    # GPTModel computes only the last position's logits on request (the output head is a third of
    # the work per token), and its CPU steps run gpt_lab.generation.decoding's faster products.
    is_gpt_model = isinstance(model, GPTModel)
    last = {"last_only": True} if is_gpt_model else {}
    on_cpu = is_gpt_model and idx.device.type == "cpu"
    # Inference mode (no autograd bookkeeping per op, a few microseconds each: what short generations of
    # small models pay for) for GPTModel, whose forward stores no tensor on the model; no_grad for others.
    grad_off = torch.inference_mode if is_gpt_model else torch.no_grad
    with grad_off():  # GPTModel's cache holds inference tensors: its steps' writes skip view bookkeeping
        cache = model.new_kv_cache(idx.shape[0], context_size) if use_cache and hasattr(model, "new_kv_cache") else None
    # The head copy is kept between calls for a model in eval mode (an inference user's), not for a
    # training run's sample: its weights change before the next one.
    decoder = Decoder(model, keep_head_copy=not was_training) if on_cpu and speeds_up(model) else None
    # GPT-2's cached steps as one native call each (gpt_lab/generation/fused.py), where it runs the model.
    fused = FusedStep.build(model, cache) if on_cpu and cache is not None else None
    # A smaller model's steps run on one thread: its products are too small to share (a prompt's too, at
    # its size), and a thread waiting for a core that another process holds would stall the step.
    threads = torch.get_num_threads()
    one_thread = on_cpu and decoder is None and threads > 1
    length = idx.shape[1]  # the sequence so far: idx, then the tokens in `produced`
    produced: list[torch.Tensor] = []
    new_ids = idx  # what the next step feeds: the prompt, then (cached) each new token
    try:
        with decoder or contextlib.nullcontext():
            for _ in range(max_new_tokens):
                cached = cache is not None and length <= cache.max_len
                if not cached:  # the window: the last context_size tokens, recomputed
                    idx, produced = torch.cat((idx, *produced), dim=1), []
                    new_ids = idx[:, -context_size:]
                if one_thread:
                    torch.set_num_threads(1)
                try:
                    # no_grad per step, not around the yield: the caller's code keeps its own grad mode.
                    if fused is not None and cached and new_ids.shape[1] == 1:  # one native call
                        # The Decoder's threads for the step (one for a small model); sampling after it too.
                        with grad_off(), decoder.step(layers=False) if decoder else contextlib.nullcontext(1) as n:
                            logits = fused(new_ids, n)
                            idx_next = sample_next_token(logits[:, -1, :], temperature, top_k)
                    else:
                        with grad_off(), decoder.step() if decoder else contextlib.nullcontext():
                            forward = straight(model) if is_gpt_model else model  # gpt_lab/model/calls.py
                            logits = forward(new_ids, kv_cache=cache, **last) if cached else forward(new_ids, **last)
                            idx_next = sample_next_token(logits[:, -1, :], temperature, top_k)
                finally:
                    if one_thread:
                        torch.set_num_threads(threads)
                idx_next = idx_next.clone() if is_gpt_model else idx_next  # a normal tensor, not an inference one
                if stops is not None:
                    if bool(torch.isin(idx_next, stops).all()):
                        break
                elif eos_id is not None and bool((idx_next == eos_id).all()):
                    break
                produced.append(idx_next)
                length += 1
                new_ids = idx_next
                yield idx_next
    finally:
        if switched:
            model.train(was_training)
