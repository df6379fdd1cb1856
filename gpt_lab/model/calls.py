"""Calling a module's ``forward`` straight, where ``nn.Module.__call__`` would do nothing else.

``module(x)`` costs about 2 microseconds of Python before ``forward`` runs (the hook checks of
``nn.Module.__call__``): nothing for a training step, but a small model's generation step makes some
fifty such calls for well under a millisecond of arithmetic. The model's blocks and attention call
their parts through ``caller()``: under no-grad inference that is ``straight``, ``module.forward``
exactly when ``__call__`` would run nothing else (the test below is ``__call__``'s own), and
``module`` otherwise: a hook (a FLOP counter, an FSDP2 shard), a module compiled in place or a
``torch.jit.trace`` keep the ordinary call, as training and autograd always do. (Gated DeltaNet
and the feed-forward parts call their own layers the ordinary way.) An instance's own ``forward``
attribute (the CPU ``Decoder``'s products) is what ``module.forward`` finds, as ``__call__`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _globals


def _no_global_hooks() -> bool:
    """No global module hooks (``register_module_forward_hook`` and kin) and not tracing."""
    return not (
        _globals._global_forward_pre_hooks
        or _globals._global_forward_hooks
        or _globals._global_backward_pre_hooks
        or _globals._global_backward_hooks
        or torch._C._get_tracing_state()
    )


def _own_call_is_forward(module: nn.Module) -> bool:
    """No hooks of the module's own and not compiled in place (``module.compile()``)."""
    return not (
        module._forward_pre_hooks
        or module._forward_hooks
        or module._backward_pre_hooks
        or module._backward_hooks
        or module._compiled_call_impl is not None
    )


def calls_forward_only(module: nn.Module) -> bool:
    """Whether ``module(...)`` would only run ``module.forward(...)``: ``nn.Module.__call__``'s own test (no
    hooks of its own nor global ones, not compiled in place) and not tracing."""
    return _no_global_hooks() and _own_call_is_forward(module)


def straight(module: nn.Module) -> Callable[..., Any]:
    """``module.forward`` where calling ``module`` would do just that, else ``module`` itself."""
    return module.forward if calls_forward_only(module) else module


def _itself(module: nn.Module) -> nn.Module:
    return module


def _straight_here(module: nn.Module) -> Callable[..., Any]:
    """``straight`` once the global part of the test has passed (``caller`` looks at it once per forward)."""
    return module.forward if _own_call_is_forward(module) else module


def caller() -> Callable[[nn.Module], Callable[..., Any]]:
    """How to call a part now: ``straight`` under no-grad inference, else the module itself (its ordinary
    call, as training, autograd and anything that hooks modules expect)."""
    return _straight_here if not torch.is_grad_enabled() and _no_global_hooks() else _itself


def dropout_called(module: nn.Module) -> bool:
    """Whether a part's dropout must be called: in training (out of it ``nn.Dropout`` returns its input,
    so it is skipped), or under ``torch.jit.trace`` (TensorBoard's graph shows the module)."""
    return module.training or torch._C._get_tracing_state() is not None
