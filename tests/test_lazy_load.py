"""Issue 26 point 2 / 7: a family's weights are read without a second copy of the file in memory.

safetensors' memory map keeps every page it touched in the process until it is closed; read whole,
a bf16 file's pages stayed beside the float32 weights made from them (a 1B model peaked 1.55x its
float32 size). ``iter_tensors`` reopens the map every ``REMAP_BYTES``. Measured in a fresh
interpreter, the peak resident memory over its baseline is the float32 tensors plus at most about
one remap window — not plus the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

MIB = 2**20
SCRIPT = """
import json, sys
from pathlib import Path
import torch
import gpt_lab.model.hf_files as hf_files
hf_files.REMAP_BYTES = 8 * 2**20
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
torch.zeros(1).float()  # the allocator and torch's own pages, before the baseline
base = peak()
kept = {name: tensor.float() for name, tensor in hf_files.iter_tensors([Path(sys.argv[1])])}
print(json.dumps({"extra": peak() - base, "kept": sum(t.numel() * 4 for t in kept.values())}))
"""


def test_reading_a_safetensors_file_does_not_keep_its_pages(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    file = tmp_path / "model.safetensors"
    # 12 tensors of 16 MiB in bf16 (192 MiB on disk, 384 MiB as float32).
    save_file({f"w{i}": torch.randn(2048, 4096).bfloat16() for i in range(12)}, str(file))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["kept"] == 12 * 2048 * 4096 * 4
    # Mapped whole, the file's 192 MiB would stay beside the 384 MiB: 576 MiB and more.
    assert got["extra"] < got["kept"] + 64 * MIB, got
