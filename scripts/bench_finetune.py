"""Fine-tuning step benchmark (issue 18): one training step of chapter 6 / appendix E, gpt_lab beside
Hugging Face ``transformers`` + ``peft`` on the same architecture.

Shapes: GPT-2 small with qkv bias and a 2-class head, a batch of 8 texts of 120 tokens (the SMS
data's padded length), AdamW. Rows (each in a fresh interpreter, so its peak memory is its own):

- ``gpt_lab lora fp32`` / ``bf16``: appendix E's LoRA (rank 16, alpha 16, every Linear and the head);
- ``peft lora fp32`` / ``bf16``: ``GPT2ForSequenceClassification`` with ``peft`` LoRA rank 16 on
  every Linear (``c_attn``, ``c_proj``, ``c_fc``, ``score``; GPT-2's fused query/key/value Linear
  gets one adapter where gpt_lab's three Linears get three);
- ``gpt_lab last_block fp32`` and ``gpt_lab all fp32``: chapter 6's part, and full fine-tuning.

bf16 is ``torch.autocast("cpu", torch.bfloat16)``, what ``trainer=cpu_bf16`` runs (Lightning's
bf16-mixed). A step is forward, cross-entropy at the last position, backward and ``AdamW.step``;
the median of ``--reps`` steps after ``--warmup`` is reported, with the row's peak RSS.

    python scripts/bench_finetune.py                    # gpt2_small (minutes on an idle machine)
    python scripts/bench_finetune.py --model tiny --reps 2   # a smoke test
    python scripts/bench_finetune.py --attention --reps 10   # bf16 attention: fused kernel / written out
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    "gpt_lab lora fp32",
    "peft lora fp32",
    "gpt_lab lora bf16",
    "peft lora bf16",
    "gpt_lab last_block fp32",
    "gpt_lab all fp32",
)
SIZES = {
    "gpt2_small": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "tiny": {"emb_dim": 32, "n_layers": 2, "n_heads": 4},
}


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _gpt_lab_model(size: str, finetune: str) -> tuple[Any, Any]:
    import torch

    from gpt_lab.model.finetune import select_trainable
    from gpt_lab.model.gpt import GPTModel

    cfg = {"vocab_size": 50257, "context_length": 1024, **SIZES[size], "drop_rate": 0.0, "qkv_bias": True}
    torch.manual_seed(123)
    model = GPTModel(cfg)
    model.out_head = torch.nn.Linear(cfg["emb_dim"], 2)
    select_trainable(model, finetune, {"rank": 16, "alpha": 16, "targets": ["all"]})

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(x, last_only=True)[:, -1]

    return model, logits


def _peft_model(size: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from gpt_lab.tokenizer import ENDOFTEXT_ID

    s = SIZES[size]
    cfg = transformers.GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=s["emb_dim"],
        n_layer=s["n_layers"],
        n_head=s["n_heads"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        num_labels=2,
        pad_token_id=ENDOFTEXT_ID,
    )
    torch.manual_seed(123)
    base = transformers.GPT2ForSequenceClassification(cfg)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc", "score"])
    model = get_peft_model(base, lora)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(input_ids=x).logits

    return model, logits


def run_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row in this process: the median step time and the peak RSS."""
    import torch

    from gpt_lab.tokenizer import ENDOFTEXT_ID

    torch.set_num_threads(args.threads)
    lib, finetune, precision = name.split()
    model, logits = _peft_model(args.model) if lib == "peft" else _gpt_lab_model(args.model, finetune)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    # No padding id (<|endoftext|>) in the batch: GPT-2's score reads the last position.
    x = torch.randint(0, ENDOFTEXT_ID, (args.batch, args.tokens), generator=g)
    y = torch.randint(0, 2, (args.batch,), generator=g)
    bf16 = precision == "bf16"

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(logits(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.reps)]
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "trainable_params": sum(p.numel() for p in params),
        "peak_rss_mb": _peak_rss() / 2**20,
    }


def attention_table(args: argparse.Namespace) -> None:
    """bf16 attention forward + backward, PyTorch's fused kernel against ``attention_written_out``,
    at batch 8, 12 heads of 64: where ``EXPLICIT_ATTENTION_MAX_TOKENS`` comes from."""
    import torch
    import torch.nn.functional as F

    from gpt_lab.model.gpt import attention_written_out

    torch.set_num_threads(args.threads)

    def seconds(fn: Any, t: int) -> float:
        g = torch.Generator().manual_seed(0)
        # as the model makes them: (b, t, d) projections viewed as (b, heads, t, 64)
        rows = [torch.randn(8, t, 768, generator=g).bfloat16().requires_grad_() for _ in range(3)]
        grad = torch.randn(8, 12, t, 64).bfloat16()
        times = []
        for _ in range(args.reps + 3):
            t0 = time.perf_counter()
            q, k, v = (r.view(8, t, 12, 64).transpose(1, 2) for r in rows)
            fn(q, k, v).backward(grad)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[3:])

    def fused(q: Any, k: Any, v: Any) -> Any:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def written(q: Any, k: Any, v: Any) -> Any:
        return attention_written_out(q, k, v, causal=True)

    print("tokens  fused ms  written-out ms  fused / written")
    for t in (64, 120, 128, 192, 256, 384, 512):
        a, b = seconds(fused, t), seconds(written, t)
        print(f"{t:6d}  {a * 1e3:8.2f}  {b * 1e3:14.2f}  {a / b:15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SIZES), default="gpt2_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 timed steps a row (make bench ARGS=--quick)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS, metavar="ROW")
    parser.add_argument("--json", type=Path, default=ROOT / "outputs" / "bench" / "finetune.json")
    parser.add_argument("--attention", action="store_true", help="only the bf16 attention table (fused / written out)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, its numbers as JSON
    args = parser.parse_args()
    if args.quick:
        args.reps = min(args.reps, 2)
    if args.attention:
        attention_table(args)
        return
    if args.row:
        print(json.dumps(run_row(args.row, args)))
        return
    results: dict[str, Any] = {"model": args.model, "batch": args.batch, "tokens": args.tokens, "rows": {}}
    for name in args.rows:
        argv = [sys.executable, __file__, "--row", name, *sys.argv[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            print(f"{name:26s} failed: {tail[0]}")
            results["rows"][name] = {"error": tail[0]}
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        results["rows"][name] = row
        print(
            f"{name:26s} {row['median_s']:8.3f} s/step  {row['trainable_params']:>12,} trainable  "
            f"peak {row['peak_rss_mb']:8.0f} MiB"
        )
    rows = results["rows"]
    for precision in ("fp32", "bf16"):
        ours, theirs = rows.get(f"gpt_lab lora {precision}", {}), rows.get(f"peft lora {precision}", {})
        if "median_s" in ours and "median_s" in theirs:
            print(f"LoRA {precision}: gpt_lab {theirs['median_s'] / ours['median_s']:.2f}x peft's speed")
    a, b = rows.get("gpt_lab lora fp32", {}), rows.get("gpt_lab lora bf16", {})
    if "median_s" in a and "median_s" in b:
        print(f"gpt_lab LoRA bf16: {a['median_s'] / b['median_s']:.2f}x fp32")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
