"""A whole generation step of the book's GPT-2 in one native call (``csrc/gpt2_step.c``), on the CPU.

After the prompt, each step of ``generate`` feeds one token per sequence through every layer. The
weight products take most of it (they read every weight once: gpt_lab/generation/decoding.py runs
them through gpt_lab's native kernels), but the ~400 small operations around them — norms, the
attention over the cache, GELU, the shortcuts, and the Python that calls each — cost ~1.7 ms a
gpt2_small token run one by one from PyTorch (~10 % of the step, more for bf16 and int8 weights,
whose products are shorter). ``FusedStep`` describes the model to the native step once per
``generate`` call (pointers to its weights and its key/value cache) and then runs each step as one
call: the same products (the kernels' own per-thread functions), the small operations between them on
one OpenMP team.

It runs the book's architecture only, as the model holds it: ``GPTModel`` with learned positions,
LayerNorm, causal multi-head attention (no GQA, window, QK-norm or RoPE), the GELU feed-forward, no
hooks on any module, its tensors contiguous on the CPU, and the weights of one ``generation.weights``
choice: ``fp32`` (plain float32 ``nn.Linear``), ``int8`` (native ``Int8Linear``, the rest float32) or
``bf16`` (bfloat16 ``nn.Linear`` / ``RowLinear``: every GPT-2 size; a bfloat16 model's activations are
rounded to bfloat16 where PyTorch's bfloat16 operations round them, its cache is bfloat16, its
logits too). ``FusedStep.build`` returns None for anything else (the architecture lab's variants,
oneDNN-packed bf16 layers of models small enough for the CPU's caches, LoRA layers, a hooked or
compiled module, no C compiler, ``GPT_LAB_NATIVE=0``, or ``GPT_LAB_FUSED=0``, which turns off this
step alone: the benches' layer-by-layer row), and ``generate`` runs the model's own forward as before;
``why_not`` says which condition failed. The prompt (many positions) always runs the forward.

The step computes what ``model(ids, kv_cache=cache, last_only=True)`` computes, with the norms,
softmax and sums in another order (the tests bound the logits against the forward and check the
tokens against the book's loop), and advances ``cache.pos``. Its threads are the ``Decoder``'s
choice for the step (all, or one while other processes hold the cores; one for a small model).
"""

from __future__ import annotations

import ctypes
import os

import torch
from torch import nn

from gpt_lab.model import native
from gpt_lab.model.attention import MultiHeadAttention
from gpt_lab.model.cache import FullKV, KVCache
from gpt_lab.model.calls import calls_forward_only
from gpt_lab.model.feedforward import GELU, FeedForward
from gpt_lab.model.gpt import GPTModel, TransformerBlock
from gpt_lab.model.norms import LayerNorm
from gpt_lab.model.packed import RowLinear
from gpt_lab.model.quantized import Int8Linear

F32, INT8, BF16 = 0, 1, 2  # a weight's kind in the native description (gl_linear.kind)
_pointer, _size = ctypes.c_void_p, ctypes.c_int64


class _Linear(ctypes.Structure):
    _fields_ = [("w", _pointer), ("scale", _pointer), ("bias", _pointer)] + [
        (name, _size) for name in ("n_out", "n_in", "kind")
    ]


class _Block(ctypes.Structure):
    _fields_ = (
        [(name, _pointer) for name in ("norm1_w", "norm1_b", "norm2_w", "norm2_b")]
        + [("eps1", ctypes.c_float), ("eps2", ctypes.c_float)]
        + [(name, _Linear) for name in ("q", "k", "v", "out", "fc1", "fc2")]
        + [("k_cache", _pointer), ("v_cache", _pointer)]
    )


class _Model(ctypes.Structure):
    _fields_ = (
        [(name, _size) for name in ("n_layers", "emb", "heads", "head_dim", "hidden", "max_len", "vocab", "batch")]
        + [("bf16", _size), ("eps", ctypes.c_float)]
        + [(name, _pointer) for name in ("tok_emb", "pos_emb", "final_w", "final_b")]
        + [("head", _Linear), ("blocks", ctypes.POINTER(_Block)), ("work", _pointer)]
    )


class NotFusableError(Exception):
    """Why a model (or its cache) is not one the native step runs; ``FusedStep.build`` turns it into None."""


