"""Llama 3, Qwen3 (dense, MoE) and Gemma 3 directories: config.json in cfg.model's keys, the name
maps against transformers' own tensor names, lazy (sharded) reading, and the bad-input paragraphs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hf_files import SMALL_CONFIGS, save_hf_model
from omegaconf import DictConfig

from gpt_lab.errors import InitFromError
from gpt_lab.model.hf_families import SUPPORTED, family_config, family_hf_config, name_map
from gpt_lab.model.hf_files import family_directory, read_family

transformers = pytest.importorskip("transformers")
FAMILIES = sorted(SMALL_CONFIGS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Each family's small model saved by transformers (the MoE one in shards)."""
    out = {}
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(family)
        shard = "40KB" if family == "qwen3_moe" else None
        out[family] = (directory, save_hf_model(family, directory, max_shard_size=shard))
    return out


def test_config_keys_of_each_family(saved: dict[str, tuple[Path, object]]) -> None:
    got = {f: family_config(json.loads((d / "config.json").read_text()), str(d)) for f, (d, _) in saved.items()}
    common = {"attention": "gqa", "ffn": "swiglu", "norm": "rmsnorm", "pos_emb": "rope", "drop_rate": 0.0}
    llama = got["llama"]
    assert {k: llama[k] for k in common} == common
    assert (llama["emb_dim"], llama["n_heads"], llama["n_kv_heads"], llama["head_dim"], llama["hidden_dim"]) == (
        32,
        4,
        2,
        8,
        48,
    )
    assert llama["rope_base"] == 500000.0 and llama["norm_eps"] == 1e-5 and not llama["qk_norm"]
    assert llama["rope_scaling"] == {
        "type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 16,
    }
    assert got["qwen3"]["qk_norm"] and got["qwen3"]["head_dim"] == 16 and got["qwen3"]["rope_scaling"] is None
    moe = got["qwen3_moe"]
    assert (moe["ffn"], moe["num_experts"], moe["experts_per_token"], moe["moe_hidden_dim"]) == ("moe", 4, 2, 16)
    gemma = got["gemma3_text"]
    assert {k: gemma[k] for k in ("window", "sliding_window", "sliding_pattern", "rope_base", "rope_local_base")} == {
        "window": "sliding",
        "sliding_window": 4,
        "sliding_pattern": "2:1",
        "rope_base": 1000000.0,
        "rope_local_base": 10000.0,
    }
    assert gemma["emb_scale"] and gemma["norm_offset"] and gemma["post_norms"] and gemma["qk_norm"]
    assert gemma["query_scale"] == 0.25 and gemma["ffn_activation"] == "gelu_tanh"
    for family in ("llama", "qwen3", "qwen3_moe"):
        assert not any(got[family][k] for k in ("emb_scale", "norm_offset", "post_norms", "attn_out_bias"))
        assert got[family]["ffn_activation"] == "silu" and got[family]["window"] == "full"


@pytest.mark.parametrize("family", FAMILIES)
def test_name_map_is_what_transformers_saves(family: str, saved: dict[str, tuple[Path, object]]) -> None:
    directory, _ = saved[family]
    cfg = family_config(json.loads((directory / "config.json").read_text()), str(directory))
    cfg["tie_weights"] = bool(SMALL_CONFIGS[family]["tie_word_embeddings"])  # a tied head is not saved
    assert set(name_map(cfg)) == set(saved_tensors(directory))


