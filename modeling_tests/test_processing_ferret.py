"""FerretProcessor + chat template + converted tokenizer reproduce the original Ferret inputs; errors and parsing; and
transformers' `ProcessorTesterMixin` runs against FerretProcessor (bad input: test_processing_ferret_errors.py)."""

import json
import unittest
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from jinja2.exceptions import TemplateError
from PIL import Image
from safetensors.numpy import load_file
from mixin_skips import skip_mixin_tests
from tiny_models import ORIGINAL_FERRET_FIXTURES

import transformers_ferret  # noqa: F401  (registers the Ferret classes with the Auto classes)
from transformers_ferret.image_processing_ferret import FerretImageProcessorPil
from transformers_ferret.chat_templates import FERRET_SYSTEM_PROMPT
from transformers_ferret.processing_ferret import FerretProcessor
from transformers_ferret.conversion import convert_original_tokenizer

with warnings.catch_warnings():
    # transformers registers its custom marks (flash_attn_test, torch_compile_test, ...) in its own conftest
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    from transformers_common.tests import test_processing_common
    from transformers_common.tests.test_processing_common import ProcessorTesterMixin


ALL_CASES = [
    "01_text_only",
    "02_image_text",
    "03_image_box",
    "04_image_freeform_and_point",
    "05_batch2_right_padded",
    "06_image_point_at_border",
]
NUM_IMAGE_TOKENS = 64  # (112 // 14) ** 2
IMAGE_TOKEN_ID, REGION_TOKEN_ID, PAD_ID, BOS_ID, EOS_ID = 501, 500, 0, 1, 2
ORIGINAL_IMAGE_PLACEHOLDER = -200


@pytest.fixture(scope="module")
def processor(parity_dir):
    tokenizer = convert_original_tokenizer(parity_dir / "ferret_tiny")
    image_processor = FerretImageProcessorPil(size={"height": 112, "width": 112})
    return FerretProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14)


@pytest.fixture(scope="module")
def image_a(parity_dir):
    return Image.open(parity_dir / "images" / "image_a.png").convert("RGB")  # 160 x 120


def _case(parity_dir, name: str) -> dict:
    cases = json.loads((parity_dir / "manifest.json").read_text())["cases"]
    return next(case for case in cases if case["name"] == name)


def _region_input(parity_dir, region: dict) -> dict:
    if region["kind"] == "freeform":
        return {"mask": Image.open(parity_dir / region["mask_png"])}
    return {region["kind"]: region["coor_raw"]}


def _question_with_placeholders(sample: dict) -> str:
    question = sample["question"]
    for region in sample["regions"]:
        question = question.replace(f"{region['coor_text']} <region_fea>", "<region>", 1)
    return question


def _conversation(parity_dir, sample: dict, question: str) -> list[dict]:
    image = [{"type": "image", "image": Image.open(parity_dir / sample["image"])}] if sample["image"] else []
    return [{"role": "user", "content": [*image, {"type": "text", "text": question}]}]


def _expected_input_ids(tensors: dict, padding_side: str = "right") -> torch.Tensor:
    """Fixture ids with each -200 expanded to 64 image tokens, padded with the pad id."""
    rows = []
    for ids, mask in zip(tensors["input_ids"], tensors["attention_mask"]):
        row = []
        for token in ids[mask == 1].tolist():
            row += [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS if token == ORIGINAL_IMAGE_PLACEHOLDER else [token]
        rows.append(row)
    length = max(len(row) for row in rows)
    padding = [[PAD_ID] * (length - len(row)) for row in rows]
    if padding_side == "right":
        return torch.tensor([row + pad for row, pad in zip(rows, padding)])
    return torch.tensor([pad + row for row, pad in zip(rows, padding)])


def _apply_template(processor, parity_dir, case: dict, **kwargs):
    conversations = [_conversation(parity_dir, s, _question_with_placeholders(s)) for s in case["samples"]]
    regions = [[_region_input(parity_dir, region) for region in s["regions"]] for s in case["samples"]]
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"regions": regions, "padding": True, **kwargs},
    )