class _Tensors:
    """The addresses of a model's tensors for the step, checked: contiguous, on the CPU, in the model's
    ``dtype`` (float32, or bfloat16 for ``generation.weights=bf16``). The step reads a bfloat16 model's
    small tensors (norms, biases, positions) as float32 copies, kept here (the same values)."""

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise NotFusableError(f"the model's dtype is {dtype}, not float32 or bfloat16")
        self.dtype = dtype
        self.copies: list[torch.Tensor] = []

    def address(self, tensor: torch.Tensor | None, what: str, dtype: torch.dtype | None = None) -> int:
        """``tensor``'s own address (it must be ``dtype``, by default the model's)."""
        dtype = dtype or self.dtype
        if tensor is None or tensor.dtype != dtype or tensor.device.type != "cpu" or not tensor.is_contiguous():
            described = "absent" if tensor is None else f"{tensor.dtype} on {tensor.device.type}"
            raise NotFusableError(f"{what} is not a contiguous {dtype} CPU tensor ({described})")
        return tensor.data_ptr()

    def small(self, tensor: torch.Tensor | None, what: str) -> int:
        """A float32 address for ``tensor`` (in the model's dtype): its own, or a copy's."""
        self.address(tensor, what)
        if self.dtype == torch.float32:
            return tensor.data_ptr()
        with torch.inference_mode(False), torch.no_grad():
            copy = tensor.float()
        self.copies.append(copy)
        return copy.data_ptr()

    def linear(self, module: nn.Module, what: str, n_out: int | None = None, n_in: int | None = None) -> _Linear:
        bias = getattr(module, "bias", None)
        bias_ptr = None if bias is None else self.small(bias, f"{what}.bias")
        if type(module) in (nn.Linear, RowLinear):  # RowLinear: nn.Linear's parameters (a bf16 model's)
            kind = F32 if self.dtype == torch.float32 else BF16
            desc = _Linear(self.address(module.weight, f"{what}.weight"), None, bias_ptr, *module.weight.shape, kind)
        elif type(module) is Int8Linear and module.blocked is not None and self.dtype == torch.float32:
            scales = self.address(module.scales, f"{what}.scales")
            n = (module.out_features, module.in_features)
            desc = _Linear(module.blocked.data_ptr(), scales, bias_ptr, *n, INT8)
        else:
            raise NotFusableError(f"{what} is a {type(module).__name__}: not nn.Linear, RowLinear or native Int8Linear")
        if (n_out is not None and desc.n_out != n_out) or (n_in is not None and desc.n_in != n_in):
            raise NotFusableError(f"{what} is {desc.n_out} x {desc.n_in}, not {n_out} x {n_in}")
        return desc

    def norm(self, module: nn.Module, what: str, emb: int) -> tuple[int, int, float]:
        if type(module) is not LayerNorm:
            raise NotFusableError(f"{what} is a {type(module).__name__}, not the book's LayerNorm")
        if module.scale.shape != (emb,):
            raise NotFusableError(f"{what} normalises {tuple(module.scale.shape)}, not ({emb},)")
        return self.small(module.scale, f"{what}.scale"), self.small(module.shift, f"{what}.shift"), float(module.eps)


def _block(
    tensors: _Tensors, block: nn.Module, entry: object, i: int, emb: int, batch: int, max_len: int
) -> tuple[_Block, int, int]:
    """Block ``i``'s description and its feed-forward's hidden width and heads."""
    what = f"trf_blocks.{i}"
    if type(block) is not TransformerBlock or block.post_norms:
        raise NotFusableError(f"{what} is not the book's pre-norm TransformerBlock")
    att, ff = block.att, block.ff
    if type(att) is not MultiHeadAttention:
        raise NotFusableError(f"{what}.att is a {type(att).__name__}, not the book's MultiHeadAttention")
    if not att.causal or att.window is not None or att.qk_norm or att.query_scale is not None:
        raise NotFusableError(f"{what}.att is not plain causal attention (mask, window, QK-norm or scale)")
    if att.n_kv_heads != att.num_heads:
        raise NotFusableError(f"{what}.att shares key/value heads (GQA)")
    heads, head_dim = att.num_heads, att.head_dim
    inner = heads * head_dim
    if type(ff) is not FeedForward or len(ff.layers) != 3 or type(ff.layers[1]) is not GELU:
        raise NotFusableError(f"{what}.ff is not the book's GELU feed-forward")
    if type(entry) is not FullKV:
        raise NotFusableError(f"the cache of {what} is a {type(entry).__name__}, not a FullKV")
    for name in ("k", "v"):
        tensor = getattr(entry, name)
        if tuple(tensor.shape) != (batch, heads, max_len, head_dim):
            raise NotFusableError(f"the cache's {name} of {what} is {tuple(tensor.shape)}")
    hidden = ff.layers[0].out_features
    norm1, norm2 = tensors.norm(block.norm1, f"{what}.norm1", emb), tensors.norm(block.norm2, f"{what}.norm2", emb)
    desc = _Block(
        *norm1[:2],
        *norm2[:2],
        norm1[2],
        norm2[2],
        tensors.linear(att.W_query, f"{what}.att.W_query", inner, emb),
        tensors.linear(att.W_key, f"{what}.att.W_key", inner, emb),
        tensors.linear(att.W_value, f"{what}.att.W_value", inner, emb),
        tensors.linear(att.out_proj, f"{what}.att.out_proj", emb, inner),
        tensors.linear(ff.layers[0], f"{what}.ff.layers.0", hidden, emb),
        tensors.linear(ff.layers[2], f"{what}.ff.layers.2", emb, hidden),
        tensors.address(entry.k, f"the cache's k of {what}"),
        tensors.address(entry.v, f"the cache's v of {what}"),
    )
    return desc, hidden, heads


