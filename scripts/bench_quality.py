"""What bf16 and int8 weights cost in quality (issue 28): chapter 5's model on its story.

    python scripts/bench_quality.py [--run DIR] [--train-overrides ...] [--json PATH]

Where the run directory (``--run``, default ``outputs/bench/quality_ch05``) holds no ``model.pth``
yet, it first trains chapter 5's preset there (``python scripts/run.py experiment=ch05``, the full
run: 10 epochs on the-verdict, a few minutes on a quiet machine; ``--train-overrides`` adds
overrides); otherwise it measures the model already there.
Then, for ``generation.weights=fp32|bf16|int8`` (gpt_lab/generation/weights.py):

- the validation loss over the book's validation loader (the story's last 10 % of characters,
  windows of the context length, stride = context length), and its change against fp32;
- top-1 agreement with fp32: over every position of the whole story (windows of the context
  length, stride = context length), how often the precision's most likely next token is fp32's.

Targets: validation loss within 1 % (bf16) and 2 % (int8) of fp32; agreement >= 99 % (bf16) and
>= 97 % (int8). Prints one table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from gpt_lab.data.text import GPTDatasetV1, packaged_text, split_text
from gpt_lab.generation.weights import use_weights
from gpt_lab.model.weights import build_model
from gpt_lab.tokenizer import get_tokenizer
from gpt_lab.training.loss import batch_loss

ROOT = Path(__file__).resolve().parents[1]

STORY = "gpt_lab:the-verdict.txt"
TARGETS = {"bf16": {"loss": 0.01, "agreement": 0.99}, "int8": {"loss": 0.02, "agreement": 0.97}}


def train_ch05(run_dir: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), "experiment=ch05", f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[1:] + overrides), flush=True)
    subprocess.run([*cmd, *overrides], check=True, cwd=ROOT)


@torch.no_grad()
def logits_and_loss(model: torch.nn.Module, windows: GPTDatasetV1) -> tuple[torch.Tensor, float]:
    """Every window's logits' argmax (windows, t) and the mean loss per target token."""
    tops, total, count = [], 0.0, 0
    for i in range(len(windows)):
        x, y = windows[i]
        logits = model(x[None])
        tops.append(logits.argmax(-1)[0])
        total += float(batch_loss(logits, y[None])) * y.numel()
        count += y.numel()
    return torch.stack(tops), total / count


def measure(run_dir: Path) -> dict[str, Any]:
    tokenizer = get_tokenizer()
    text = packaged_text(STORY).read_text(encoding="utf-8")
    _, val_text = split_text(text, 0.9)
    out: dict[str, Any] = {"run": str(run_dir)}
    fp32_top = None
    for weights in ("fp32", "bf16", "int8"):
        model = use_weights(build_model(_run_model_config(run_dir), weights_file(run_dir)), weights)
        model.eval()
        ctx = model.context_length
        val = GPTDatasetV1(tokenizer.encode(val_text, allowed_special={"<|endoftext|>"}), ctx, ctx)
        story = GPTDatasetV1(tokenizer.encode(text, allowed_special={"<|endoftext|>"}), ctx, ctx)
        _, val_loss = logits_and_loss(model, val)
        top, _ = logits_and_loss(model, story)
        fp32_top = top if fp32_top is None else fp32_top
        out[weights] = {
            "val_loss": val_loss,
            "agreement_top1": float((top == fp32_top).float().mean()),
            "positions": top.numel(),
        }
        print(f"  {weights}: val loss {val_loss:.4f}, top-1 agreement {out[weights]['agreement_top1']:.4f}", flush=True)
    base = out["fp32"]["val_loss"]
    for weights, t in TARGETS.items():
        row = out[weights]
        row["val_loss_change"] = row["val_loss"] / base - 1
        row["met"] = abs(row["val_loss_change"]) <= t["loss"] and row["agreement_top1"] >= t["agreement"]
    return out


def weights_file(run_dir: Path) -> Path:
    """The run's ``model.pth``; for a run stopped early (SIGTERM), its ``checkpoints/last.ckpt``."""
    pth = run_dir / "model.pth"
    if pth.is_file():
        return pth
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    print(f"  {run_dir} has no model.pth (stopped early?): measuring {ckpt}", flush=True)
    return ckpt


def _run_model_config(run_dir: Path) -> dict[str, Any]:
    """The model config the training run composed (its ``.hydra/config.yaml``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml").model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        type=Path,
        default=ROOT / "outputs" / "bench" / "quality_ch05",
        help="a chapter-5 run directory (trained there first if it holds no model.pth)",
    )
    parser.add_argument("--train-overrides", nargs="*", default=[], help="extra overrides of the training run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench" / "quality.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = args.run.resolve()
    if not (run_dir / "model.pth").is_file() and not (run_dir / "checkpoints" / "last.ckpt").is_file():
        train_ch05(run_dir, args.train_overrides)
    results = measure(run_dir)
    print("\n## chapter 5's model on the-verdict: weights precision against fp32")
    for weights in ("bf16", "int8"):
        r, t = results[weights], TARGETS[weights]
        print(
            f"  [{'met' if r['met'] else 'MISSED'}] {weights}: val loss {r['val_loss']:.4f} "
            f"({100 * r['val_loss_change']:+.2f} % vs fp32 {results['fp32']['val_loss']:.4f}; target within "
            f"{100 * t['loss']:.0f} %), top-1 agreement {100 * r['agreement_top1']:.2f} % over "
            f"{r['positions']} positions (target >= {100 * t['agreement']:.0f} %)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