# --- chat template ---


@pytest.mark.parametrize("case_name", ALL_CASES)
def test_chat_template_renders_original_prompt_byte_for_byte(processor, parity_dir, case_name):
    for sample in _case(parity_dir, case_name)["samples"]:
        conversation = _conversation(parity_dir, sample, sample["question"])
        rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
        assert rendered == "<s>" + sample["prompt"]


def test_system_prompt_is_the_original_one_with_its_trailing_space(processor):
    rendered = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert rendered == "<s>" + FERRET_SYSTEM_PROMPT + " USER: Hi ASSISTANT:"
    assert rendered.endswith("Follow instructions.  USER: Hi ASSISTANT:")


def test_system_message_replaces_default_and_images_go_first(processor, image_a):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "image": image_a}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == "<s>Be brief. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:"


def test_unknown_role_is_rejected_by_the_template(processor):
    with pytest.raises(TemplateError, match="system, user and assistant"):
        processor.apply_chat_template([{"role": "tool", "content": "x"}])


# --- end to end against the fixtures ---


@pytest.mark.parametrize("case_name", ALL_CASES)
def test_chat_template_and_processor_reproduce_original_inputs(processor, parity_dir, case_name):
    case = _case(parity_dir, case_name)
    tensors = load_file(parity_dir / case["file"])
    outputs = _apply_template(processor, parity_dir, case)

    expected_ids = _expected_input_ids(tensors)
    assert torch.equal(outputs["input_ids"], expected_ids)
    assert torch.equal(outputs["attention_mask"], (expected_ids != PAD_ID).long())
    assert (outputs["input_ids"] == BOS_ID).sum(dim=1).tolist() == [1] * len(case["samples"])
    has_image = "pixel_values" in tensors
    assert ("pixel_values" in outputs) == has_image
    if has_image:
        assert (outputs["input_ids"] == IMAGE_TOKEN_ID).sum().item() == NUM_IMAGE_TOKENS * len(case["samples"])
        assert (outputs["pixel_values"].numpy() - tensors["pixel_values"]).__abs__().max() <= 1e-5
    if "region_points_init" not in tensors:
        assert "region_points" not in outputs and "region_counts" not in outputs
        return
    counts = [len(sample["regions"]) for sample in case["samples"]]
    assert outputs["region_counts"].dtype == torch.int64 and outputs["region_counts"].tolist() == counts
    assert outputs["region_points"].dtype == torch.float32
    assert outputs["region_points"].shape == (len(counts), max(counts), 512, 2)
    valid = torch.arange(max(counts))[None, :] < outputs["region_counts"][:, None]
    assert torch.equal(outputs["region_points"][valid], torch.from_numpy(tensors["region_points_init"]))
    assert not outputs["region_points"][~valid].any()
    assert (outputs["input_ids"] == REGION_TOKEN_ID).sum(dim=1).tolist() == counts


def test_direct_call_with_placeholders_matches_fixture(processor, parity_dir):
    case = _case(parity_dir, "04_image_freeform_and_point")
    sample, tensors = case["samples"][0], load_file(parity_dir / case["file"])
    prompt = sample["prompt"].replace(sample["question"], _question_with_placeholders(sample))
    assert prompt.count("<region>") == 2
    outputs = processor(
        images=Image.open(parity_dir / sample["image"]),
        text=prompt,
        regions=[_region_input(parity_dir, region) for region in sample["regions"]],  # flat list: one sample
        return_tensors="pt",
    )
    assert torch.equal(outputs["input_ids"], _expected_input_ids(tensors))
    assert torch.equal(outputs["region_points"][0], torch.from_numpy(tensors["region_points_init"]))


def test_region_tokens_written_in_the_text_take_regions_without_new_text(processor, parity_dir):
    case = _case(parity_dir, "04_image_freeform_and_point")
    sample, tensors = case["samples"][0], load_file(parity_dir / case["file"])
    regions = [_region_input(parity_dir, region) for region in sample["regions"]]
    outputs = processor(
        images=Image.open(parity_dir / sample["image"]), text=sample["prompt"], regions=regions, return_tensors="pt"
    )
    assert torch.equal(outputs["input_ids"], _expected_input_ids(tensors))
    assert torch.equal(outputs["region_points"][0], torch.from_numpy(tensors["region_points_init"]))


