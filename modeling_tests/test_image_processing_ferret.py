"""FerretImageProcessorPil: transformers' `ImageProcessingTestMixin`, the original Ferret preprocessing (stretch,
bicubic, CLIP normalisation), and the images Ferret reads: bad and unusual ones get a clear ValueError/TypeError naming
`images`, or a documented conversion (see docs/robustness.md)."""

import base64
import io
import unittest
import warnings

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from safetensors.numpy import load_file
from mixin_skips import skip_mixin_tests
from tiny_models import tiny_processor

from transformers_ferret import FerretImageProcessorPil
from transformers_ferret.image_processing_ferret import prepare_image

with warnings.catch_warnings():
    # transformers registers its custom marks (flash_attn_test, torch_compile_test, ...) in its own conftest
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    from transformers_common.tests.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin


# --- transformers' common image processor tests (as tests/models/llava_next/test_image_processing_llava_next.py) ---


class FerretImageProcessingTester(ImageProcessingTester):
    def __init__(self, **kwargs):
        # Ferret stretches to exactly `size` (no crop): a non-square size shows the axes are not swapped
        kwargs.setdefault("size", {"height": 20, "width": 18})
        super().__init__(**kwargs)

    def _get_image_processing_classes(self):
        # The mixin looks the classes up by the test folder's name in transformers' own mapping; Ferret registers its
        # image processor at import instead. It has the PIL backend only (torchvision is no dependency).
        return {"pil": FerretImageProcessorPil}


class FerretImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = FerretImageProcessingTester

    def test_image_processor_properties(self):
        for image_processing_class in self.image_processing_classes.values():
            image_processor = image_processing_class(**self.image_processor_dict)
            names = ("do_resize", "size", "do_center_crop", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
                     "image_grid_pinpoints", "tile_size", "tile_image_mean", "tile_image_std")  # fmt: skip
            for name in names:
                self.assertTrue(hasattr(image_processor, name), name)
            self.assertFalse(image_processor.do_center_crop)

    def test_image_processor_preprocess_arguments(self):
        # The mixin checks the two older kinds of argument validation (`_valid_processor_keys`,
        # `@filter_out_non_signature_kwargs`) and skips itself otherwise. transformers 5.25's backends, which Ferret's
        # extends, check every keyword against `valid_kwargs` (FerretImageProcessorKwargs) and raise.
        image_processor = FerretImageProcessorPil(**self.image_processor_dict)
        with self.assertRaisesRegex(TypeError, "extra_argument"):
            image_processor(self.image_processor_tester.prepare_image_inputs(), extra_argument=True)

    def test_override_instance_attributes_does_not_affect_other_instances(self):
        # The mixin skips itself unless `size` is a dict and `image_mean` a list; transformers 5.25's backends hold a
        # `SizeDict` and tuples. The same check on `size` and on Ferret-v2's list `tile_image_mean`.
        first, second = FerretImageProcessorPil(), FerretImageProcessorPil()
        first.size["height"], first.tile_image_mean[0] = -1, -1.0
        for untouched in (second, FerretImageProcessorPil):  # the other instance and the class defaults
            self.assertEqual((untouched.size["height"], untouched.tile_image_mean[0]), (336, 0.485))

    @pytest.mark.skip(
        reason="transformers' policy check for models added to transformers after 2025-09-01 (it keys on the test "
        "folder's name, here `modeling_tests`): such models must ship a torchvision backend. Ferret is a separate "
        "package whose image processor is PIL-only (`FerretImageProcessorPil`, exact parity with the original's PIL "
        "bicubic resize); torchvision is not a dependency."
    )
    def test_new_models_require_torchvision_backend(self):
        pass



