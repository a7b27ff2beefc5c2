"""scripts/gpu_check.sh in its CPU mode: the script a GPU machine runs keeps working between the
times one is lent (its checks are the same, only the device and the evaluation dtype differ)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_passes_on_the_cpu(shared_data):
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "ZHTUNE_DATA_DIR": str(shared_data),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    status = [line.split()[0] for line in lines if line.split()[0] in ("PASS", "FAIL")]
    assert status == ["PASS"] * 12, proc.stdout  # 6 checks, 6 acceptance cases (tiny shapes)
    cases = [line.split()[1] for line in lines if line.startswith("PASS") and "tokens/s" in line]
    assert cases == [f"{m}/{c}:" for m in ("llama-tiny", "qwen2-tiny") for c in ("bf16", "bf16-gc", "nf4-gc")]
    assert lines[-1] == "gpu_check: all passed"