def test_left_padding_for_batched_generation(processor, parity_dir):
    case = _case(parity_dir, "05_batch2_right_padded")
    outputs = _apply_template(processor, parity_dir, case, padding_side="left")
    expected_ids = _expected_input_ids(load_file(parity_dir / case["file"]), padding_side="left")
    assert torch.equal(outputs["input_ids"], expected_ids)
    assert outputs["attention_mask"][1, : 316 - 268].sum() == 0 and outputs["attention_mask"][1, -268:].all()
    assert outputs["region_counts"].tolist() == [1, 0]


@pytest.mark.parametrize("return_tensors, array_type", [("pt", torch.Tensor), ("np", np.ndarray)])
def test_return_tensors_types(processor, image_a, return_tensors, array_type):
    outputs = processor(
        images=image_a, text="<image>\nWhat is <region>?", regions=[(10, 10)], return_tensors=return_tensors
    )
    for key in ("input_ids", "attention_mask", "pixel_values", "region_points", "region_counts"):
        assert isinstance(outputs[key], array_type), key
    assert outputs["region_points"].shape == (1, 1, 512, 2)


def test_region_generator_draws_reproducible_random_points_for_large_regions(processor, image_a):
    call = dict(images=image_a, text="<image>\n<region>", regions=[(0, 0, 99, 99)], return_tensors="pt")
    deterministic = processor(**call)["region_points"]
    seeded = processor(**call, region_generator=torch.Generator().manual_seed(0))["region_points"]
    again = processor(**call, region_generator=torch.Generator().manual_seed(0))["region_points"]
    assert torch.equal(seeded, again) and not torch.equal(seeded, deterministic)
    expected_first = torch.tensor([0.0, 19 / 120])  # evenly spaced: pixel floor(1 * 10000 / 512) = 19 -> (x=0, y=19)
    assert torch.equal(deterministic[0, 0, 1], expected_first)


def test_assistant_mask_covers_answers_after_region_expansion(processor, image_a):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image_a}, {"type": "text", "text": "What is <region>?"}],
        },
        {"role": "assistant", "content": "A cat [10, 20, 30, 40]."},
        {"role": "user", "content": "And <region> here?"},
        {"role": "assistant", "content": "A dog."},
    ]
    outputs = processor.apply_chat_template(
        conversation,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"regions": [(40, 50, 71, 65), (3, 117)]},
    )
    ids, mask = outputs["input_ids"][0], outputs["assistant_masks"][0].bool()
    starts = torch.nonzero(mask & ~torch.cat([torch.tensor([False]), mask[:-1]])).flatten().tolist()
    ends = torch.nonzero(mask & ~torch.cat([mask[1:], torch.tensor([False])])).flatten().tolist()
    answers = [processor.tokenizer.decode(ids[start : end + 1]) for start, end in zip(starts, ends)]
    assert [answer.strip() for answer in answers] == ["A cat [10, 20, 30, 40].</s>", "A dog.</s>"]
    assert (ids == REGION_TOKEN_ID).sum() == 2 and outputs["region_counts"].tolist() == [2]


def test_number_of_image_tokens_follows_image_processor_size(processor):
    assert processor._get_num_image_tokens((120, 160)) == 64
    assert processor._get_num_multimodal_tokens(image_sizes=[(120, 160), (10, 10)]).num_image_tokens == [64, 64]


def test_model_input_names_include_region_inputs(processor):
    expected = ["attention_mask", "image_grids", "input_ids", "pixel_values", "pixel_values_tiles", "region_counts",
                "region_points"]  # fmt: skip
    assert sorted(processor.model_input_names) == expected


# --- errors ---


