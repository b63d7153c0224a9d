"""Requests per second of vLLM (with this package's plugin) against transformers' `generate`, for a batch of concurrent
referring requests on the shipped tiny Ferret-v2 checkpoint, measured side by side in one process.

Run with the Python of the vLLM environment (README, "Serving with vLLM"), which also has transformers and this
package:

    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/vllm_serving.py [--requests 16] [--tokens 32] [--rounds 3]

Every request has its own image (four sizes, so three tile grids) and one or two regions (box, point, free-form mask).
Both engines produce exactly `--tokens` new tokens per request (EOS ignored), greedy, float32. transformers runs the
whole batch as one left-padded `generate` call; vLLM gets all requests in one `LLM.generate` call and batches them
itself (continuous batching, paged KV cache). Rounds alternate A B B A after a warm-up of each; the table gives the
median requests/s of each and their ratio, and `--output` (default `benchmarks/results_vllm.json`) every timing.
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

CHECKPOINT = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "ferret-shapes-tiny"
SIZES = [(160, 120), (220, 100), (90, 200), (140, 140)]  # (width, height): grids 2x2, 1x2, 2x1, 2x2


def make_requests(count: int, processor) -> list[dict]:
    """`count` chats, each with its own synthetic image and regions, rendered with the checkpoint's chat template."""
    from PIL import Image

    rng = np.random.default_rng(0)
    requests = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 4 : height // 2, width // 3 : 2 * width // 3] = True
        regions = [[{"box": [5, 5, width // 2, height // 2]}], [{"point": [width // 2, height // 3]}], [{"mask": mask}]]
        chosen = regions[index % 3] + (regions[(index + 1) % 3] if index % 2 else [])
        words = " and ".join(["<region>"] * len(chosen))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is {words}?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        requests.append({"prompt": prompt, "image": image, "regions": chosen})
    return requests


def transformers_round(model, processor, requests, tokens: int) -> float:
    import torch

    inputs = processor(
        images=[request["image"] for request in requests], text=[request["prompt"] for request in requests],
        regions=[request["regions"] for request in requests], padding=True, padding_side="left", return_tensors="pt",
    )  # fmt: skip
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return time.perf_counter() - start


def vllm_round(llm, requests, tokens: int) -> float:
    from vllm import SamplingParams

    prompts = [
        {"prompt": request["prompt"], "multi_modal_data": {"image": request["image"], "region": request["regions"]}}
        for request in requests
    ]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(output.outputs[0].token_ids) == tokens for output in outputs)
    return elapsed


def _children_cpu_seconds() -> float:
    import psutil

    processes = psutil.Process().children(recursive=True)
    return sum(sum(process.cpu_times()[:2]) for process in processes if process.is_running())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of the transformers side (vLLM's CPU worker binds one per core)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("results_vllm.json")))
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import torch
    import transformers
    import vllm
    from vllm import LLM

    from transformers_ferret import FerretForConditionalGeneration, FerretProcessor

    processor = FerretProcessor.from_pretrained(CHECKPOINT)
    model = FerretForConditionalGeneration.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    llm = LLM(model=str(CHECKPOINT), dtype="float32")
    torch.set_num_threads(args.threads)
    requests = make_requests(args.requests, processor)

    runners = {"transformers": lambda: transformers_round(model, processor, requests, args.tokens),
               "vllm": lambda: vllm_round(llm, requests, args.tokens)}  # fmt: skip
    for run in runners.values():  # warm-up
        run()
    timings = {name: [] for name in runners}
    order = ["transformers", "vllm", "vllm", "transformers"]
    engine_cpu_while_transformers = 0.0  # CPU seconds vLLM's idle processes take from the transformers rounds
    for _ in range(args.rounds):
        for name in order:
            before = _children_cpu_seconds()
            timings[name].append(runners[name]())
            if name == "transformers":
                engine_cpu_while_transformers += _children_cpu_seconds() - before
    rate = {name: args.requests / statistics.median(values) for name, values in timings.items()}
    result = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "vllm": vllm.__version__},
        "settings": vars(args),
        "seconds_per_batch": timings,
        "requests_per_second": rate,
        "ratio_vllm_over_transformers": rate["vllm"] / rate["transformers"],
        "vllm_cpu_seconds_during_transformers_rounds": engine_cpu_while_transformers,
        "transformers_seconds_total": sum(timings["transformers"]),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.requests} concurrent region requests, {args.tokens} new tokens each, float32, CPU")
    print(f"{'engine':<14}{'median s/batch':>16}{'requests/s':>12}")
    for name, values in timings.items():
        print(f"{name:<14}{statistics.median(values):>16.3f}{rate[name]:>12.2f}")
    print(f"vLLM / transformers: {result['ratio_vllm_over_transformers']:.2f}x requests/s")
    print(f"vLLM's processes used {engine_cpu_while_transformers:.1f} CPU s during the "
          f"{result['transformers_seconds_total']:.1f} s of transformers rounds")


if __name__ == "__main__":  # vLLM starts its engine in a subprocess that re-imports this file
    main()
