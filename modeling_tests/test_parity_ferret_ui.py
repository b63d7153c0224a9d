"""Parity with Apple's original Ferret-UI code (`fixtures/original_ferret_ui`): converted Gemma and Llama-3 models
reproduce its ids, intermediates, logits and greedy tokens.

Each case starts from the fixture's image file, its region geometry and its question, goes through our chat template
and processor (regions as chat content items) and the model converted by `conversion/convert_ferret_ui.py`; nothing
the original computed is fed in. The fixtures were produced with two determinism patches of the region sampler
(farthest point sampling starts at index 0; masks under 512 pixels are repeated cyclically), which are our sampler's
defaults. The five cases cover Ferret-UI's five tile grids, box, point, free-form and no region.
"""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from transformers_ferret import FerretForConditionalGeneration, FerretProcessor

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "original_ferret_ui"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
GENERATION = json.loads((FIXTURES / "generation.json").read_text())
CASES = MANIFEST["cases"]
IMAGE_PLACEHOLDER = -200  # the original's one id for a whole image
LOGITS_TOLERANCE = 1e-4
FEATURE_TOLERANCE = 1e-5


def _convert(backbone: str, output_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("convert_ferret_ui", REPO / "conversion" / "convert_ferret_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = MANIFEST["backbones"][backbone]["folder"]
    with warnings.catch_warnings():  # the checkpoint's bf16 copy of CLIP differs from clip_tiny: warned, not used
        warnings.filterwarnings("ignore", message="The checkpoint's vision tower weights differ")
        module.main([
            "--model-path", str(FIXTURES / folder), "--output-dir", str(output_dir),
            "--vision-tower", str(FIXTURES / "clip_tiny"),
        ])  # fmt: skip


class Converted:
    def __init__(self, backbone: str, output_dir: Path):
        _convert(backbone, output_dir)
        self.model = FerretForConditionalGeneration.from_pretrained(output_dir).eval()
        self.processor = FerretProcessor.from_pretrained(output_dir)
        self.vocab = MANIFEST["backbones"][backbone]["special_ids"]["logits_width"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}

    def get(backbone: str) -> Converted:
        if backbone not in cache:
            cache[backbone] = Converted(backbone, tmp_path_factory.mktemp(f"ferret_ui_{backbone}"))
        return cache[backbone]

    return get


def _conversation(case: dict) -> list[dict]:
    """The case's chat: its image, then its question with one region item per `{i}` (geometry from the manifest)."""
    image = Image.open(FIXTURES / case["image"]).convert("RGB")
    content = [{"type": "image", "image": image}]
    rest = case["question_template"]
    for index, region in enumerate(case["regions"]):
        before, rest = rest.split(f"{{{index}}}", 1)
        content.append({"type": "text", "text": before})
        if region["kind"] == "freeform":
            content.append({"type": "region", "mask": np.array(Image.open(FIXTURES / region["mask_png"])) > 0})
        else:
            content.append({"type": "region", region["kind"]: region["coor_raw"]})
    content.append({"type": "text", "text": rest})
    return [{"role": "user", "content": [item for item in content if item.get("text", None) != ""]}]


def _run(converted: Converted, case: dict):
    inputs = converted.processor.apply_chat_template(
        _conversation(case), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    captured = {}
    hook = converted.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(kwargs), with_kwargs=True
    )
    with torch.no_grad():
        output = converted.model(**inputs)
    hook.remove()
    return inputs, output, captured["inputs_embeds"]


def _expanded_ids(ids: torch.Tensor, image_token_id: int, num_image_tokens: int) -> list[int]:
    expanded = []
    for token in ids.tolist():
        expanded += [image_token_id] * num_image_tokens if token == IMAGE_PLACEHOLDER else [token]
    return expanded


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_converted_model_from_raw_inputs_reproduces_original(converted, case):
    ui = converted(case["backbone"])
    expected = load_file(FIXTURES / case["file"])
    pixels = load_file(FIXTURES / case["pixel_file"])
    inputs, output, inputs_embeds = _run(ui, case)
    model_config = ui.model.config

    # ids: the original's, with its one image id expanded to one <image> per image feature (576 per 336 px view)
    num_views = pixels["pixel_values"].shape[0]
    num_image_tokens = num_views * (model_config.tile_size // model_config.tile_patch_size) ** 2
    ids = _expanded_ids(expected["input_ids"][0], model_config.image_token_id, num_image_tokens)
    assert inputs["input_ids"][0].tolist() == ids
    grid_cols, grid_rows = pixels["image_grid_wh"].tolist()
    assert inputs["image_grids"].tolist() == [[grid_rows, grid_cols]]
    views = torch.cat([inputs["pixel_values"], inputs["pixel_values_tiles"][0, : num_views - 1]])
    torch.testing.assert_close(views, pixels["pixel_values"], atol=FEATURE_TOLERANCE, rtol=0)

    # intermediates: CLIP features of every view, region map, sampler points, region features, the merged sequence
    with torch.no_grad():
        vision = ui.model.model.get_vision_features(views)
    torch.testing.assert_close(vision, expected["vision_features"], atol=FEATURE_TOLERANCE, rtol=0)
    scale = model_config.multimodal_embedding_scale  # Gemma's sqrt(hidden): 4.39 scaled all of inputs_embeds
    torch.testing.assert_close(inputs_embeds / scale, expected["inputs_embeds"], atol=FEATURE_TOLERANCE, rtol=0)
    if "region_features" in expected:
        assert torch.equal(inputs["region_points"][0], expected["region_points_init"])
        region_map = output.image_outputs.region_maps[0].permute(1, 2, 0)
        torch.testing.assert_close(region_map, expected["region_feature_map"], atol=FEATURE_TOLERANCE, rtol=0)
        torch.testing.assert_close(
            output.region_hidden_states[0], expected["region_features"], atol=FEATURE_TOLERANCE, rtol=0
        )
    else:
        assert inputs["region_counts"].tolist() == [0]

    logits_diff = (output.logits[..., : ui.vocab] - expected["logits"]).abs().max()
    assert logits_diff <= LOGITS_TOLERANCE, f"max |logit diff| {logits_diff:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_greedy_generation_equals_original(converted, case):
    ui = converted(case["backbone"])
    expected = load_file(FIXTURES / case["file"])
    reference = GENERATION[case["name"]]
    inputs = ui.processor.apply_chat_template(
        _conversation(case), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        output = ui.model.generate(
            **inputs, max_new_tokens=reference["max_new_tokens"], do_sample=False, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
    assert output.sequences[0, inputs["input_ids"].shape[1] :].tolist() == reference["new_token_ids"]
    scores = torch.stack(output.scores)[:, 0, : ui.vocab]
    torch.testing.assert_close(scores, expected["generate_scores"], atol=LOGITS_TOLERANCE, rtol=0)


def test_fixtures_cover_five_grids_both_backbones_and_every_region_kind():
    grids = {(case["backbone"], tuple(case["grid_rows_cols"])) for case in CASES}
    assert grids == {(backbone, grid) for backbone in ("gemma", "llama3")
                     for grid in [(1, 2), (2, 1), (2, 2), (1, 3), (3, 1)]}  # fmt: skip
    kinds = {region["kind"] for case in CASES for region in case["regions"]}
    assert kinds == {"box", "point", "freeform"} and any(not case["regions"] for case in CASES)
    # every case with regions has a value where Ferret-UI's grid rule and Ferret's differ
    assert all(any(r["coor_text"] != r["coor_text_ferret_v1_rule"] for r in case["regions"])
               for case in CASES if case["regions"])  # fmt: skip
    # the original's Llama-3 prompts start with two <|begin_of_text|>, its Gemma prompts with one <bos>
    for case in CASES:
        ids = load_file(FIXTURES / case["file"])["input_ids"][0].tolist()
        bos = MANIFEST["backbones"][case["backbone"]]["special_ids"]["bos"]
        assert ids[:3].count(bos) == (2 if case["backbone"] == "llama3" else 1)