@pytest.mark.parametrize(
    "text, with_image, regions, message",
    [
        ("<image>\n<region> and <region>", True, [(1, 1)], r"Sample 0 has 2 region placeholders .* but 1 regions in"),
        ("<image>\nWhat is this?", True, [(1, 1)], r"Sample 0 has 0 region placeholders .* but 1 regions in"),
        ("What is <region>?", False, [(1, 1)], r"Sample 0 refers to regions .* but has 0 images.*`text`.*`images`"),
        ("What is [1, 2] <region_fea>?", False, [], r"Sample 0 refers to regions \(1 region placeholders in `text`"),
        ("<image><image>\n<region>", True, [(1, 1)], r"has 2 images: a sample with regions needs exactly one"),
        ("<image>\n<region>", True, [(500, 1)], r"`regions`.*outside the image of width 160 and height 120"),
        ("<image>\n<region>", True, [np.ones((10, 10), bool)], r"`regions`.*mask is 10x10 .* image is 120x160"),
    ],
)
def test_region_errors_name_the_argument(processor, image_a, text, with_image, regions, message):
    images = [image_a] * text.count("<image>") if with_image else None
    with pytest.raises(ValueError, match=message):
        processor(images=images, text=text, regions=regions)


def test_regions_must_be_one_list_per_sample_in_a_batch(processor, image_a):
    with pytest.raises(ValueError, match=r"`regions` must hold one list of regions per sample \(2 samples"):
        processor(images=[image_a, image_a], text=["<image><region>", "<image><region>"], regions=[(1, 1), (2, 2)])


def test_regions_without_text_are_rejected(processor, image_a):
    with pytest.raises(ValueError, match=r"`regions` were given without `text`"):
        processor(images=image_a, regions=[(1, 1)])


def test_unknown_region_type_is_a_type_error(processor, image_a):
    with pytest.raises(TypeError, match=r"`regions`.*got str"):
        processor(images=image_a, text="<image><region>", regions=["the cat"])


def test_image_count_mismatch_is_reported(processor, image_a):
    with pytest.raises(ValueError, match=r"1 <image> tokens and 2 images"):
        processor(images=[image_a, image_a], text="<image>\nHi")


# --- output post-processing ---


def test_post_process_image_text_to_text_decodes_to_a_list(processor):
    ids = processor.tokenizer("A cat [1, 2, 3, 4].").input_ids + [EOS_ID]
    assert processor.post_process_image_text_to_text(torch.tensor([ids, ids])) == ["A cat [1, 2, 3, 4]."] * 2
    assert processor.post_process_image_text_to_text(torch.tensor(ids)) == ["A cat [1, 2, 3, 4]."]
    assert processor.post_process_image_text_to_text(ids) == ["A cat [1, 2, 3, 4]."]


def test_post_process_grounding_converts_boxes_to_pixels(processor):
    text = (
        "There is a cat [100, 200, 300, 400] on a sofa [0, 500, 999, 999]. "
        "Two dogs [10, 10, 20, 20], [30, 30, 40, 40]."
    )
    result = processor.post_process_grounding(text, (120, 160))  # height 120, width 160
    assert result["text"] == "There is a cat on a sofa. Two dogs."
    phrases = [entity["phrase"] for entity in result["entities"]]
    assert phrases == ["There is a cat", "on a sofa", "Two dogs", "Two dogs"]
    assert [entity["box"] for entity in result["entities"]] == [
        [16, 24, 48, 48],  # int(100 * 160 / 1000), int(200 * 120 / 1000), ...
        [0, 60, 159, 119],
        [1, 1, 3, 2],
        [4, 3, 6, 4],
    ]
    for entity in result["entities"]:
        start, end = entity["span"]
        assert result["text"][start:end] == entity["phrase"]


def test_post_process_grounding_handles_points_and_out_of_range_values(processor):
    results = processor.post_process_grounding(
        ["A man [500, 250] waves.", "A box [-20, 1500, 700, 100]"], [(200, 100), (200, 100)]
    )
    assert results[0]["text"] == "A man waves."
    assert results[0]["entities"] == [{"phrase": "A man", "grid": [500, 250], "box": [50, 50, 50, 50], "span": (0, 5)}]
    # clipped to [0, 999], corners ordered: x 0..700, y 100..999
    assert results[1]["entities"][0]["grid"] == [0, 100, 700, 999]
    assert results[1]["entities"][0]["box"] == [0, 20, 70, 199]


