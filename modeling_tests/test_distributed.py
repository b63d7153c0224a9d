"""Two CPU processes (gloo), one of them with region-free batches: DDP through accelerate completes 3 steps without
hanging, and PyTorch FSDP2 (`fully_shard`) really shards the model and trains it as one process would."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run_launcher(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs a multi-process launcher in its own process group; on timeout kills that group, workers included (a
    plain `subprocess.run` timeout kills the launcher only and can leave hung workers behind)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[:4]} did not finish in {timeout} s (hung?)\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_ddp_with_a_region_free_rank_completes_three_steps():
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    command = [accelerate, "launch", "--config_file", str(REPO / "examples/accelerate/ddp_cpu.yaml"),
               str(REPO / "examples/accelerate/ddp_region_free_rank.py")]  # fmt: skip
    result = run_launcher(command, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes, DistributedDataParallel" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "step 2:" in result.stdout and "DDP_OK" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_fsdp2_two_cpu_processes_match_one_process(version):
    """examples/accelerate/fsdp2_cpu.py under torchrun: every parameter a DTensor sharded over the 2 ranks; rank 1's
    batches hold no region; the gathered gradients (the region sampler's included) are equal on both ranks and equal
    those of the unsharded model on both ranks' batches (mean of the per-rank losses), and after 3 AdamW steps the
    parameters match that reference within 1e-5. The script checks all of this on both ranks and exits 1 on any
    mismatch; ~15 s a version on 2 cores, mostly imports."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", "0.1", str(REPO / "examples/accelerate/fsdp2_cpu.py"), "--steps", "3",
               "--tolerance", "1e-5"] + (["--v2"] if version == "v2" else [])  # fmt: skip
    result = run_launcher(command, timeout=180)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "2 processes, FSDPFerretForConditionalGeneration" in result.stdout, output
    units = ["CLIPEncoderLayer': 2", "FerretRegionSampler': 1", "LlamaDecoderLayer': 2"]
    units += ["FerretForConditionalGeneration': 1"] + (["Dinov2Layer': 2"] if version == "v2" else [])
    assert all(f"'FSDP{unit}" in result.stdout for unit in units), output  # each block its own fully_shard unit
    assert "step 2:" in result.stdout and "FAILED" not in result.stdout, output
    assert result.stdout.count("FSDP2_OK") == 1, output


def test_train_sft_warns_when_accelerate_sets_up_less_than_launched():
    """train_sft.py's check of the launcher's request against accelerate's state: fsdp.yaml on a CPU-only machine
    (seen: MULTI_CPU, 8 processes, bf16), and processes launched that accelerate does not see."""
    from accelerate.utils import DistributedType

    spec = importlib.util.spec_from_file_location("train_sft", REPO / "examples" / "train_sft.py")
    train_sft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_sft)

    def state(distributed_type, num_processes):
        return SimpleNamespace(distributed_type=distributed_type, num_processes=num_processes, mixed_precision="bf16",
                               device=torch.device("cpu"))  # fmt: skip

    fsdp_launch = {"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8"}
    (warning,) = train_sft.distributed_setup_warnings(state(DistributedType.MULTI_CPU, 8), fsdp_launch)
    assert "did not enable FSDP" in warning and "MULTI_CPU with 8 process(es), mixed precision bf16" in warning
    assert train_sft.distributed_setup_warnings(state(DistributedType.FSDP, 8), fsdp_launch) == []
    deepspeed_launch = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}
    assert train_sft.distributed_setup_warnings(state(DistributedType.DEEPSPEED, 2), deepspeed_launch) == []
    (warning,) = train_sft.distributed_setup_warnings(state(DistributedType.MULTI_CPU, 2), deepspeed_launch)
    assert "did not enable DeepSpeed" in warning
    ddp_launch = {"WORLD_SIZE": "2"}
    assert train_sft.distributed_setup_warnings(state(DistributedType.MULTI_CPU, 2), ddp_launch) == []
    (warning,) = train_sft.distributed_setup_warnings(state(DistributedType.NO, 1), ddp_launch)
    assert "2 processes were launched" in warning and "each process trains alone" in warning
    assert train_sft.distributed_setup_warnings(state(DistributedType.NO, 1), {}) == []  # plain `python train_sft.py`
