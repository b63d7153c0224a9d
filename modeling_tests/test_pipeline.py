"""`pipeline("image-text-to-text")` with a Ferret model: chat messages, regions, grounded output, drawing."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_ferret_model
from transformers import pipeline

from transformers_ferret import FerretImageProcessorPil, FerretProcessor
from transformers_ferret.conversion import convert_original_tokenizer
from transformers_ferret.visualization import draw_grounding, draw_regions

IMAGE_SIZE_WH = (200, 100)


@pytest.fixture(scope="module")
def ferret_pipeline(parity_dir):
    model = tiny_ferret_model(seed=6, text_config={"model_type": "llama", "vocab_size": 502, "hidden_size": 32,
                              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
                              image_token_index=501, region_token_index=500)  # fmt: skip
    model.generation_config.suppress_tokens = [501]
    processor = FerretProcessor(
        image_processor=FerretImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=convert_original_tokenizer(parity_dir / "ferret_tiny"), patch_size=14, num_region_points=16,
    )  # fmt: skip
    return pipeline("image-text-to-text", model=model, processor=processor)


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE_WH[1], IMAGE_SIZE_WH[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _force(tokenizer, text: str):
    """A `prefix_allowed_tokens_fn` that makes generation write `text` (then `</s>`)."""
    forced = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

    def allowed(batch_id, generated):
        step = len(generated) - allowed.prompt_length
        return [forced[min(step, len(forced) - 1)]]

    return forced, allowed


def test_chat_with_a_region_reaches_the_model_and_returns_the_conversation(ferret_pipeline):
    calls = []
    hook = ferret_pipeline.model.model.region_sampler.register_forward_hook(lambda *args: calls.append(args[2].shape))
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()},
                                             {"type": "text", "text": "What is <region>?"}]}]  # fmt: skip
    output = ferret_pipeline(text=messages, max_new_tokens=3, generate_kwargs={"do_sample": False},
                             processor_kwargs={"regions": [[(20, 10, 80, 60)]]})  # fmt: skip
    hook.remove()
    assert len(calls) == 1 and calls[0].numel() == 32  # one region (32 features), encoded once (prefill only)
    conversation = output[0]["generated_text"]
    assert conversation[0]["role"] == "user" and conversation[-1]["role"] == "assistant"
    assert isinstance(conversation[-1]["content"], str)


def test_grounded_answer_is_parsed_into_pixel_boxes_and_drawn(ferret_pipeline):
    tokenizer = ferret_pipeline.processor.tokenizer
    forced, allowed = _force(tokenizer, "a dog [100, 200, 300, 400] and a cat [500, 0, 999, 999]")
    messages = [{"role": "user", "content": [{"type": "image", "image": _image()},
                                             {"type": "text", "text": "Where are the animals?"}]}]  # fmt: skip
    prompt = ferret_pipeline.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)  # fmt: skip
    allowed.prompt_length = len(prompt["input_ids"][0])
    output = ferret_pipeline(text=messages, max_new_tokens=len(forced), return_full_text=False,
                             generate_kwargs={"do_sample": False, "prefix_allowed_tokens_fn": allowed})  # fmt: skip
    answer = output[0]["generated_text"]
    parsed = ferret_pipeline.processor.post_process_grounding(answer, image_sizes=[IMAGE_SIZE_WH[::-1]])
    boxes = [entity["box"] for entity in parsed["entities"]]
    # bins -> pixels: int(v * W / 1000), int(v * H / 1000) with W = 200, H = 100, clipped into the image
    assert boxes == [[20, 20, 60, 40], [100, 0, 199, 99]]
    assert [entity["phrase"] for entity in parsed["entities"]] == ["a dog", "and a cat"]  # text since the previous box
    drawn = np.asarray(draw_grounding(_image(), parsed["entities"]))
    assert drawn.shape == (100, 200, 3) and not np.array_equal(drawn, np.asarray(_image()))
    assert tuple(drawn[30, 20]) == (230, 25, 75)  # the first box's left edge in the first palette colour


def test_draw_regions_marks_points_boxes_and_masks():
    mask = np.zeros((100, 200), dtype=bool)
    mask[60:80, 150:190] = True
    drawn = np.asarray(draw_regions(_image(), [(30, 30), (50, 10, 90, 40), mask]))
    original = np.asarray(_image())
    assert np.array_equal(drawn[70, 170], original[70, 170])  # inside the mask: outlined, not tinted
    assert not np.array_equal(drawn[58, 170], original[58, 170])  # its contour, just outside it
    assert np.array_equal(drawn[95, 5], original[95, 5])  # untouched corner