@pytest.mark.parametrize(
    "text",
    [
        "A cat [100, 200, 300",
        "A cat 100, 200, 300, 400]",
        "A cat [a, b, c, d]",
        "A cat [1, 2, 3]",
        "[[[]]] ]][[ [,] [1,,2] [1.5.5, 2]",
        "",
        "[" + "9" * 400 + ", 5, 7, 9]",
        "A cat [1e5, 2, 3, 4] [NaN, 1]",
    ],
)
def test_post_process_grounding_never_raises_on_malformed_output(processor, text):
    height, width = 120, 160
    result = processor.post_process_grounding(text, (height, width))
    assert isinstance(result["text"], str)
    for entity in result["entities"]:
        x1, y1, x2, y2 = entity["box"]
        assert 0 <= x1 <= x2 <= width - 1 and 0 <= y1 <= y2 <= height - 1


def test_malformed_groups_stay_in_the_text(processor):
    result = processor.post_process_grounding("A cat [1, 2, 3] sits [100, 100, 200, 200].", (100, 100))
    assert result["text"] == "A cat [1, 2, 3] sits."
    expected = {"phrase": "A cat [1, 2, 3] sits", "grid": [100, 100, 200, 200], "box": [10, 10, 20, 20], "span": (0, 20)}
    assert result["entities"] == [expected]


# --- save / load ---