class FusedStep:
    """``model``'s cached generation steps as one native call each (see the module's docstring).

    Valid while the model's weights and ``cache`` stay as they were at ``build`` (one ``generate`` call).
    """

    def __init__(self, model: GPTModel, cache: KVCache) -> None:
        if os.environ.get("GPT_LAB_FUSED", "1") == "0":
            raise NotFusableError("GPT_LAB_FUSED=0 is set")
        kernel, work_size = native.step_kernel(), native.step_work_kernel()
        if kernel is None or work_size is None:
            raise NotFusableError("the native kernels are not built (no C compiler, or GPT_LAB_NATIVE=0)")
        if type(model) is not GPTModel or model.training:
            raise NotFusableError(f"the model is a {type(model).__name__} in training mode={model.training}")
        for name, module in model.named_modules():
            if not calls_forward_only(module) or "forward" in vars(module):
                raise NotFusableError(f"{name or 'the model'} has hooks or is compiled: its call is more than forward")
        if model.rope is not None or model.emb_scale is not None or not hasattr(model, "pos_emb"):
            raise NotFusableError("the model does not add learned positions to unscaled token embeddings")
        emb = model.tok_emb.weight.shape[1]
        if not cache.layers or len(cache.layers) != len(model.trf_blocks) or type(cache.layers[0]) is not FullKV:
            raise NotFusableError("the cache does not hold one FullKV entry per block")
        batch, max_len = cache.layers[0].k.shape[0], cache.max_len
        tensors = _Tensors(model.tok_emb.weight.dtype)
        blocks, hiddens, heads = [], [], set()
        for i, (block, entry) in enumerate(zip(model.trf_blocks, cache.layers, strict=True)):
            desc, hidden, n_heads = _block(tensors, block, entry, i, emb, batch, max_len)
            blocks.append(desc)
            hiddens.append(hidden)
            heads.add((n_heads, block.att.head_dim))
        if len(heads) != 1:
            raise NotFusableError("the blocks have different numbers or sizes of heads")
        ((n_heads, head_dim),) = heads
        if model.pos_emb.weight.shape[0] < max_len:
            raise NotFusableError("the cache holds more positions than pos_emb has")
        final_w, final_b, eps = tensors.norm(model.final_norm, "final_norm", emb)
        vocab = model.tok_emb.weight.shape[0]
        self.head = tensors.linear(model.out_head, "out_head", None, emb)
        self.blocks = (_Block * len(blocks))(*blocks)
        self.bf16 = tensors.dtype == torch.bfloat16
        self.desc = _Model(
            len(blocks), emb, n_heads, head_dim, max(hiddens), max_len, vocab, batch, self.bf16, eps,
            tensors.address(model.tok_emb.weight, "tok_emb.weight"),
            tensors.small(model.pos_emb.weight, "pos_emb.weight"), final_w, final_b, self.head, self.blocks, None,
        )  # fmt: skip
        with torch.inference_mode(False):
            self.work = torch.empty(work_size(ctypes.addressof(self.desc)))
        self.desc.work = self.work.data_ptr()
        self.kernel = kernel
        self.cache = cache
        self.n_out = self.head.n_out
        self.tensors = tensors  # the float32 copies the description points to
        self.model = model  # its tensors must outlive the pointers above

    @classmethod
    def build(cls, model: nn.Module, cache: KVCache) -> FusedStep | None:
        """The fused step of ``model`` over ``cache``, or None where the native step does not run it."""
        try:
            return cls(model, cache)
        except NotFusableError:
            return None

    def __call__(self, ids: torch.Tensor, threads: int) -> torch.Tensor:
        """``ids`` (rows, 1) at the cache's position -> logits (rows, 1, n_out); the cache advanced."""
        rows, pos = ids.shape[0], self.cache.pos
        if ids.dim() != 2 or ids.shape[1] != 1 or rows > self.desc.batch or pos >= self.desc.max_len:
            raise ValueError(
                f"a fused step takes (rows <= {self.desc.batch}, 1) token ids at a cached position "
                f"< {self.desc.max_len}; got {tuple(ids.shape)} at position {pos}"
            )
        tokens = ids.reshape(rows).to(torch.int64).contiguous()
        logits = torch.empty(rows, 1, self.n_out)
        done = self.kernel(ctypes.addressof(self.desc), tokens.data_ptr(), rows, pos, logits.data_ptr(), threads)
        if done != 0:
            raise IndexError(
                f"token ids {tokens.tolist()} include one outside the vocabulary (0 .. {self.desc.vocab - 1})"
            )
        self.cache.pos = pos + 1
        return logits.to(torch.bfloat16) if self.bf16 else logits  # a bfloat16 model's logits are bfloat16


def why_not(model: nn.Module, cache: KVCache) -> str | None:
    """Why ``FusedStep.build(model, cache)`` returns None (None where it builds)."""
    try:
        FusedStep(model, cache)
    except NotFusableError as reason:
        return str(reason)
    return None
