"""Config composition (every option of every group) and the schema's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ValidationError

from gpt_lab.config import GPT2_SIZES, validate_config
from gpt_lab.errors import ConfigError
from gpt_lab.model.gpt import GPTModel
from gpt_lab.model.stats import count_params, count_params_tied

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
GROUP_OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]


def test_config_groups_of_design_md_exist() -> None:
    design = {"model", "dropout", "qkv_bias", "weight_tying", "task", "data", "trainer", "logger", "callbacks", "paths"}
    assert design <= set(GROUPS)
    options = {g: {o for gg, o in GROUP_OPTIONS if gg == g} for g in GROUPS}
    assert {"gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl", "tiny"} <= options["model"]
    assert {"book", "none", "per_location"} <= options["dropout"]
    assert {"off", "on"} == options["qkv_bias"] == options["weight_tying"]
    assert {"generate", "train", "evaluate"} <= options["task"]


@pytest.mark.parametrize("size", sorted(GPT2_SIZES))
def test_config_model_yaml_agrees_with_the_size_table(compose_config, size: str) -> None:
    """conf/model/<size>.yaml and gpt_lab.config.GPT2_SIZES (checked against the book in test_model) agree."""
    cfg = validate_config(compose_config(f"model={size}"))
    assert {key: cfg.model[key] for key in GPT2_SIZES[size]} == GPT2_SIZES[size]


@pytest.mark.parametrize("tying", ["off", "on"])
def test_config_weight_tying_option_gives_the_books_count(compose_config, tying: str) -> None:
    cfg = validate_config(compose_config("model=gpt2_small", f"weight_tying={tying}"))
    with torch.device("meta"):
        model = GPTModel(cfg.model)
    # Exercise 4.2: 163,009,536 parameters, 124,412,160 with the output head tied to the embedding.
    assert count_params(model) == (163_009_536 if tying == "off" else 124_412_160)
    assert count_params_tied(model) == 124_412_160


def test_config_weight_tying_shares_the_head(compose_config) -> None:
    on = GPTModel(validate_config(compose_config("model=tiny", "weight_tying=on")).model)
    off = GPTModel(validate_config(compose_config("model=tiny", "weight_tying=off")).model)
    assert on.out_head.weight is on.tok_emb.weight
    assert off.out_head.weight is not off.tok_emb.weight


def test_config_qkv_bias_adds_biases(compose_config) -> None:
    on = GPTModel(validate_config(compose_config("model=tiny", "qkv_bias=on")).model)
    off = GPTModel(validate_config(compose_config("model=tiny")).model)
    for name in ("W_query", "W_key", "W_value"):
        assert getattr(on.trf_blocks[0].att, name).bias is not None
        assert getattr(off.trf_blocks[0].att, name).bias is None
    emb, n_layers = on.tok_emb.embedding_dim, len(on.trf_blocks)
    assert count_params(on) - count_params(off) == 3 * emb * n_layers


@pytest.mark.parametrize(
    ("option", "rates"),
    [("book", (0.1, 0.1, 0.1)), ("none", (0.0, 0.0, 0.0)), ("per_location", (0.1, 0.2, 0.3))],
)
def test_config_dropout_options_set_each_location(compose_config, option: str, rates: tuple) -> None:
    model = GPTModel(validate_config(compose_config("model=tiny", f"dropout={option}")).model)
    block = model.trf_blocks[0]
    assert (model.drop_emb.p, block.att.dropout.p, block.drop_shortcut.p) == pytest.approx(rates)


def test_config_plain_key_overrides_work_with_groups(compose_config) -> None:
    cfg = validate_config(compose_config("model=gpt2_medium", "model.emb_dim=512", "model.drop_rate_attn=0.05"))
    assert (cfg.model.name, cfg.model.emb_dim, cfg.model.n_heads) == ("gpt2_medium", 512, 16)
    assert cfg.model.drop_rate_attn == 0.05


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.n_heads=5"], "model.n_heads=5 must divide model.emb_dim=768"),
        (["model.emb_dim=100", "model.n_heads=12"], "model.n_heads=12 must divide model.emb_dim=100"),
        (["model.drop_rate=1.0"], r"model.drop_rate=1.0 must be a rate in \[0, 1\)"),
        (["model.drop_rate=-0.1"], r"model.drop_rate=-0.1 must be a rate in \[0, 1\)"),
        (["model.drop_rate_attn=1.5"], r"model.drop_rate_attn=1.5 must be a rate in \[0, 1\)"),
        (["model.n_layers=0"], "model.n_layers=0 must be a positive integer"),
        (["model.emb_dim=-8"], "model.emb_dim=-8 must be a positive integer"),
        (["model.vocab_size=0"], "model.vocab_size=0 must be a positive integer"),
        (["max_new_tokens=-1"], "max_new_tokens=-1 must be >= 0"),
        (["temperature=-0.5"], r"temperature=-0.5 must be 0 \(greedy\) or between 0.001 and 1000"),
        (["temperature=1e-45"], r"temperature=1e-45 must be 0 \(greedy\) or between"),
        (["temperature=nan"], r"temperature=nan must be 0 \(greedy\) or between"),
        (["model.vocab_size=100"], "model.vocab_size=100 must be 50257, GPT-2's vocabulary .*no embedding"),
        (["model.vocab_size=60000"], "model.vocab_size=60000 must be 50257, .*the tokenizer cannot decode"),
        (["ckpt_path=a.ckpt"], "ckpt_path=a.ckpt resumes training and only task=train uses it; .*init_from=a.ckpt"),
        (["top_k=0"], "top_k=0 must be >= 1"),
        (["prompt=''"], "prompt='' is empty"),
        (["seed=-1"], "seed=-1 must be in"),
        (["data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
        (["data.stride=0"], "data.stride=0 must be a positive integer"),
        (["data.train_ratio=1.0"], r"data.train_ratio=1.0 must be in \(0, 1\)"),
        (["optim.lr=0"], r"optim.lr=0.0 must be a number in \(0, 1\]"),
        (["optim.lr=nan"], r"optim.lr=nan must be a number in \(0, 1\]"),
        (["optim.lr=3"], r"optim.lr=3.0 must be a number in \(0, 1\]"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be a finite number >= 0"),
        (["model.emb_dim=abc"], "model.emb_dim='abc' is not an integer"),
        (["model.drop_rate=high"], "model.drop_rate='high' is not a number"),
        (["model.qkv_bias=maybe"], r"model.qkv_bias='maybe' is not a boolean \(true or false\)"),
        (["data.batch_size=1.5"], "data.batch_size=1.5 is not an integer"),
        (["+model.n_head=4"], "unknown key model.n_head; model accepts name, vocab_size, .*n_heads"),
        (["+learning_rate=0.1"], "unknown key learning_rate; the top level accepts model, .*seed"),
        # Issue 21 case 9: NaN and infinity fail every float range check.
        (["scheduler.min_lr=nan"], r"scheduler\.min_lr=nan must be a finite number >= 0"),
        (["scheduler.initial_lr=nan"], r"scheduler\.initial_lr=nan must be a finite number >= 0"),
        (["scheduler.initial_lr=inf"], r"scheduler\.initial_lr=inf must be a finite number >= 0"),
        (["optim.clip_grad_norm=nan"], r"optim\.clip_grad_norm=nan must be a finite number > 0"),
        (["optim.clip_grad_norm=inf"], r"optim\.clip_grad_norm=inf must be a finite number > 0"),
        (["optim.weight_decay=nan"], r"optim\.weight_decay=nan must be a finite number >= 0"),
        (["model.drop_rate=nan"], r"model\.drop_rate=nan must be a rate in \[0, 1\)"),
        (["data.train_ratio=nan"], r"data\.train_ratio=nan must be in \(0, 1\)"),
        (["scheduler.warmup_ratio=nan"], r"scheduler\.warmup_ratio=nan must be in"),
        # Issue 21: a run length Lightning refuses only after the model is built.
        (["trainer.max_steps=-5"], r"trainer\.max_steps=-5 must be >= 0, or -1 for no limit"),
        (["trainer.max_epochs=-2"], r"trainer\.max_epochs=-2 must be >= 0, or -1 for no limit"),
    ],
)
def test_config_schema_rejects_bad_values(compose_config, overrides: list[str], message: str) -> None:
    cfg = compose_config()
    OmegaConf.set_struct(cfg, False)  # `+key=value` adds a key, as on the command line
    cfg.merge_with_dotlist([o.removeprefix("+") for o in overrides])
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_config_schema_reports_every_problem_at_once(compose_config) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config("model.n_heads=5", "max_new_tokens=-2", "optim.lr=-1"))
    text = str(err.value)
    assert "model.n_heads=5" in text and "max_new_tokens=-2" in text and "optim.lr=-1.0" in text
    assert "\n" not in text  # one paragraph


def test_config_schema_rejects_unknown_keys_from_yaml(compose_config) -> None:
    cfg = compose_config("model=tiny")
    with open_dict(cfg):
        cfg.model.embed_dim = 64  # a typo in a YAML file
    with pytest.raises(ConfigError, match=r"unknown key model\.embed_dim"):
        validate_config(cfg)


def test_config_schema_names_missing_values(compose_config) -> None:
    cfg = compose_config("model=tiny")
    with open_dict(cfg):
        del cfg.model["context_length"]
    with pytest.raises(ConfigError, match=r"model\.context_length must be set"):
        validate_config(cfg)


def test_config_validated_config_is_typed_and_resolved(compose_config, tmp_path) -> None:
    cfg = validate_config(compose_config("model=tiny", "model.emb_dim=64"))
    assert cfg.model.emb_dim == 64 and isinstance(cfg.model.emb_dim, int)
    assert cfg.trainer.default_root_dir == str(tmp_path)  # interpolations resolved
    assert OmegaConf.to_container(cfg.logger)["tensorboard"]["save_dir"] == str(tmp_path)
    with pytest.raises(ValidationError):
        cfg.model.emb_dim = "wide"


def test_config_unknown_group_option_is_refused_with_the_options(run_cli) -> None:
    # Issue 21 case 6: `optional experiment` used to swallow a typo and run chapter 4's generation.
    proc = run_cli("experiment=ch5", "model=tiny", "max_new_tokens=1")
    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert message.startswith("gpt_lab: error: experiment=ch5 is not an option of the experiment group")
    assert "appendix_d, ch05, ch06, ch06_lora, ch07" in message and "\n" not in message and "Traceback" not in message


def test_config_group_options_are_checked_in_every_group_and_sweep() -> None:
    from gpt_lab.run.options import unknown_group_options

    conf = Path(__file__).resolve().parents[1] / "conf"
    models = sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    assert unknown_group_options(["model=gpt3", "seed=1", "model.emb_dim=8"]) == [
        f"model=gpt3 is not an option of the model group; choose one of {', '.join(models)} (conf/model/)"
    ]
    problems = unknown_group_options(["-m", "+experiment=ch05,ch5", "dropout=nil", "experiment=null"])
    assert [p.split(" is not")[0] for p in problems] == ["experiment=ch5", "dropout=nil", "experiment=null"]
    # Every option of every group is accepted; Hydra's own groups and deletions are Hydra's to check.
    everything = [
        f"{d.name}={p.stem}" for d in conf.iterdir() if d.is_dir() and d.name != "hydra" for p in d.glob("*.yaml")
    ]
    assert len(everything) > 20 and unknown_group_options(everything) == []
    assert unknown_group_options(["hydra/launcher=joblib", "~experiment", "--cfg", "job"]) == []


def test_config_key_of_another_group_option_is_refused_naming_it() -> None:
    # Issue 21: `task=prepare data.source=books/` without data=corpus was Hydra's "Could not override", exit 1.
    from gpt_lab.run.options import misplaced_group_keys

    assert misplaced_group_keys(["task=prepare", "data.source=books/"]) == [
        "data.source is a key of data=corpus, not of data=text: add data=corpus"
    ]
    assert misplaced_group_keys(["data=corpus", "data.source=b", "data.path=a"]) == []
    # Issue 29: data=corpus no longer inherits the text option's windows (it never used them).
    assert misplaced_group_keys(["data=corpus", "data.stride=4"]) == [
        "data.stride is a key of data=text, not of data=corpus: add data=text"
    ]
    assert misplaced_group_keys(["data.stride=4", "+data.source=b", "model.emb_dim=8", "trainer.max_steps=3"]) == []
