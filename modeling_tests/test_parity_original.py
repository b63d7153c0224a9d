"""Parity with the original apple/ml-ferret code (`fixtures/original_ferret`): conversion + model reproduce its numbers.

The fixtures were produced by the original code with two determinism patches (farthest point sampling starts
at index 0; masks with fewer than 512 pixels are repeated cyclically), which are our sampler's defaults.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from transformers_ferret import FerretForConditionalGeneration
from transformers_ferret.modeling_ferret_sampler import (
    farthest_point_sample,
    gather_points,
    knn_indices,
    sample_point_features,
)
from transformers_ferret.processing_ferret import FerretProcessor

from tiny_models import ORIGINAL_FERRET_FIXTURES

REPO = Path(__file__).resolve().parents[1]
PARITY = ORIGINAL_FERRET_FIXTURES
ORIGINAL_VOCAB = 501
IMAGE_TOKENS = 64


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_ferret_original", REPO / "conversion" / "convert_ferret_original.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = json.loads((PARITY / "manifest.json").read_text())["cases"]
GENERATION = json.loads((PARITY / "generation.json").read_text())


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("ferret_tiny_converted")
    _load_converter().main(["--model-path", str(PARITY / "ferret_tiny"), "--output-dir", str(output)])
    return output


@pytest.fixture(scope="module")
def model(converted_dir):
    return FerretForConditionalGeneration.from_pretrained(converted_dir).eval()


@pytest.fixture(scope="module")
def processor(converted_dir):
    return FerretProcessor.from_pretrained(converted_dir)


def _case_tensors(case):
    return load_file(PARITY / case["file"])


def _expanded_ids(ids: torch.Tensor, image_token_id: int) -> list[int]:
    """The original's ids with its single -200 placeholder expanded to one image token per feature."""
    expanded = []
    for token in ids.tolist():
        expanded += [image_token_id] * IMAGE_TOKENS if token == -200 else [token]
    return expanded


def _fixture_inputs(case, image_token_id):
    """Model inputs rebuilt from a case's stored ids and sampler points (right padded, as the original)."""
    tensors = _case_tensors(case)
    rows = [_expanded_ids(ids[mask.bool()], image_token_id) for ids, mask in zip(tensors["input_ids"], tensors["attention_mask"])]
    length = max(map(len, rows))
    counts = [len(sample["regions"]) for sample in case["samples"]]
    inputs = {
        "input_ids": torch.tensor([row + [0] * (length - len(row)) for row in rows]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows]),
    }
    if "pixel_values" in tensors:
        inputs["pixel_values"] = tensors["pixel_values"]
    if sum(counts):
        points = tensors["region_points_init"].split(counts)
        region_points = torch.zeros(len(rows), max(counts), points[0].shape[1], 2)
        for row, row_points in enumerate(points):
            region_points[row, : len(row_points)] = row_points
        inputs.update(region_points=region_points, region_counts=torch.tensor(counts))
    return inputs, tensors


