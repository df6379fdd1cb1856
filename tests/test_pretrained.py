"""init_from: Hugging Face GPT-2, book model.pth and Lightning checkpoints load into GPTModel.

The reference is a tiny GPT2LMHeadModel built with the transformers library (a test-only
dependency, no network): our model holding its weights must give the same logits and the same
greedy tokens as transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from configs import TINY

from gpt_lab.config import GPT2_SIZES
from gpt_lab.errors import InitFromError
from gpt_lab.generation.sampling import generate
from gpt_lab.model.book_checkpoint import save_book_checkpoint
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.hf import convert_hf_state_dict, export_hf_state_dict
from gpt_lab.model.weights import build_model, init_model_config, load_pretrained

# The tiny model with the book's defaults that HF weights override (bias, tying, context 8 -> 24).
CHOSEN = {**TINY, "name": "tiny", "tie_weights": False}
VOCAB, EMB, LAYERS, HEADS = TINY["vocab_size"], TINY["emb_dim"], TINY["n_layers"], TINY["n_heads"]
CONTEXT = 24  # the Hugging Face model's n_positions


def tiny_hf(n_embd: int = EMB, n_layer: int = LAYERS, n_head: int = HEADS) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # HF initialises biases and LayerNorms to 0 / 1: randomise them so a mix-up would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    return tiny_hf()


@pytest.fixture(scope="module")
def hf_dirs(hf_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model in every Hugging Face layout we read."""
    root = tmp_path_factory.mktemp("hf")
    safetensors_dir = root / "safetensors"
    hf_model.save_pretrained(safetensors_dir)  # model.safetensors + config.json, lm_head left out
    bin_dir = root / "bin"
    bin_dir.mkdir()
    # transformers 5 only writes safetensors; pytorch_model.bin is torch.save of the state dict
    # (transformer.* keys and the tied lm_head.weight), as older versions wrote it.
    torch.save(hf_model.state_dict(), bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((safetensors_dir / "config.json").read_text())
    bare = root / "bare.bin"  # GPT2Model's keys (no transformer. prefix) plus the old mask buffers
    state = dict(hf_model.transformer.state_dict())
    for i in range(LAYERS):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(CONTEXT, CONTEXT)).view(1, 1, CONTEXT, CONTEXT)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, bare)
    return {"safetensors": safetensors_dir, "bin": bin_dir, "bare": bare}


