"""Two CPU processes under DDP (gloo), one of them with region-free batches, complete 3 steps without hanging."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ddp_with_a_region_free_rank_completes_three_steps():
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    command = [accelerate, "launch", "--config_file", str(REPO / "examples/accelerate/ddp_cpu.yaml"),
               str(REPO / "examples/accelerate/ddp_region_free_rank.py")]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes, DistributedDataParallel" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "step 2:" in result.stdout and "DDP_OK" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
