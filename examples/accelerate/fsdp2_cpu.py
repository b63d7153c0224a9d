"""Real sharding on the CPU: a tiny Ferret trained by 2 processes under PyTorch FSDP2 (`fully_shard`), gloo backend.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 examples/accelerate/fsdp2_cpu.py

(or `accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/accelerate/fsdp2_cpu.py`: accelerate
is then only the launcher; the sharding is torch's own.) About 10 s on 2 cores, mostly imports.

accelerate cannot do this on a CPU: `--config_file examples/accelerate/fsdp.yaml` without a GPU runs DDP (FSDP is
not enabled), with `--cpu` it runs one process, and `--use_fsdp --cpu` is refused (see the header of fsdp.yaml).
Plain torch FSDP2 works on the CPU: every CLIP / Llama / DINOv2 layer and the region sampler is its own
`fully_shard` unit, the model is the root unit, and each rank holds half of every parameter (a DTensor sharded on
dim 0); parameters are all-gathered for forward and backward, gradients reduce-scattered (averaged over ranks).

Rank 0's batches hold regions, rank 1's hold none: this is the case where the region sampler would take part on
one rank only, and a sharded data-parallel run would desynchronise or hang. Ferret adds a zero-weight dummy region
to region-free training batches, so the sampler runs, and its gradients are reduced, on every rank. (With the dummy
region disabled, rank 0 all-gathers the sampler's shards and rank 1 does not: gloo aborts in the first step with
"Received data size doesn't match expected size. Is there a distributed collective mismatch in your code?")

Every rank also trains an unsharded copy of the same model in-process on the concatenation of both ranks' batches,
with the loss that FSDP's gradient averaging implies: the mean of the per-rank losses (each a mean over its own
rank's supervised tokens), not a mean over all tokens of the concatenated batch. The script checks that

- the parameters are sharded: DTensors with a `Shard(0)` placement, each rank holding only its part;
- after backward, the full gradients (the sampler's included) are the same on both ranks and equal the
  reference's, and each rank's loss equals the reference's loss on that rank's rows;
- after the optimizer steps, the full parameters equal the reference's (within `--tolerance`);

then prints `FSDP2_OK` on rank 0 and exits with status 0 (1 if a check failed). `--v2` uses a tiny Ferret-v2
(a DINOv2 tile encoder too); `--stage` picks the trainable parts (default: everything).

On the first forward each rank prints torch's UserWarning that the FSDP2 root "returned a view tensor": that is
the output's `region_hidden_states` (a view of the sampler's features), harmless unless changed in place.

This script is also the test `modeling_tests/test_distributed.py::test_fsdp2_two_cpu_processes_match_one_process`.
"""

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "modeling_tests"))
import tiny_models as tiny  # noqa: E402

from transformers_ferret.training import apply_training_stage  # noqa: E402
from transformers_ferret.modeling_ferret_sampler import FerretRegionSampler  # noqa: E402