def saved_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved directory, read whole by safetensors (the sharded one too)."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(file))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_read_family_gives_every_tensor_renamed(family: str, saved: dict[str, tuple[Path, object]]) -> None:
    directory, _ = saved[family]
    cfg, state = read_family(directory)
    theirs = saved_tensors(directory)
    assert cfg["tie_weights"] == SMALL_CONFIGS[family]["tie_word_embeddings"]
    mapping = name_map(cfg)
    assert set(state) == set(mapping.values()) | ({"out_head.weight"} if cfg["tie_weights"] else set())
    if cfg["tie_weights"]:
        assert state["out_head.weight"] is state["tok_emb.weight"]
    for hf_name, ours in mapping.items():
        assert state[ours].dtype == torch.float32
        assert torch.equal(state[ours], theirs[hf_name]), hf_name
    # Our names are SPEC's: spot-check the parts each family adds.
    if family == "gemma3_text":
        assert {"trf_blocks.0.post_att_norm.weight", "trf_blocks.0.post_ff_norm.weight"} <= set(state)
    if family == "qwen3_moe":
        assert {"trf_blocks.1.ff.gate.weight", "trf_blocks.1.ff.fc3.3.weight"} <= set(state)
        assert (directory / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_config_reads_back_the_same(family: str, saved: dict[str, tuple[Path, object]]) -> None:
    directory, _ = saved[family]
    cfg, _ = read_family(directory)
    again = family_config(family_hf_config(cfg), "export")
    again["tie_weights"] = cfg["tie_weights"]
    assert again == cfg
    transformers.AutoConfig.for_model(**family_hf_config(cfg))  # and transformers accepts it


def test_gemma3_multimodal_names(tmp_path: Path, saved: dict[str, tuple[Path, object]]) -> None:
    from safetensors.torch import load_file, save_file

    directory, _ = saved["gemma3_text"]
    text = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text}))
    tensors = {
        "model.language_model." + k.removeprefix("model."): v
        for k, v in load_file(directory / "model.safetensors").items()
    }
    tensors["model.vision_tower.patch.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(InitFromError, match=r"model\.vision_tower\.patch\.weight"):
        read_family(tmp_path)  # the vision tower is not loaded: named, not silently dropped
    del tensors["model.vision_tower.patch.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    cfg, state = read_family(tmp_path)
    assert cfg == read_family(directory)[0] and set(state) == set(read_family(directory)[1])


def test_bad_directories_are_one_paragraph(tmp_path: Path, saved: dict[str, tuple[Path, object]]) -> None:
    directory, _ = saved["qwen3"]
    config = json.loads((directory / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(InitFromError, match="model_type='mistral'.*supported model types: " + ", ".join(SUPPORTED)):
        family_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert family_directory(tmp_path) == tmp_path
    with pytest.raises(InitFromError, match=r"config\.json is here but no weights"):
        read_family(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(InitFromError, match=r"no config\.json"):
        read_family(tmp_path)
    assert family_directory(directory / "model.safetensors") == directory


def test_unsupported_features_are_named(saved: dict[str, tuple[Path, object]]) -> None:
    gemma = json.loads((saved["gemma3_text"][0] / "config.json").read_text())
    with pytest.raises(InitFromError, match=r"final_logit_softcapping=30\.0"):
        family_config({**gemma, "final_logit_softcapping": 30.0}, "x")
    llama = json.loads((saved["llama"][0] / "config.json").read_text())
    with pytest.raises(InitFromError, match="RoPE scaling 'yarn' is not supported"):
        family_config({**llama, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}, "rope_scaling": None}, "x")


def test_init_from_reads_a_family_directory(tmp_path: Path, saved: dict[str, tuple[Path, object]]) -> None:
    from safetensors.torch import load_file, save_file

    from gpt_lab.model.weights import load_pretrained

    directory, _ = saved["llama"]
    weights = load_pretrained(directory)
    assert (weights.family, weights.format, weights.path) == ("llama", "huggingface", directory)
    assert weights.config == read_family(directory)[0] and weights.config["tie_weights"]
    # The same weights without their config.json: one paragraph asking for it.
    save_file(load_file(directory / "model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(InitFromError, match=r"without the config\.json that says which one"):
        load_pretrained(tmp_path)


def test_weights_read_from_a_directory_are_not_drawn_first(saved: dict[str, tuple[Path, object]]) -> None:
    """A family preset (model.init_std=0.02) named beside its directory: the config a training run builds its
    model from before loading the weights draws nothing (a normal_ pass over Qwen3 0.6B costs ~3 s)."""
    from gpt_lab.model.weights import load_pretrained, resolve_model_config

    directory, _ = saved["qwen3"]
    weights = load_pretrained(directory)
    preset = {**weights.config, "init_std": 0.02}  # the preset's sizes are the file's: check_preset passes
    assert resolve_model_config(preset, weights)["init_std"] is None


def test_tokenizer_follows_the_directory(tmp_path: Path, saved: dict[str, tuple[Path, object]]) -> None:
    from hf_files import write_tokenizer

    from gpt_lab.hf_tokenizer import HFTokenizer, tokenizer_for

    directory, _ = saved["qwen3"]
    with pytest.raises(InitFromError, match=r"no tokenizer\.json beside the weights"):
        tokenizer_for(directory, 96)
    assert tokenizer_for(None).name == "gpt2"
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    write_tokenizer(tmp_path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], vocab_size=300)
    tok = tokenizer_for(tmp_path / "model.safetensors", 400)
    assert isinstance(tok, HFTokenizer) and tok.eot_token == 2
    with pytest.raises(InitFromError, match=f"holds {tok.n_vocab} tokens but the model's vocabulary"):
        tokenizer_for(tmp_path, 96)


def test_the_preflight_lets_a_family_train_on_text_and_on_a_corpus(
    saved: dict[str, tuple[Path, object]], compose_config: Callable[..., DictConfig]
) -> None:
    from gpt_lab.run.preflight import check_resources

    directory, _ = saved["qwen3"]
    for task in ("train", "evaluate"):
        # A corpus is read with the family's tokenizer now; one prepared with another tokenizer is refused when
        # the data is opened (tests/test_corpus_family.py), not here.
        check_resources(compose_config(f"task={task}", f"init_from={directory}", "data=corpus", "data.dir=corpus"))
        # A text file is tokenized with the directory's own tokenizer.json (tests/test_family_training.py).
        check_resources(compose_config(f"task={task}", f"init_from={directory}", "data.path=gpt_lab:the-verdict.txt"))
    check_resources(compose_config(f"init_from={directory}"))  # generation reads its tokenizer.json