ONE_BACKEND = "FerretImageProcessorPil is Ferret's only image processor backend (it has no torchvision one)"
NOT_FOR_FERRET = {
    "test_backends_equivalence": ONE_BACKEND,
    "test_backends_equivalence_batched": ONE_BACKEND,
    "test_save_load_backends": ONE_BACKEND,
    "test_save_load_backends_auto": ONE_BACKEND,
    "test_fast_image_processor_explicit_none_preserved": "checks the torchvision backend, which Ferret does not have",
    "test_can_compile_torchvision_backend": "compiles the torchvision backend, which Ferret does not have",
    "test_pil_can_run_without_torchvision": "torchvision is no dependency of Ferret: every test here runs without it "
    "(its subprocess would also need `trust_remote_code=True`, as it loads a saved Ferret folder without importing "
    "transformers_ferret)",
}
skip_mixin_tests(FerretImageProcessingTest, ImageProcessingTestMixin, NOT_FOR_FERRET)


# --- parity with the original Ferret preprocessing ---


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


# --- the images Ferret reads: modes, EXIF, sizes, files, URLs, arrays; unusable ones name `images` ---


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


def _rgb(height=20, width=30, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pixels(processor, image, **kwargs) -> np.ndarray:
    return processor(images=image, text="<image>\nHi", return_tensors="np", **kwargs)["pixel_values"]


def _png_bytes(image: Image.Image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


# --- modes: converted, never a shape error ---


def test_grayscale_image_becomes_three_equal_channels(processor):
    gray = _rgb()[..., 0]
    pixel_values = _pixels(processor, Image.fromarray(gray))
    assert pixel_values.shape == (1, 3, 28, 28)
    np.testing.assert_array_equal(pixel_values, _pixels(processor, Image.fromarray(np.dstack([gray] * 3))))


def test_rgba_image_is_composited_on_white(processor):
    rgba = np.dstack([_rgb(), np.zeros((20, 30), np.uint8)])  # fully transparent
    white = np.full((20, 30, 3), 255, np.uint8)
    expected = _pixels(processor, Image.fromarray(white))
    np.testing.assert_array_equal(_pixels(processor, Image.fromarray(rgba)), expected)


def test_palette_image_is_converted_to_rgb(processor):
    palette = Image.fromarray(_rgb()).convert("P")
    np.testing.assert_array_equal(_pixels(processor, palette), _pixels(processor, palette.convert("RGB")))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_image_is_scaled_to_8_bits_not_clipped(processor, mode):
    gray8 = _rgb()[..., 0]
    gray16 = gray8.astype(np.uint32) * 257  # v * 257 is exactly the 16-bit version of v
    if mode == "I":
        image = Image.fromarray(gray16.astype(np.int32))
    else:
        image = Image.frombytes(mode, (30, 20), gray16.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert image.mode == mode
    np.testing.assert_array_equal(_pixels(processor, image), _pixels(processor, Image.fromarray(gray8)))


def test_uint16_array_is_scaled_like_a_16_bit_image(processor):
    rgb = _rgb()
    np.testing.assert_array_equal(_pixels(processor, rgb.astype(np.uint16) * 257), _pixels(processor, rgb))


def test_cmyk_image_is_converted_by_pil(processor):
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    np.testing.assert_array_equal(_pixels(processor, cmyk), _pixels(processor, cmyk.convert("RGB")))


def test_exif_orientation_is_applied_and_regions_refer_to_the_displayed_image(processor, tmp_path):
    stored = np.zeros((20, 30, 3), np.uint8)  # stored 30 wide x 20 high, white block at stored (x 0..4, y 0..2)
    stored[0:3, 0:5] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # displayed rotated 90 degrees clockwise: 20 wide x 30 high
    path = tmp_path / "rotated.png"
    path.write_bytes(_png_bytes(Image.fromarray(stored), exif=exif))
    displayed = np.rot90(stored, k=-1)  # the block is now at the top right: x 17..19, y 0..4
    assert displayed.shape == (30, 20, 3) and displayed[0:5, 17:20].all()

    for image in (Image.open(path), str(path)):
        outputs = processor(images=image, text="<image>\n<region>", regions=[(17, 0, 19, 4)], return_tensors="np")
        np.testing.assert_allclose(outputs["pixel_values"], _pixels(processor, displayed), atol=1e-6)
        points = outputs["region_points"][0, 0]  # normalised by the displayed size (width 20, height 30)
        pixels = np.rint(points * [20, 30]).astype(int)
        assert displayed[pixels[:, 1], pixels[:, 0]].all()


def test_one_by_one_and_one_by_ten_thousand_images_are_stretched(processor):
    for shape in [(1, 1, 3), (1, 10000, 3), (10000, 1, 3)]:
        outputs = processor(images=np.full(shape, 200, np.uint8), text="<image>\n<region>", regions=[(0, 0)],
                            return_tensors="np")  # fmt: skip
        assert outputs["pixel_values"].shape == (1, 3, 28, 28) and np.isfinite(outputs["pixel_values"]).all()
        assert outputs["region_points"].shape == (1, 1, 16, 2) and (outputs["region_points"] < 1).all()


def test_image_over_the_decompression_bomb_limit_is_refused_clearly(processor, tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(Image.fromarray(_rgb(100, 100))))  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # PIL refuses above 2x the limit, warns above it
    with pytest.raises(ValueError, match=r"`images` was refused by PIL's decompression-bomb guard.*10000 pixels"):
        processor(images=str(path), text="<image>\nHi")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with pytest.warns(Image.DecompressionBombWarning):
        assert _pixels(processor, str(path)).shape == (1, 3, 28, 28)
    assert Image.MAX_IMAGE_PIXELS == 6000  # nothing switched the guard off


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_file_raises_a_value_error_naming_images(processor, tmp_path, image_format):
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format=image_format)
    path = tmp_path / f"truncated.{image_format.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for image in (str(path), Image.open(path)):
        with pytest.raises(ValueError, match=r"`images` could not be decoded .*truncated or corrupt"):
            processor(images=image, text="<image>\nHi")
    with pytest.raises(ValueError, match=r"`images\[1\]` could not be decoded"):
        processor(images=[_rgb(), str(path)], text="<image><image>\nHi")


def test_non_image_file_and_unknown_string_are_value_errors(processor, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=r"`images`: .*notes.txt' is not an image file PIL can read"):
        processor(images=str(path), text="<image>\nHi")
    with pytest.raises(ValueError, match=r"`images` is the string 'a cat', which is neither an existing file"):
        processor(images="a cat", text="<image>\nHi")


def test_base64_and_data_uri_strings_are_opened(processor):
    data = base64.b64encode(_png_bytes(Image.fromarray(_rgb()))).decode()
    expected = _pixels(processor, _rgb())
    np.testing.assert_array_equal(_pixels(processor, data), expected)
    np.testing.assert_array_equal(_pixels(processor, "data:image/png;base64," + data), expected)


def test_url_is_downloaded_with_a_time_limit_and_errors_name_images(processor, monkeypatch):
    import urllib.error
    import urllib.request

    timeouts = []

    def fake_urlopen(url, timeout=None):
        timeouts.append(timeout)
        if "missing" in url:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(_png_bytes(Image.fromarray(_rgb())))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    np.testing.assert_array_equal(_pixels(processor, "https://example.com/a.png"), _pixels(processor, _rgb()))
    with pytest.raises(ValueError, match=r"`images`: could not download 'https://example.com/missing.png'"):
        _pixels(processor, "https://example.com/missing.png")
    assert timeouts and all(timeout is not None for timeout in timeouts)


# --- arrays ---


@pytest.mark.parametrize(
    "to_input",
    [
        lambda rgb: rgb,
        lambda rgb: np.ascontiguousarray(rgb.transpose(2, 0, 1)),
        lambda rgb: torch.from_numpy(rgb),
        lambda rgb: torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
        lambda rgb: rgb[None],  # a batch of one
        lambda rgb: rgb.astype(np.float32) / 255,
        lambda rgb: torch.from_numpy(rgb.transpose(2, 0, 1).copy()).to(torch.float64) / 255,
        lambda rgb: torch.from_numpy(rgb.transpose(2, 0, 1).copy()).half() / 255,
        lambda rgb: rgb.astype(np.int64),
    ],
    ids=["numpy-HWC", "numpy-CHW", "torch-HWC", "torch-CHW", "numpy-NHWC", "float32-01", "float64-CHW", "half-CHW",
         "int64"],  # fmt: skip
)
def test_arrays_in_hwc_and_chw_give_the_pil_result(processor, to_input):
    rgb = _rgb()
    expected = _pixels(processor, Image.fromarray(rgb))
    # fp16 holds 0..1 to ~3 decimals: a pixel may round to its neighbour value
    atol = 0.02 if "half" in str(to_input(rgb).dtype) else 0
    np.testing.assert_allclose(_pixels(processor, to_input(rgb)), expected, atol=atol)


def test_bfloat16_tensor_is_accepted_as_a_float_image():
    image = prepare_image(torch.full((3, 4, 5), 0.5, dtype=torch.bfloat16))
    assert image.size == (5, 4) and np.asarray(image)[0, 0].tolist() == [128, 128, 128]


def test_ambiguous_layout_reads_tensors_channels_first_and_numpy_channels_last():
    array = np.zeros((3, 4, 3), np.uint8)
    assert prepare_image(array).size == (4, 3)  # [H=3, W=4, C=3]
    assert prepare_image(torch.from_numpy(array)).size == (3, 4)  # [C=3, H=4, W=3]


@pytest.mark.parametrize(
    "image, error, message",
    [
        (np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3) % 256, ValueError,
         r"`images` is a float image with values in \[0, 255\]"),
        (np.full((20, 30, 3), -0.5, np.float32), ValueError, r"float images must hold values in \[0, 1\]"),
        (np.full((20, 30, 3), np.nan, np.float32), ValueError, r"`images` holds NaN or infinite pixel values"),
        (torch.full((3, 20, 30), float("inf")), ValueError, r"`images` holds NaN or infinite"),
        (np.full((20, 30, 3), 300, np.int32), ValueError, r"`images` is an integer image .* expected 0..255"),
        (np.zeros((20, 30, 2), np.uint8), ValueError, r"`images` has shape \(20, 30, 2\); expected \[height, width\]"),
        (np.zeros((1, 1, 20, 30, 3), np.uint8), ValueError, r"`images` has shape \(1, 1, 20, 30, 3\)"),
        (np.zeros((0, 30, 3), np.uint8), ValueError, r"`images` is empty: 0x30"),
        (Image.new("RGB", (0, 5)), ValueError, r"`images` is empty: 5x0"),
        (np.zeros((20, 30, 3), np.complex64), TypeError, r"`images` must hold numbers"),
        (5, TypeError, r"`images` must be a PIL image, a numpy array, .*got int"),
        ([None], TypeError, r"`images\[0\]` must be a PIL image.*got NoneType"),
    ],
    ids=["float-0-255", "float-negative", "nan", "inf", "int-over-255", "2-channels", "5-D", "empty-array",
         "empty-pil", "complex", "int", "none-in-list"],  # fmt: skip
)
def test_unusable_images_raise_an_error_naming_images(processor, image, error, message):
    with pytest.raises(error, match=message):
        processor(images=image, text="<image>\nHi")


def test_image_processor_alone_applies_the_same_checks():
    image_processor = FerretImageProcessorPil(size={"height": 28, "width": 28})
    with pytest.raises(ValueError, match=r"`images\[1\]` is a float image"):
        image_processor([_rgb(), np.full((4, 4, 3), 2.0)])
    pixel_values = image_processor(_rgb().astype(np.float32) / 255, return_tensors="np")["pixel_values"]
    assert pixel_values.shape == (1, 3, 28, 28)


def test_no_warning_escapes_for_ordinary_images(processor):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pixels(processor, Image.fromarray(_rgb()))


def test_batches_inside_lists_are_spliced_and_mixed_nesting_is_a_value_error(processor):
    batch = np.stack([_rgb(seed=1), _rgb(seed=2)])
    pixel_values = processor(images=[batch, _rgb(seed=3)], text="<image><image><image>\nHi", return_tensors="np")
    assert pixel_values["pixel_values"].shape == (3, 3, 28, 28)
    with pytest.raises(ValueError, match=r"`images` mixes images and lists of images"):
        processor(images=[_rgb(), [_rgb()]], text="<image><image>\nHi")
    with pytest.raises(ValueError, match=r"`images\[0\]\[0\]` is a list inside a list of lists"):
        processor(images=[[[_rgb()]]], text="<image>\nHi")
