"""Chapter 4's GPT-2 (a gpt_lab ``GPTModel`` state dict, the book's parameter names) written as a GGUF
file, the format llama.cpp reads, for the optional llama.cpp row of ``scripts/bench.py --llama-cpp``.

    python scripts/gguf_export.py OUT_DIR [--types f32 f16 q8_0]   # gpt2_small, the bench's seed-123 weights

The file holds llama.cpp's ``gpt2`` architecture (its names and layouts, from llama.cpp's sources:
src/models/gpt2.cpp, gguf-py's constants, the Hugging Face converter's choices):

- tensors ``token_embd``, ``position_embd``, ``blk.{i}.attn_norm`` / ``attn_qkv`` / ``attn_output`` /
  ``ffn_norm`` / ``ffn_up`` / ``ffn_down``, ``output_norm``, ``output`` (``.weight`` / ``.bias``; a
  LayerNorm's ``scale`` / ``shift`` are its weight / bias). llama.cpp's GPT-2 reads one fused query /
  key / value matrix with a bias: the book's ``W_query``, ``W_key``, ``W_value`` stacked in that order
  along the output features, zero biases where the book has none (``qkv_bias=False``). PyTorch's
  (out, in) weights are already the layout GGUF stores (ggml lists dimensions the other way round);
- at ``q8_0`` / ``f16`` the matrices are converted, while the norms, biases and the position
  embedding stay f32 (as llama.cpp's converter keeps them); Q8_0 (blocks of 32 int8 values with one
  f16 scale) is computed by gguf-py's ``quants`` module;
- metadata: context length, embedding length, feed-forward length (4x), block count, head count,
  LayerNorm epsilon (1e-5), file type (0 f32, 1 f16, 7 q8_0);
- GPT-2's tokenizer, from the files gpt_lab already has offline (``gpt_lab.tokenizer``): tokens as
  GPT-2's byte-to-unicode strings, the BPE merges reconstructed from tiktoken's ranks
  (``gpt2_vocab``), token types (``<|endoftext|>`` a control token), bos = eos = 50256.

``gpt2_vocab`` needs only tiktoken (tests/test_gguf_vocab.py checks it); writing a file needs the
``gguf`` package (``pip install gguf``), imported when a file is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
import torch

GGUF_TYPES = ("f32", "f16", "q8_0")
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0
LAYER_NORM_EPS = 1e-5  # the book's LayerNorm
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # llama.cpp's token types


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves, the other 68 bytes, in byte order, for code points 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def _merge_pair(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens whose merge made ``token``: byte-level BPE of its bytes with the merges ranked
    before it (lowest rank first) stops at exactly two parts."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two earlier tokens")
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts[0], parts[1]


def gpt2_vocab(encoding: tiktoken.Encoding) -> tuple[list[str], list[str], list[int]]:
    """GGUF's ``tokenizer.ggml.tokens``, ``merges`` and ``token_type`` for a byte-level BPE encoding.

    Token ``i`` is its bytes (``decode_single_token_bytes``) written with GPT-2's byte-to-unicode
    characters; a special token is its own text, typed CONTROL. Every mergeable token longer than one
    byte is one merge ``"left right"``, listed in rank order (GPT-2: 50,000 merges, ranks 256-50,255).
    """
    to_char = byte_to_unicode()
    special = {encoding.encode_single_token(s): s for s in encoding.special_tokens_set}
    ranks = {encoding.decode_single_token_bytes(i): i for i in range(encoding.n_vocab) if i not in special}
    tokens, types, merges = [], [], []
    for i in range(encoding.n_vocab):
        if i in special:
            tokens.append(special[i])
            types.append(TOKEN_CONTROL)
            continue
        raw = encoding.decode_single_token_bytes(i)
        tokens.append("".join(to_char[b] for b in raw))
        types.append(TOKEN_NORMAL)
        if len(raw) > 1:
            left, right = _merge_pair(raw, i, ranks)
            merges.append("".join(to_char[b] for b in left) + " " + "".join(to_char[b] for b in right))
    return tokens, merges, types


def gguf_tensors(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """llama.cpp's GPT-2 tensors, float32, from a gpt_lab state dict (book names)."""
    f32 = {k: v.detach().to(torch.float32).cpu() for k, v in state.items()}
    out = {"token_embd.weight": f32["tok_emb.weight"], "position_embd.weight": f32["pos_emb.weight"]}
    for i in range(cfg["n_layers"]):
        p = f"trf_blocks.{i}."
        names = ("W_query", "W_key", "W_value")
        att = [f32[f"{p}att.{w}.weight"] for w in names]
        bias = [f32.get(f"{p}att.{w}.bias", torch.zeros(cfg["emb_dim"])) for w in names]
        b = f"blk.{i}."
        out |= {
            f"{b}attn_norm.weight": f32[f"{p}norm1.scale"],
            f"{b}attn_norm.bias": f32[f"{p}norm1.shift"],
            f"{b}attn_qkv.weight": torch.cat(att),  # (3 emb, emb): queries, keys, values
            f"{b}attn_qkv.bias": torch.cat(bias),
            f"{b}attn_output.weight": f32[f"{p}att.out_proj.weight"],
            f"{b}attn_output.bias": f32[f"{p}att.out_proj.bias"],
            f"{b}ffn_norm.weight": f32[f"{p}norm2.scale"],
            f"{b}ffn_norm.bias": f32[f"{p}norm2.shift"],
            f"{b}ffn_up.weight": f32[f"{p}ff.layers.0.weight"],
            f"{b}ffn_up.bias": f32[f"{p}ff.layers.0.bias"],
            f"{b}ffn_down.weight": f32[f"{p}ff.layers.2.weight"],
            f"{b}ffn_down.bias": f32[f"{p}ff.layers.2.bias"],
        }
    out |= {
        "output_norm.weight": f32["final_norm.scale"],
        "output_norm.bias": f32["final_norm.shift"],
        "output.weight": f32["out_head.weight"],
    }
    return {name: t.contiguous().numpy() for name, t in out.items()}