def test_save_and_reload_keeps_template_tokens_and_attributes(processor, parity_dir, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = FerretProcessor.from_pretrained(tmp_path)
    assert reloaded.chat_template == processor.chat_template
    for name in ("patch_size", "num_region_points", "image_token", "region_token", "region_placeholder"):
        assert getattr(reloaded, name) == getattr(processor, name), name
    assert (reloaded.image_token_id, reloaded.region_token_id) == (IMAGE_TOKEN_ID, REGION_TOKEN_ID)
    assert isinstance(reloaded.image_processor, FerretImageProcessorPil)
    case = _case(parity_dir, "04_image_freeform_and_point")
    original, again = (_apply_template(p, parity_dir, case) for p in (processor, reloaded))
    for key in ("input_ids", "attention_mask", "pixel_values", "region_points", "region_counts"):
        assert torch.equal(original[key], again[key]), key


# --- transformers' common processor tests (as tests/models/llava_next/test_processing_llava_next.py) ---

LOCAL_SAMPLE_IMAGE = str(ORIGINAL_FERRET_FIXTURES / "images" / "image_a.png")


class FerretProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    """The mixin builds the processor from the components below, saves it and loads it back for every test. Its sample
    image is a Hub URL (hf-internal-testing/fixtures_image_utils, coco_sample.png); nothing is downloaded here, a
    parity fixture image stands in for it (`setUp`)."""

    processor_class = FerretProcessor

    @classmethod
    def _setup_tokenizer(cls):
        return convert_original_tokenizer(ORIGINAL_FERRET_FIXTURES / "ferret_tiny")  # `<image>` 501, `<region_fea>` 500

    @classmethod
    def _setup_image_processor(cls):
        return FerretImageProcessorPil(size={"height": 28, "width": 28})

    @staticmethod
    def prepare_processor_dict():
        return {"patch_size": 14, "num_region_points": 16}

    def setUp(self):
        super().setUp()
        local_images = [LOCAL_SAMPLE_IMAGE] * len(test_processing_common.MODALITY_INPUT_DATA["images"])
        self.enterContext(mock.patch.dict(test_processing_common.MODALITY_INPUT_DATA, images=local_images))
        to_local = lambda url: LOCAL_SAMPLE_IMAGE if url.endswith(".png") else url  # noqa: E731
        self.enterContext(mock.patch.object(test_processing_common, "url_to_local_path", to_local))

    def test_model_input_names(self):
        """`model_input_names` lists the inputs of every Ferret configuration (see
        `test_model_input_names_include_region_inputs`): `region_points` and `region_counts` come with referred regions
        only, `pixel_values_tiles` and `image_grids` from a Ferret-v2 (any-resolution) image processor only. The
        mixin's equality is checked for this Ferret (v1) processor without and with a region."""
        processor = self.get_processor()
        text, image = self.prepare_text_inputs(modalities=["image"]), self.prepare_images_inputs()
        names = set(processor.model_input_names) - {"pixel_values_tiles", "image_grids"}
        inputs = processor(text=text, images=image, return_tensors="pt")
        self.assertSetEqual(set(inputs.keys()), names - {"region_points", "region_counts"})
        inputs = processor(text=text + "<region>", images=image, regions=[(1, 1)], return_tensors="pt")
        self.assertSetEqual(set(inputs.keys()), names)

    @staticmethod
    def _saved_as_a_native_processor():
        """FerretProcessor is registered for `AutoProcessor`, so that saved folders carry their code (see
        test_remote_code.py). `save_pretrained` then writes `auto_map` into the saved instance (transformers'
        `custom_object_save`) and `from_pretrained` leaves it out, so the two `to_dict()` differ by `auto_map` alone.
        The mixin's round trips run without that registration, as for a processor inside transformers."""
        return mock.patch.object(FerretProcessor, "_auto_class", None)

    def test_processor_from_and_save_pretrained(self):
        with self._saved_as_a_native_processor():
            super().test_processor_from_and_save_pretrained()

    def test_processor_from_and_save_pretrained_as_nested_dict(self):
        with self._saved_as_a_native_processor():
            super().test_processor_from_and_save_pretrained_as_nested_dict()


NO_VIDEO = "Ferret has no video input: FerretProcessor has no video processor (images and text only)"
NO_AUDIO = "Ferret has no audio input: FerretProcessor has no audio processor or feature extractor"
NOT_FOR_FERRET = {
    "test_apply_chat_template_audio": NO_AUDIO,  # left on the class by `@require_librosa` over `parameterized.expand`
    **{f"test_apply_chat_template_audio_{index}": NO_AUDIO for index in range(4)},
    "test_apply_chat_template_decoded_video": NO_VIDEO,  # left by `@require_torchcodec` over `parameterized.expand`
    "test_apply_chat_template_decoded_video_0": NO_VIDEO,
    "test_apply_chat_template_video": NO_VIDEO,  # left by `@require_torchcodec` over `parameterized.expand`
    "test_apply_chat_template_video_0": NO_VIDEO,
    "test_apply_chat_template_video_1": NO_VIDEO,
    "test_apply_chat_template_video_frame_sampling": NO_VIDEO,
    "test_chat_template_audio_from_video": NO_VIDEO + "; " + NO_AUDIO,
    "test_chat_template_audio_sampling_rate": NO_AUDIO,
    "test_get_num_multimodal_tokens_matches_processor_call_audio": NO_AUDIO,
    "test_get_num_multimodal_tokens_matches_processor_call_video": NO_VIDEO,
    "test_apply_chat_template_tool_calls_no_content": "Ferret's chat template (the original's Vicuna v1) has no tool "
    "calls: it accepts the roles system, user and assistant only (test_unknown_role_is_rejected_by_the_template)",
    "test_subprocessor_defaults_2_videos": NO_VIDEO,
    "test_subprocessor_defaults_3_audio": NO_AUDIO,
    "test_doubly_passed_kwargs_1_videos": NO_VIDEO,
}
for _test in ("kwargs_overrides_default_subprocessor_kwargs", "overlapping_text_image_kwargs_handling",
              "structured_kwargs_nested_from_dict", "subprocessor_defaults_preserved_by_kwargs", "unstructured_kwargs",
              "unstructured_kwargs_batched"):  # fmt: skip
    NOT_FOR_FERRET.update({f"test_{_test}_1_videos": NO_VIDEO, f"test_{_test}_2_audio": NO_AUDIO})



skip_mixin_tests(FerretProcessorTest, ProcessorTesterMixin, NOT_FOR_FERRET)
