"""FerretImageProcessorPil reproduces the original Ferret preprocessing (stretch, bicubic, CLIP normalisation)."""

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from transformers_ferret.image_processing_ferret import FerretImageProcessorPil


@pytest.fixture(scope="module")
def image_processor():
    return FerretImageProcessorPil(size={"height": 112, "width": 112})


@pytest.mark.parametrize(
    "case, image_name", [("02_image_text", "image_a"), ("04_image_freeform_and_point", "image_b")]
)
def test_pixel_values_match_original_within_1e_5(parity_dir, image_processor, case, image_name):
    expected = load_file(parity_dir / "cases" / f"{case}.safetensors")["pixel_values"]
    image = Image.open(parity_dir / "images" / f"{image_name}.png")
    pixel_values = image_processor(image, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 112, 112) and pixel_values.dtype == np.float32
    assert np.abs(pixel_values - expected).max() <= 1e-5


def test_batch_of_two_images_matches_original_batch(parity_dir, image_processor):
    expected = load_file(parity_dir / "cases" / "05_batch2_right_padded.safetensors")["pixel_values"]
    images = [Image.open(parity_dir / "images" / f"{name}.png") for name in ("image_b", "image_a")]
    pixel_values = image_processor(images, return_tensors="np")["pixel_values"]
    assert np.abs(pixel_values - expected).max() <= 1e-5


def test_non_square_image_is_stretched_without_crop_or_pad():
    # Left half black, right half white: a stretch keeps the boundary at the middle column; a crop would not.
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 150:] = 255
    pixel_values = FerretImageProcessorPil()(Image.fromarray(array), return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 336, 336)
    red = pixel_values[0, 0]
    black, white = (0 - 0.48145466) / 0.26862954, (1 - 0.48145466) / 0.26862954
    np.testing.assert_allclose(red[:, :160], black, atol=1e-5)
    np.testing.assert_allclose(red[:, 176:], white, atol=1e-5)


def test_grayscale_image_is_converted_to_three_channels():
    image = Image.fromarray(np.full((20, 30), 128, dtype=np.uint8), mode="L")
    image_processor = FerretImageProcessorPil(size={"height": 28, "width": 28})
    pixel_values = image_processor(image, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 28, 28)
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = (128 / 255 - mean) / std
    np.testing.assert_allclose(pixel_values[0, :, 5, 5], expected, atol=1e-5)


def test_save_and_reload_keeps_settings(tmp_path, image_processor):
    image_processor.save_pretrained(tmp_path)
    reloaded = FerretImageProcessorPil.from_pretrained(tmp_path)
    assert reloaded.size == {"height": 112, "width": 112}
    assert reloaded.do_center_crop is False and reloaded.resample == image_processor.resample
    assert list(reloaded.image_mean) == list(image_processor.image_mean)
