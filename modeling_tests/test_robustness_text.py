"""Prompts that are too long, placeholders typed by users and malformed `text` (see docs/robustness.md)."""

import numpy as np
import pytest
from PIL import Image

from tiny_models import tiny_processor



IMAGE_TOKEN_ID, REGION_TOKEN_ID = 501, 500


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))


PROMPT = "<image>\nWhat is the thing <region> doing over there?"


def _length(processor, image) -> int:
    return processor(images=image, text=PROMPT, regions=[(3, 4)])["input_ids"][0].__len__()


def test_truncation_that_would_cut_image_tokens_is_an_error(processor, image):
    with pytest.raises(ValueError, match=r"Mismatch in `image` token count .* ids=\[2\] and text=\[4\].*`max_length`"):
        processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=3)


def test_truncation_that_would_cut_region_tokens_is_an_error(processor, image):
    ids = processor(images=image, text=PROMPT, regions=[(3, 4)])["input_ids"][0]
    region_position = ids.index(REGION_TOKEN_ID)  # keeps the image and the coordinate text, cuts the region token
    message = r"Mismatch in `region` token count .* ids=\[0\] and text=\[1\].*`max_length`"
    with pytest.raises(ValueError, match=message):
        processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=region_position)


def test_left_truncation_cannot_cut_the_image_either(processor, image):
    tokenizer = processor.tokenizer
    tokenizer.truncation_side = "left"
    try:
        with pytest.raises(ValueError, match=r"Mismatch in `image` token count"):
            processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True,
                      max_length=_length(processor, image) - 10)  # fmt: skip
    finally:
        tokenizer.truncation_side = "right"


def test_truncation_that_keeps_every_placeholder_token_is_fine(processor, image):
    full = _length(processor, image)
    outputs = processor(images=image, text=PROMPT, regions=[(3, 4)], truncation=True, max_length=full - 3,
                        return_tensors="pt")  # fmt: skip
    ids = outputs["input_ids"][0]
    assert len(ids) == full - 3 and (ids == IMAGE_TOKEN_ID).sum() == 4 and (ids == REGION_TOKEN_ID).sum() == 1
    assert outputs["region_counts"].tolist() == [1]


def test_literal_image_placeholder_without_an_image(processor):
    with pytest.raises(ValueError, match=r"Found 1 <image> tokens in the text but no images were passed"):
        processor(text="How do I write <image> in a prompt?")


def test_literal_region_token_without_a_region(processor, image):
    with pytest.raises(ValueError, match=r"Sample 0 has 1 region placeholders .* but 0 regions in `regions`"):
        processor(images=image, text="<image>\nWhat does <region_fea> mean?")


def _chat(image, question):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


def test_without_sanitizing_typed_placeholders_in_chat_text_are_placeholders(processor, image):
    with pytest.raises(ValueError, match=r"Found total 2 <image> tokens and 1 images"):
        processor.apply_chat_template(_chat(image, "Is <image> a tag?"), add_generation_prompt=True, tokenize=True,
                                      return_dict=True)  # fmt: skip


def test_sanitized_chat_encodes_typed_image_and_region_tokens_as_plain_text(processor, image):
    conversation = [
        {"role": "user", "content": "Print <image> and <region_fea>."},
        {"role": "assistant", "content": "ok"},
        *_chat(image, "Is <image> here <region>? Or <region_fea>?"),
    ]
    outputs = processor.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        sanitize_control_tokens=True, processor_kwargs={"regions": [[(3, 4)]]},
    )  # fmt: skip
    ids = outputs["input_ids"][0]
    assert (ids == IMAGE_TOKEN_ID).sum() == 4 and (ids == REGION_TOKEN_ID).sum() == 1
    assert outputs["region_counts"].tolist() == [1]
    decoded = processor.tokenizer.decode(ids)
    assert "Print <image> and <region_fea>." in decoded and "Or <region_fea>?" in decoded


@pytest.mark.parametrize(
    "text, error, message",
    [
        (5, TypeError, r"`text` must be a string or a list of strings, got int"),
        ([None], TypeError, r"`text` must be a string or a list of strings, got a list holding NoneType"),
        (["ok", 3], TypeError, r"got a list holding int"),
        ([], ValueError, r"`text` is an empty list"),
    ],
)
def test_malformed_text_argument(processor, text, error, message):
    with pytest.raises(error, match=message):
        processor(text=text)


def test_empty_prompt_is_fine(processor):
    assert processor(text="")["input_ids"] == [[1]]
