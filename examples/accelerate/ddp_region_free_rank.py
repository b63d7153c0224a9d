"""Distributed smoke run: 2 processes, rank 1's batches hold no region; 3 optimizer steps must complete.

    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/accelerate/ddp_region_free_rank.py

(On this CPU-only machine `accelerate launch` with `--cpu` starts one process; the config uses the multi-process
launcher and the script asks for the CPU, which gives DDP over gloo.)

Without the model's zero-weight dummy region, the region sampler would get no gradient on rank 1; DDP would then
wait for its gradients (or fail "Expected to have finished reduction") and ZeRO-3 would hang (DeepSpeed #7170).
"""

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "modeling_tests"))
from tiny_models import IMAGE_TOKEN_ID, batch_inputs, make_sample, tiny_ferret_model  # noqa: E402

from transformers_ferret.training import apply_training_stage  # noqa: E402


def main():
    accelerator = Accelerator(cpu=True)
    model = tiny_ferret_model(seed=0).train()
    apply_training_stage(model, "v1-stage2")  # CLIP frozen: its unused last layer then needs no gradient either
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    rank = accelerator.process_index
    sampler_before = accelerator.unwrap_model(model).model.region_sampler.output_projection.weight.detach().clone()
    for step in range(3):
        num_regions = 2 if rank == 0 else 0
        batch = batch_inputs([make_sample(num_regions, seed=10 * step + rank + offset) for offset in (0, 5)])
        if num_regions == 0:
            del batch["region_points"], batch["region_counts"]
        labels = batch["input_ids"].masked_fill(batch["input_ids"] == IMAGE_TOKEN_ID, -100)
        loss = model(**batch, labels=labels).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.print(f"step {step}: loss {loss.item():.4f}")
    sampler_after = accelerator.unwrap_model(model).model.region_sampler.output_projection.weight.detach()
    changed = bool((sampler_after != sampler_before).any())
    gathered = accelerator.gather(torch.tensor([float(changed)]))
    accelerator.print(f"sampler updated on every rank: {gathered.tolist()}; {accelerator.num_processes} processes, {type(model).__name__}")
    if accelerator.is_main_process and gathered.min() == 1:
        print("DDP_OK", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group: gloo's threads must not outlive the interpreter
    # Leave without freeing the DDP model. Freeing it (when this function returns) destroys its gloo process group,
    # which joins gloo's worker threads while this thread holds the GIL; a worker still freeing the finished
    # all-gather needs the GIL to drop its tensor, so both wait for ever (seen once in CI, with gdb: the main thread in
    # ~Reducer -> ~ProcessGroupGloo -> std::thread::join, the worker in ~AsyncAllgatherWork -> take_gil). Everything
    # this script does is done and printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
