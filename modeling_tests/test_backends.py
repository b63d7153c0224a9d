"""Attention backends, compilation, reduced-precision and `device_map` loading of Ferret; a smoke run of the benchmarks.

These check correctness, not speed (the speed figures are in `benchmarks/run.py`).
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import (
    batch_inputs,
    batch_v2_inputs,
    make_sample,
    make_v2_sample,
    tiny_ferret_model,
    tiny_ferret_v2_model,
)
from transformers import CompileConfig

from transformers_ferret import FerretForConditionalGeneration


REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("decode", "prefill", "sampler", "training", "processor", "backends", "growth")


def _v1():
    return tiny_ferret_model(seed=0), batch_inputs([make_sample(2, seed=1), make_sample(1, seed=2)])


def _v2():
    samples = [make_v2_sample((1, 2), 2, seed=1), make_v2_sample((2, 2), 1, seed=2)]
    return tiny_ferret_v2_model(seed=0), batch_v2_inputs(samples)


MODELS = {"v1": _v1, "v2": _v2}


@pytest.fixture(scope="module")
def saved_v1(tmp_path_factory):
    model, inputs = _v1()
    folder = tmp_path_factory.mktemp("ferret_v1")
    model.save_pretrained(folder)
    return folder, model, inputs


def _logits(model, inputs):
    with torch.inference_mode():
        return model(**inputs).logits.float()


def _greedy(model, inputs, new_tokens=6, **kwargs):
    with torch.inference_mode():
        return model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs
        )


@pytest.mark.parametrize("version", MODELS)
def test_sdpa_is_the_default_and_matches_eager(version, tmp_path):
    model, inputs = MODELS[version]()
    config = model.config
    sub_configs = [config, config.text_config, config.vision_config]
    if config.tile_vision_config is not None:
        sub_configs.append(config.tile_vision_config)
    assert [sub._attn_implementation for sub in sub_configs] == ["sdpa"] * len(sub_configs)

    model.save_pretrained(tmp_path)
    loaded = FerretForConditionalGeneration.from_pretrained(tmp_path).eval()
    eager = FerretForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    assert eager.config.vision_config._attn_implementation == "eager"
    # left padding: a padding position attends to nothing, and the two backends fill that row differently (eager with
    # a uniform softmax over masked scores, SDPA with zeros); its logits are never used, so only real tokens compare
    real = inputs["attention_mask"].bool()
    assert not real.all()
    sdpa_logits, eager_logits = _logits(loaded, inputs), _logits(eager, inputs)
    torch.testing.assert_close(sdpa_logits[real], eager_logits[real], rtol=1e-4, atol=1e-5)
    assert torch.equal(_greedy(loaded, inputs), _greedy(eager, inputs))


def test_static_cache_generation_matches_dynamic_cache():
    model, inputs = _v1()
    assert torch.equal(_greedy(model, inputs), _greedy(model, inputs, cache_implementation="static"))


def _compile_config(backend: str) -> CompileConfig:
    config = CompileConfig(fullgraph=False, mode="default", backend=backend)
    config._compile_all_devices = True  # generate auto-compiles only on CUDA-like devices unless told otherwise
    return config


def test_compiled_static_cache_decoding_gives_the_eager_tokens():
    """`generate` with a static cache compiles the decoding forward; greedy tokens must not change.

    The `aot_eager` backend runs the whole `torch.compile` pipeline (Dynamo graph capture with its guards and graph
    breaks, AOT autograd) except Inductor's C++ code generation, which alone takes 20 to 60 s for even this tiny model
    on a busy 2-core CPU with a cold cache (12 s warm); the Inductor test below covers that part; `benchmarks/run.py`
    times Inductor (cold cache) on a larger model.
    """
    torch._dynamo.reset()
    model, inputs = _v1()
    eager = _greedy(model, inputs, cache_implementation="static")
    compile_config = _compile_config("aot_eager")
    first = _greedy(model, inputs, cache_implementation="static", compile_config=compile_config)
    again = _greedy(model, inputs, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(first, eager)
    assert torch.equal(again, eager)


def test_inductor_static_cache_decoding_gives_the_eager_tokens():
    torch._dynamo.reset()
    model, inputs = _v1()
    eager = _greedy(model, inputs, cache_implementation="static")
    compiled = _greedy(model, inputs, cache_implementation="static", compile_config=_compile_config("inductor"))
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_loading_gives_finite_logits_close_to_fp32(saved_v1, dtype):
    folder, model, inputs = saved_v1
    reference = _logits(model, inputs)
    loaded = FerretForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    assert {parameter.dtype for parameter in loaded.parameters()} == {dtype}
    with torch.inference_mode():
        outputs = loaded(**inputs)
    assert outputs.region_hidden_states.dtype == dtype  # the region path runs in the loaded dtype too
    logits = outputs.logits.float()
    assert torch.isfinite(logits).all()
    relative = (logits - reference).abs().max() / reference.abs().max()
    assert relative < 3e-2, f"max |logits - fp32| / max |fp32| = {relative:.2e}"
    generated = _greedy(loaded, inputs)
    assert generated.shape == (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + 6)


def test_device_map_auto_loads_and_matches(saved_v1):
    folder, model, inputs = saved_v1
    loaded = FerretForConditionalGeneration.from_pretrained(folder, device_map="auto").eval()
    assert {parameter.device.type for parameter in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(_logits(loaded, inputs), _logits(model, inputs))
    assert torch.equal(_greedy(loaded, inputs), _greedy(model, inputs))


@pytest.mark.parametrize("version", MODELS)
def test_device_map_auto_with_disk_offload_matches(version, tmp_path):
    """A memory cap of half the model makes accelerate split it between the CPU and disk (with its hooks)."""
    model, inputs = MODELS[version]()
    model.save_pretrained(tmp_path / "model")
    size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    loaded = FerretForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": size // 2}, offload_folder=tmp_path / "offload"
    ).eval()
    assert set(loaded.hf_device_map.values()) == {"cpu", "disk"}
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(_logits(loaded, inputs)[real], _logits(model, inputs)[real])
    assert torch.equal(_greedy(loaded, inputs), _greedy(model, inputs))


def test_region_sampler_offloaded_to_disk_gives_the_in_memory_region_features(saved_v1, tmp_path):
    """With the sampler on disk its weights exist only inside each submodule's own call (accelerate's hooks): the
    sampler must call its layers, never read their weights (reading `fusion.weight` gives a meta tensor)."""
    folder, model, inputs = saved_v1
    device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "model.region_sampler": "disk",
                  "model.language_model": "cpu", "lm_head": "cpu"}  # fmt: skip
    loaded = FerretForConditionalGeneration.from_pretrained(
        folder, device_map=device_map, offload_folder=tmp_path / "offload"
    ).eval()
    assert loaded.model.region_sampler.layers[0].fusion.weight.device.type == "meta"
    with torch.inference_mode():
        expected, offloaded = model(**inputs), loaded(**inputs)
    torch.testing.assert_close(offloaded.region_hidden_states, expected.region_hidden_states, rtol=0, atol=0)
    torch.testing.assert_close(offloaded.logits, expected.logits)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_fullgraph_compiled_forward_with_image_and_regions_equals_eager(training):
    """`torch.compile(fullgraph=True)` traces the image + region path as one graph (no data-dependent branch or
    shape), for a batch whose samples have 2, 1 and no regions; outputs (and the loss in training) equal eager's.
    The compiled model is called first, on a fresh model, as a user would."""
    torch._dynamo.reset()
    model = tiny_ferret_model(seed=2).train(training)
    inputs = batch_inputs([make_sample(2, seed=3), make_sample(1, seed=4), make_sample(0, seed=5)])
    labels = inputs["input_ids"].clone() if training else None
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # tracing is the point; inductor is slow
    with torch.set_grad_enabled(training):
        traced = compiled(**inputs, labels=labels)
        eager = model(**inputs, labels=labels)
    torch.testing.assert_close(traced.logits, eager.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(traced.region_hidden_states, eager.region_hidden_states, rtol=1e-4, atol=1e-4)
    if training:
        torch.testing.assert_close(traced.loss, eager.loss, rtol=1e-4, atol=1e-4)


def test_fullgraph_compiled_decode_step_equals_eager():
    """A decode step (the cache of an image + region prefill, one new token) traces as one graph and gives eager's
    logits: nothing on the step's path branches on data."""
    torch._dynamo.reset()
    model = tiny_ferret_model(seed=2)
    inputs = batch_inputs([make_sample(2, seed=3)])
    step = {"input_ids": torch.tensor([[5]]),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)}  # fmt: skip
    with torch.no_grad():
        prefill = model(**inputs, use_cache=True)
        cache_copy = copy.deepcopy(prefill.cache)
        eager = model(**step, cache=prefill.cache)
        traced = torch.compile(model, fullgraph=True, backend="aot_eager")(**step, cache=cache_copy)
    torch.testing.assert_close(traced.logits, eager.logits, rtol=1e-5, atol=1e-5)


def test_benchmark_quick_run_reports_every_section(tmp_path):
    output, plot = tmp_path / "results.json", tmp_path / "growth.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--output", str(output), "--plot", str(plot)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["mode"] == "quick"
    for key in ("cpu", "logical_cores", "torch_threads"):
        assert key in report["machine"]
    for key in ("python", "torch", "transformers", "trl"):
        assert key in report["versions"]
    assert set(report["sections"]) == set(SECTIONS)
    errors = {name: section["error"] for name, section in report["sections"].items() if "error" in section}
    assert not errors, errors
    assert {row["section"] for row in report["table"]} == set(SECTIONS)
    assert report["sections"]["sampler"]["all_equal"]
    assert all(entry["status"] in ("works", "not installed") for entry in report["sections"]["backends"].values())
    assert plot.stat().st_size > 0
    assert "| section" in completed.stdout  # the table is printed
