"""Bad and unusual images get a clear ValueError/TypeError naming `images`, or a documented conversion (see
docs/robustness.md)."""

import base64
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from tiny_models import tiny_processor

from transformers_ferret import FerretImageProcessorPil
from transformers_ferret.image_processing_ferret import prepare_image


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


def test_bfloat16_tensor_is_accepted():
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
def test_unusable_images_name_the_argument(processor, image, error, message):
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