def _run_capturing_embeds(model, inputs):
    captured = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        output = model(**inputs)
    hook.remove()
    return output, captured["inputs_embeds"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_converted_model_reproduces_original_logits_and_intermediates(model, case):
    inputs, expected = _fixture_inputs(case, model.config.image_token_id)
    output, inputs_embeds = _run_capturing_embeds(model, inputs)
    valid = expected["attention_mask_expanded"].bool()
    assert output.logits.shape[-1] == ORIGINAL_VOCAB + 1  # + <image>
    logits_diff = (output.logits[..., :ORIGINAL_VOCAB] - expected["logits"])[valid].abs().max()
    assert logits_diff <= 1e-4, f"max |logit diff| {logits_diff:.3g}"
    if "inputs_embeds" in expected:
        torch.testing.assert_close(inputs_embeds[valid], expected["inputs_embeds"][valid], atol=1e-5, rtol=0)
        vision = model.model.get_vision_features(inputs["pixel_values"])
        torch.testing.assert_close(vision, expected["image_features"], atol=1e-5, rtol=0)
        projected = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        torch.testing.assert_close(torch.stack(projected), expected["image_features_projected"], atol=1e-5, rtol=0)
    if "region_features" in expected:
        slots = torch.arange(inputs["region_points"].shape[1]).unsqueeze(0) < inputs["region_counts"].unsqueeze(1)
        region_features = output.region_hidden_states[slots]  # the used slots, sample by sample, in prompt order
        torch.testing.assert_close(region_features, expected["region_features"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if "region_features" in _case_tensors(c)], ids=lambda c: c["name"])
def test_sampler_farthest_points_and_neighbour_sets_equal_original(model, case):
    expected = _case_tensors(case)
    counts = [len(sample["regions"]) for sample in case["samples"]]
    image_rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    feature_maps = expected["image_features"].unflatten(1, (8, 8)).permute(0, 3, 1, 2)[image_rows]
    points = expected["region_points_init"]
    features = sample_point_features(feature_maps, points, transposed_read=True)
    for stage, layer in enumerate(model.model.region_sampler.layers):
        kept = farthest_point_sample(points, layer.num_samples)
        assert kept.tolist() == expected[f"fps_idx_stage{stage}"].tolist()
        neighbours = knn_indices(gather_points(points, kept), points, layer.num_neighbors)
        assert neighbours.sort(-1).values.tolist() == expected[f"knn_idx_sorted_stage{stage}"].tolist()
        points, features = layer(points, features)


@pytest.mark.parametrize("name", sorted(GENERATION))
def test_greedy_generation_equals_original(model, name):
    case = next(c for c in CASES if c["name"] == name)
    inputs, _ = _fixture_inputs(case, model.config.image_token_id)
    del inputs["attention_mask"]  # the original generated without an attention mask
    reference = GENERATION[name]
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=reference["max_new_tokens"], do_sample=False, use_cache=True,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    new_tokens = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    assert new_tokens == reference["new_token_ids"]
    scores = torch.stack(output.scores)[:, 0, :ORIGINAL_VOCAB]
    expected_scores = torch.from_numpy(np.load(PARITY / case["generate_scores_file"]))
    torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-4)


def test_added_image_token_never_changes_original_predictions(model, converted_dir):
    image_token = model.config.image_token_id
    assert image_token == ORIGINAL_VOCAB and model.config.region_token_id == 500
    assert torch.count_nonzero(model.lm_head.weight[image_token]) == 0
    assert image_token in model.generation_config.suppress_tokens
    original = torch.load(PARITY / "ferret_tiny" / "pytorch_model.bin", weights_only=True)
    torch.testing.assert_close(model.lm_head.weight[:ORIGINAL_VOCAB], original["lm_head.weight"], rtol=0, atol=0)
    embeddings = model.get_input_embeddings().weight
    torch.testing.assert_close(embeddings[:ORIGINAL_VOCAB], original["model.embed_tokens.weight"], rtol=0, atol=0)
    assert sorted(p.name for p in converted_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(converted_dir.glob("*.bin"))


def _conversation_and_regions(case):
    """Chat messages and processor regions rebuilt from the manifest's raw geometry (no stored ids used)."""
    conversations, images, regions = [], [], []
    for sample in case["samples"]:
        question = sample["question"]
        sample_regions = []
        for region in sample["regions"]:
            question = question.replace(f"{region['coor_text']} <region_fea>", "<region>", 1)
            if region["kind"] == "freeform":
                sample_regions.append(np.array(Image.open(PARITY / region["mask_png"])) > 0)
            else:
                sample_regions.append(tuple(region["coor_raw"]))
        content = [{"type": "text", "text": question}]
        if sample["image"] is not None:
            images.append(Image.open(PARITY / sample["image"]).convert("RGB"))
            content.insert(0, {"type": "image", "image": images[-1]})
        conversations.append([{"role": "user", "content": content}])
        regions.append(sample_regions)
    return conversations, regions


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_processor_from_raw_inputs_reproduces_original_logits(model, processor, case):
    conversations, regions = _conversation_and_regions(case)
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"regions": regions, "padding": True, "padding_side": "right"},
    )  # fmt: skip
    fixture_inputs, expected = _fixture_inputs(case, model.config.image_token_id)
    assert inputs["input_ids"].tolist() == fixture_inputs["input_ids"].tolist()
    if "pixel_values" in expected:
        torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    if "region_points" in fixture_inputs:
        assert torch.equal(inputs["region_points"], fixture_inputs["region_points"])
    with torch.no_grad():
        logits = model(**inputs).logits[..., :ORIGINAL_VOCAB]
    valid = expected["attention_mask_expanded"].bool()
    assert (logits - expected["logits"])[valid].abs().max() <= 1e-4


def test_loading_an_original_checkpoint_directly_raises_instead_of_random_weights():
    with pytest.raises(ValueError, match="convert_ferret_original"):
        FerretForConditionalGeneration.from_pretrained(PARITY / "ferret_tiny")