SHARDED_BLOCKS = ("CLIPEncoderLayer", "LlamaDecoderLayer", "Dinov2Layer", "FerretRegionSampler")
"""The `fully_shard` units below the root: the same list as `fsdp_transformer_layer_cls_to_wrap` in fsdp.yaml."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--v2", action="store_true", help="a tiny Ferret-v2 (CLIP + DINOv2 tiles) instead of Ferret")
    parser.add_argument("--stage", default=None, help="a training stage (e.g. v1-stage2); default: train everything")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |difference| from the 1-process reference")
    return parser.parse_args(argv)


def build_model(v2: bool, stage: str | None):
    model = (tiny.tiny_ferret_v2_model(seed=0) if v2 else tiny.tiny_ferret_model(seed=0)).train()
    if stage is not None:
        apply_training_stage(model, stage)
    return model


def make_samples(rank: int, step: int, v2: bool) -> list[dict]:
    """Two samples for `rank` at `step`: 2 regions each on rank 0, none on any other rank."""
    num_regions = 2 if rank == 0 else 0
    seeds = [100 * step + 10 * rank + offset for offset in (0, 1)]
    if v2:
        return [tiny.make_v2_sample((1, 2), num_regions, seed) for seed in seeds]
    return [tiny.make_sample(num_regions, seed) for seed in seeds]


def model_inputs(samples: list[dict], v2: bool) -> dict:
    """Right-padded inputs (a row's logits then do not depend on how long the other rows are) and their labels."""
    batch = (tiny.batch_v2_inputs if v2 else tiny.batch_inputs)(samples, padding_side="right")
    if int(batch["region_counts"].sum()) == 0:  # a region-free batch, as a collator would make it
        del batch["region_points"], batch["region_counts"]
    ids = batch["input_ids"]
    placeholders = (ids == tiny.IMAGE_TOKEN_ID) | (ids == tiny.REGION_TOKEN_ID)
    batch["labels"] = ids.masked_fill(placeholders | (batch["attention_mask"] == 0), -100)
    return batch


def token_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal-LM loss: next-token cross-entropy averaged over the supervised (label != -100) tokens."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def shard(model, mesh) -> None:
    for module in model.modules():
        if type(module).__name__ in SHARDED_BLOCKS:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (a collective: every rank must call it, in the same order)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    torch.set_num_threads(1)  # the tiny model's ops are too small for threads; 2 ranks share the cores
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world_size,))

    def log(message: str) -> None:
        if rank == 0:
            print(message, flush=True)

    failures = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            failures.append(message)
            print(f"[rank {rank}] FAILED: {message}", flush=True)

    model = build_model(args.v2, args.stage)
    reference = build_model(args.v2, args.stage)  # the same weights (seed 0), trained unsharded in this process
    names = [name for name, _ in model.named_parameters()]
    shard(model, mesh)
    sharded_params = dict(model.named_parameters())
    reference_params = dict(reference.named_parameters())
    trainable = [name for name in names if reference_params[name].requires_grad]
    sampler_weight = next(
        f"{prefix}.layers.0.fusion.weight" for prefix, module in reference.named_modules()
        if isinstance(module, FerretRegionSampler)
    )  # fmt: skip
    log(f"{world_size} processes, {type(model).__name__}, {len(trainable)}/{len(names)} parameters trained")

    # (a) every parameter is a DTensor sharded on dim 0; this rank holds only its rows (rank 1 fewer if they are odd)
    local_numel = 0
    for name in names:
        param, whole = sharded_params[name], reference_params[name].detach()
        if not (isinstance(param, DTensor) and param.placements == (Shard(0),) and param.shape == whole.shape):
            check(False, f"{name} is not a DTensor of shape {tuple(whole.shape)} sharded on dim 0")
            continue
        rows = -(-whole.shape[0] // world_size)
        local = param.to_local()
        check(torch.equal(local, whole[rank * rows : (rank + 1) * rows]), f"{name}: this rank's shard is not its rows")
        local_numel += local.numel()
    total = torch.tensor([local_numel])
    dist.all_reduce(total)
    full_numel = sum(p.numel() for p in reference.parameters())
    check(int(total) == full_numel and local_numel < full_numel, "the shards do not partition the parameters")
    units = Counter(type(module).__name__ for module in model.modules() if isinstance(module, FSDPModule))
    log(
        f"fully_shard units: {dict(units)}; rank 0 holds {local_numel} of {full_numel} parameter values, "
        f"e.g. {sampler_weight} {tuple(sharded_params[sampler_weight].to_local().shape)} of "
        f"{tuple(reference_params[sampler_weight].shape)}, placements {sharded_params[sampler_weight].placements}"
    )

    # eps 1e-6 rather than 1e-8: CLIP's key biases get a gradient that is 0 in exact arithmetic (softmax ignores a
    # shift shared by all keys) and ~1e-10 of rounding noise here, which Adam with eps 1e-8 would blow up into steps
    # of ~lr in a direction that differs between sharded and unsharded runs; the other gradients are above 1e-4
    optimizer = torch.optim.AdamW([sharded_params[n] for n in trainable], lr=args.learning_rate, eps=1e-6)
    reference_optimizer = torch.optim.AdamW([reference_params[n] for n in trainable], lr=args.learning_rate, eps=1e-6)
    worst_grad = worst_loss = 0.0
    for step in range(args.steps):
        batch = model_inputs(make_samples(rank, step, args.v2), args.v2)
        loss = model(**batch).loss  # the model's own loss on this rank's batch
        loss.backward()

        # the reference: one forward on all ranks' rows; the loss FSDP optimises is the mean of the per-rank losses
        rank_samples = [make_samples(other, step, args.v2) for other in range(world_size)]
        everything = model_inputs([sample for samples in rank_samples for sample in samples], args.v2)
        labels = everything.pop("labels")
        logits = reference(**everything).logits
        rank_losses = []
        for other in range(world_size):
            rows = slice(2 * other, 2 * other + 2)
            length = model_inputs(rank_samples[other], args.v2)["input_ids"].shape[1]
            rank_losses.append(token_mean_loss(logits[rows, :length], labels[rows, :length]))
        reference_loss = torch.stack(rank_losses).mean()
        reference_loss.backward()
        loss_error = abs(loss.item() - rank_losses[rank].item())
        check(loss_error <= args.tolerance, f"step {step}: loss {loss.item()} != reference {rank_losses[rank].item()}")
        worst_loss = max(worst_loss, loss_error)

        # (b) the full gradients, gathered from the shards, agree across ranks and with the reference
        for name in trainable:
            grad, reference_grad = sharded_params[name].grad, reference_params[name].grad
            check((grad is None) == (reference_grad is None), f"step {step}: {name} has a gradient on one side only")
            if grad is None or reference_grad is None:
                continue
            grad = full(grad)
            gathered = [torch.empty_like(grad) for _ in range(world_size)]
            dist.all_gather(gathered, grad.contiguous())
            check(all(torch.equal(g, gathered[0]) for g in gathered), f"step {step}: {name} gradient differs by rank")
            error = (grad - reference_grad).abs().max().item()
            check(error <= args.tolerance, f"step {step}: {name} gradient off by {error:.3g} from the reference")
            worst_grad = max(worst_grad, error)
            if name == sampler_weight:
                log(
                    f"step {step}: loss {loss.item():.5f} (rank 0), reference {reference_loss.item():.5f}; "
                    f"sampler fusion grad |g| {grad.norm().item():.5f}, max |g - g_ref| {error:.2e}"
                )
        optimizer.step()
        optimizer.zero_grad()
        reference_optimizer.step()
        reference_optimizer.zero_grad()

    # (c) after the steps the full parameters equal the reference's
    worst_param = 0.0
    for name in names:
        error = (full(sharded_params[name].detach()) - reference_params[name].detach()).abs().max().item()
        check(error <= args.tolerance, f"after {args.steps} steps: {name} off by {error:.3g} from the reference")
        worst_param = max(worst_param, error)
    moved = (full(sharded_params[sampler_weight].detach()) - build_model(args.v2, args.stage).get_parameter(
        sampler_weight)).abs().max().item()  # fmt: skip
    check(moved > 10 * args.tolerance or sampler_weight not in trainable, "the sampler was not trained")

    failed = torch.tensor([len(failures)])
    dist.all_reduce(failed)
    log(
        f"max |difference| from the 1-process reference: loss {worst_loss:.2e}, gradients {worst_grad:.2e}, "
        f"parameters after {args.steps} steps {worst_param:.2e} (the sampler moved {moved:.2e}); "
        f"{time.time() - start:.1f} s"
    )
    if rank == 0 and int(failed) == 0:
        print("FSDP2_OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # Leave at once, as ddp_region_free_rank.py does: freeing the sharded model and its gloo state while the
    # interpreter shuts down can deadlock on the GIL in gloo's worker threads; everything is printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if int(failed) else 0)


if __name__ == "__main__":
    main()
