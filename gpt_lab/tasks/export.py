"""task=export: a model (a run directory, a checkpoint, a book ``model.pth``, a Hugging Face
directory) written as a Hugging Face directory (gpt_lab.model.hf_export).

The model is built as every task builds it (``init_from``: a fine-tuned run's ``model.json`` gives its
config; LoRA adapters are merged on reading), then written to ``export.dir``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gpt_lab.config import input_path
from gpt_lab.errors import UserError
from gpt_lab.generation.responses import saved_meta
from gpt_lab.hf_tokenizer import tokenizer_directory
from gpt_lab.model.finetuned import load_finetuned
from gpt_lab.model.hf_export import write_hf_directory
from gpt_lab.model.stats import model_report
from gpt_lab.model.weights import build_model

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build ``init_from``'s model and write it to ``export.dir``; return the results.json fields."""
    init_from = input_path(cfg, cfg.init_from)
    out_dir = input_path(cfg, (cfg.get("export") or {}).get("dir"))
    if init_from is None or out_dir is None:
        raise UserError(
            "task=export needs the model and where to write it: init_from=outputs/<run> (a run directory, a "
            ".ckpt, a model.pth or a Hugging Face directory) export.dir=<new directory>"
        )
    meta = saved_meta(init_from) if init_from.exists() else None
    if meta is not None and isinstance(meta.get("model"), dict):
        model, _ = load_finetuned(init_from)
    else:
        model = build_model(OmegaConf.to_container(cfg.model), init_from)
    tokenizer_dir = tokenizer_directory(init_from)  # a family's directory, or a run trained from one
    files = write_hf_directory(model.cfg, model.state_dict(), out_dir, tokenizer_dir)
    log.info("Exported %s to %s: %s", init_from, out_dir, ", ".join(f.name for f in files))
    print(out_dir, flush=True)
    return {
        "model_config": model.cfg,
        **model_report(model),
        "init_from": str(init_from),
        "export_dir": str(out_dir),
        "files": [f.name for f in files],
    }