def _stays_f32(name: str, array: np.ndarray) -> bool:
    """Vectors (norms, biases) and the position embedding keep f32 in every file type."""
    return array.ndim < 2 or name.startswith("position_embd")


def write_gguf(path: Path, state: dict[str, torch.Tensor], cfg: dict[str, Any], gguf_type: str) -> Path:
    """Write ``state`` (a gpt_lab GPT-2 state dict, ``cfg`` its book config) to ``path`` as GGUF ``gguf_type``."""
    import gguf

    from gpt_lab.tokenizer import ENDOFTEXT_ID, get_tokenizer

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type={gguf_type!r} must be one of {', '.join(GGUF_TYPES)}")
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name(f"gpt_lab GPT-2 ({gguf_type})")
    writer.add_context_length(cfg["context_length"])
    writer.add_embedding_length(cfg["emb_dim"])
    writer.add_feed_forward_length(4 * cfg["emb_dim"])
    writer.add_block_count(cfg["n_layers"])
    writer.add_head_count(cfg["n_heads"])
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_file_type(FILE_TYPE[gguf_type])
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, merges, types = gpt2_vocab(get_tokenizer())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ENDOFTEXT_ID)
    writer.add_eos_token_id(ENDOFTEXT_ID)
    writer.add_add_bos_token(False)  # GPT-2 starts a text without one
    for name, array in gguf_tensors(state, cfg).items():
        if gguf_type == "f32" or _stays_f32(name, array):
            writer.add_tensor(name, array)
        elif gguf_type == "f16":
            writer.add_tensor(name, array.astype(np.float16))
        else:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    from book_reference import GPT_CONFIG_124M

    from gpt_lab.model.gpt import GPTModel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--types", nargs="+", choices=GGUF_TYPES, default=list(GGUF_TYPES))
    args = parser.parse_args()
    cfg = dict(GPT_CONFIG_124M)
    torch.manual_seed(123)
    state = GPTModel(cfg).state_dict()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for t in args.types:
        print(write_gguf(args.out_dir / f"gpt2_small-{t}.gguf", state, cfg, t))


if __name__ == "__main__":
    main()