@pytest.mark.parametrize("layout", ["safetensors", "bin", "bare"])
def test_build_model_hf_logits_match_transformers(
    layout: str, hf_model: torch.nn.Module, hf_dirs: dict[str, Path]
) -> None:
    model = build_model(CHOSEN, hf_dirs[layout]).eval()
    # What the weights need was set: biases, tying, their context length.
    assert model.cfg["qkv_bias"] is True
    assert model.cfg["tie_weights"] is True
    assert model.context_length == CONTEXT
    assert model.out_head.weight is model.tok_emb.weight
    torch.manual_seed(1)
    idx = torch.randint(0, VOCAB, (3, CONTEXT))
    with torch.no_grad():
        expected = hf_model(idx).logits
        got = model(idx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_build_model_hf_file_path_and_directory_agree(hf_dirs: dict[str, Path]) -> None:
    from_dir = load_pretrained(hf_dirs["safetensors"])
    from_file = load_pretrained(hf_dirs["safetensors"] / "model.safetensors")
    assert from_dir.format == from_file.format == "huggingface"
    assert from_dir.stated == {"n_heads": HEADS}  # read from config.json beside the file
    for key, value in from_dir.state_dict.items():
        torch.testing.assert_close(from_file.state_dict[key], value, rtol=0, atol=0)


def test_build_model_hf_greedy_tokens_match_transformers_generate(
    hf_model: torch.nn.Module, hf_dirs: dict[str, Path]
) -> None:
    model = build_model(CHOSEN, hf_dirs["safetensors"]).eval()
    prompt = torch.tensor([[5, 17, 42, 8]])
    n_new = CONTEXT - prompt.shape[1]
    expected = hf_model.generate(prompt, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=0)
    got = generate(model, prompt, n_new, model.context_length)
    assert got.tolist() == expected.tolist()


def test_build_model_hf_sampling_is_seeded_and_top_k_1_is_greedy(hf_dirs: dict[str, Path]) -> None:
    model = build_model(CHOSEN, hf_dirs["safetensors"]).eval()
    prompt = torch.tensor([[5, 17, 42, 8]])
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(generate(model, prompt, 12, CONTEXT, temperature=1.5).tolist())
    assert runs[0] == runs[1]
    greedy = generate(model, prompt, 12, CONTEXT)
    torch.manual_seed(3)
    assert generate(model, prompt, 12, CONTEXT, temperature=1.5, top_k=1).tolist() == greedy.tolist()


def test_convert_hf_state_dict_transposes_conv1d_and_splits_c_attn(hf_model: torch.nn.Module) -> None:
    # Independent check of the layout: Conv1D computes x @ W + b with W stored (in, out).
    hf = hf_model.state_dict()
    ours = convert_hf_state_dict(hf)
    w = hf["transformer.h.1.attn.c_attn.weight"]  # (emb, 3 * emb)
    assert w.shape == (EMB, 3 * EMB)
    torch.testing.assert_close(ours["trf_blocks.1.att.W_key.weight"], w[:, EMB : 2 * EMB].T, rtol=0, atol=0)
    torch.testing.assert_close(
        ours["trf_blocks.1.att.W_value.bias"], hf["transformer.h.1.attn.c_attn.bias"][2 * EMB :], rtol=0, atol=0
    )
    x = torch.randn(2, EMB)
    mlp = hf_model.transformer.h[0].mlp.c_fc
    torch.testing.assert_close(
        x @ ours["trf_blocks.0.ff.layers.0.weight"].T + ours["trf_blocks.0.ff.layers.0.bias"], mlp(x)
    )
    assert ours["trf_blocks.0.ff.layers.2.weight"].shape == (EMB, 4 * EMB)
    torch.testing.assert_close(ours["final_norm.shift"], hf["transformer.ln_f.bias"], rtol=0, atol=0)


def test_build_model_refuses_a_config_too_small_for_the_weights(tmp_path: Path) -> None:
    bigger = tiny_hf(n_embd=48, n_layer=3, n_head=4)
    bigger.save_pretrained(tmp_path)
    with pytest.raises(InitFromError) as err:
        build_model(CHOSEN, tmp_path)
    message = str(err.value)
    assert "model=tiny" in message
    assert "tok_emb.weight: expected (64, 16), found (64, 48)" in message
    assert "trf_blocks.0.att.W_query.weight: expected (16, 16), found (48, 48)" in message
    assert "trf_blocks.0.ff.layers.0.weight: expected (64, 16), found (192, 48)" in message
    assert "model.n_layers=2 but the weights have 3 transformer blocks" in message
    assert "emb_dim=48, n_layers=3" in message


def test_build_model_refuses_gpt2_medium_weights_in_gpt2_small() -> None:
    # Real sizes on the meta device: no memory, no download.
    small = {**CHOSEN, "name": "gpt2_small", **GPT2_SIZES["gpt2_small"]}
    medium = {**small, **GPT2_SIZES["gpt2_medium"], "qkv_bias": True}
    with torch.device("meta"):
        state = GPTModel(medium).state_dict()
    from gpt_lab.model.weights import PretrainedWeights, resolve_model_config

    weights = PretrainedWeights(Path("gpt2-medium"), "huggingface", state, {"qkv_bias": True}, {"n_heads": 16})
    with pytest.raises(InitFromError) as err:
        resolve_model_config(small, weights)
    message = str(err.value)
    assert "model=gpt2_small" in message
    assert "model.n_heads=12 but the weights were made with n_heads=16" in message
    assert "pos_emb.weight: expected (1024, 768), found (1024, 1024)" in message
    assert "use model=gpt2_medium" in message


def test_build_model_refuses_a_head_count_config_json_contradicts(hf_dirs: dict[str, Path]) -> None:
    with pytest.raises(InitFromError, match=r"model\.n_heads=2 but the weights were made with n_heads=4"):
        build_model({**CHOSEN, "n_heads": 2}, hf_dirs["safetensors"])


def test_load_pretrained_rejects_non_tanh_gelu(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").symlink_to(hf_dirs["safetensors"] / "model.safetensors")
    config = json.loads((hf_dirs["safetensors"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(InitFromError, match="activation_function='relu'"):
        load_pretrained(tmp_path)


def test_load_pretrained_explains_unknown_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InitFromError, match="no such file"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(InitFromError, match="holds none of"):
        load_pretrained(tmp_path)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InitFromError, match="not a GPT-2 state dict"):
        load_pretrained(tmp_path / "other.pth")
    (tmp_path / "junk.bin").write_bytes(b"not a torch file")
    with pytest.raises(InitFromError, match="not a weights file gpt_lab can read"):
        load_pretrained(tmp_path / "junk.bin")


def test_build_model_book_model_pth_with_masks(tmp_path: Path) -> None:
    cfg = {**CHOSEN, "context_length": 12, "qkv_bias": True}
    torch.manual_seed(5)
    source = GPTModel(cfg).eval()
    path = save_book_checkpoint(source, tmp_path / "model.pth")  # the book's layout, mask buffers included
    assert any(k.endswith(".att.mask") for k in torch.load(path, weights_only=True))
    # Chosen config differs in context length and bias: the file decides both.
    model = build_model(CHOSEN, tmp_path).eval()
    assert model.cfg["qkv_bias"] is True
    assert model.cfg["tie_weights"] is False
    assert model.context_length == 12
    idx = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(model(idx), source(idx), rtol=0, atol=0)


def test_build_model_book_chapter5_checkpoint_dict(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = GPTModel({**CHOSEN, "tie_weights": True}).eval()
    torch.save({"model_state_dict": source.state_dict(), "optimizer_state_dict": {}}, tmp_path / "ckpt.pth")
    model = build_model(CHOSEN, tmp_path / "ckpt.pth").eval()
    assert model.out_head.weight is model.tok_emb.weight
    idx = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(model(idx), source(idx), rtol=0, atol=0)


def test_build_model_lightning_checkpoint(tmp_path: Path) -> None:
    """A checkpoint in Lightning's layout: GPTLitModule's ``self.model`` under ``state_dict``."""
    torch.manual_seed(5)
    source = GPTModel(CHOSEN).eval()
    ckpt = {
        "epoch": 1,
        "global_step": 10,
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        "hyper_parameters": {"model_cfg": dict(CHOSEN), "optim_cfg": {"lr": 4e-4}},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = build_model({**CHOSEN, "qkv_bias": True}, tmp_path / "last.ckpt").eval()
    assert model.cfg["qkv_bias"] is False
    idx = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(model(idx), source(idx), rtol=0, atol=0)
    with pytest.raises(InitFromError, match=r"model\.n_heads=2 but the weights were made with n_heads=4"):
        build_model({**CHOSEN, "n_heads": 2}, tmp_path / "last.ckpt")


def test_init_model_config_gives_a_strict_loadable_state(hf_dirs: dict[str, Path]) -> None:
    cfg, state = init_model_config(CHOSEN, hf_dirs["bin"])
    model = GPTModel(cfg)
    model.load_state_dict(state, strict=True)
    assert init_model_config(CHOSEN, None) == (GPTModel(CHOSEN).cfg, {})


def test_build_model_without_init_from_is_the_seeded_book_model() -> None:
    torch.manual_seed(123)
    expected = GPTModel(CHOSEN).state_dict()
    torch.manual_seed(123)
    got = build_model(CHOSEN).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`", "ignore:`isinstance\\(treespec")
def test_build_model_from_a_real_gptlitmodule_checkpoint(tmp_path: Path) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from gpt_lab.training.lit_module import GPTLitModule

    cfg = {**CHOSEN, "drop_rate": 0.0, "qkv_bias": True, "tie_weights": True}
    torch.manual_seed(0)
    lit = GPTLitModule(cfg, lr=4e-4, weight_decay=0.1)
    x, y = torch.randint(0, VOCAB, (2, 4, 8))
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(lit, DataLoader(TensorDataset(x, y), batch_size=2))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    model = build_model(CHOSEN, tmp_path / "last.ckpt").eval()  # CHOSEN: no bias, untied
    assert load_pretrained(tmp_path / "last.ckpt").format == "lightning"
    assert model.cfg["qkv_bias"] is True
    assert model.out_head.weight is model.tok_emb.weight
    torch.testing.assert_close(model(x), lit.model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_export_hf_state_dict_gives_transformers_the_same_logits(qkv_bias: bool) -> None:
    torch.manual_seed(4)
    ours = GPTModel({**CHOSEN, "drop_rate": 0.0, "qkv_bias": qkv_bias}).eval()
    hf_cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=TINY["context_length"],
        n_embd=EMB,
        n_layer=LAYERS,
        n_head=HEADS,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=False,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(export_hf_state_dict(ours.state_dict()), strict=False)
    assert not unexpected and all(k.endswith((".attn.bias", ".attn.masked_bias")) for k in missing)
    idx = torch.randint(0, VOCAB, (2, TINY["context_length"]))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), rtol=1e-5, atol=1e-5)
    # And back: the inverse map returns the book's state dict.
    back = convert_hf_state_dict(export_hf_state_dict(ours.state_dict()))
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
