# Copyright 2025 The transformers-ferret authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image processor for Ferret: CLIP normalisation after an anisotropic stretch; Ferret-v2 adds tiles."""

import base64
import binascii
import io
import os
import urllib.request

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature, select_best_resolution
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes read as 16-bit images (`"I"` is what older Pillow versions open 16-bit PNGs as)."""

FLOAT_TOLERANCE = 0.5 / 255
"""How far outside [0, 1] a float image may stray (half an 8-bit step: float rounding) before it is rejected."""

URL_TIMEOUT_SECONDS = 30.0
"""Time limit of one image download (an image given as an http(s) URL)."""

_CHANNEL_COUNTS = (1, 3, 4)


def _describe(label: str) -> str:
    return f"`images{label}`"


def _to_uint8(array: np.ndarray, label: str, sixteen_bit: bool = False) -> np.ndarray:
    """
    Pixel values of any numeric dtype -> uint8, by the rules of [`prepare_image`]: bool -> 0/255, floats in [0, 1] ->
    `round(255 v)`, 16-bit -> `round(v / 257)`, other integers must already be in 0..255.
    """
    name = _describe(label)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold numbers (uint8, uint16, bool or float in [0, 1]), got dtype {array.dtype}.")
    if array.size == 0:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or infinite pixel values.")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ValueError(
                f"{name} is a float image with values in [{low:g}, {high:g}]; float images must hold values in "
                "[0, 1]. "
                "For 0..255 values pass a uint8 array (`array.astype(np.uint8)`); already normalised pixels go to the "
                "model as `pixel_values` directly."
            )
        return np.clip(np.rint(array.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if sixteen_bit or array.dtype == np.uint16:
        if low < 0 or high > 65535:
            raise ValueError(f"{name} is a 16-bit image with values in [{low}, {high}]; expected 0..65535.")
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if low < 0 or high > 255:
        raise ValueError(
            f"{name} is an integer image ({array.dtype}) with values in [{low}, {high}]; expected 0..255 (or a uint16 "
            "array for 16-bit images)."
        )
    return array.astype(np.uint8)


def _check_size(height: int, width: int, label: str) -> None:
    if height == 0 or width == 0:
        raise ValueError(f"{_describe(label)} is empty: {height}x{width} (height x width) pixels.")


def _prepare_pil(image: Image.Image, label: str) -> Image.Image:
    try:
        image.load()  # decodes lazily opened files now, so a truncated or corrupt file fails here, by name
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Image.DecompressionBombError as error:
        raise _bomb_error(error, label) from error
    except Exception as error:
        raise ValueError(
            f"{_describe(label)} could not be decoded ({type(error).__name__}: {error}); the image file is truncated "
            "or corrupt."
        ) from error
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
    _check_size(image.height, image.width, label)
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "F":
        image = Image.fromarray(_to_uint8(np.asarray(image), label, sixteen_bit=image.mode != "F"))
    return image


def _prepare_array(array, label: str) -> Image.Image:
    channels_first_if_ambiguous = isinstance(array, torch.Tensor)
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.dtype in (torch.float16, torch.bfloat16) else array).numpy()
    shape = tuple(array.shape)
    expected = (
        "[height, width], [height, width, channels] or [channels, height, width] with 1, 3 or 4 channels (or a "
        "batch of them)"
    )
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3:
        first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
        if first and (channels_first_if_ambiguous or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(f"{_describe(label)} has shape {shape}; expected {expected}.")
    else:
        raise ValueError(f"{_describe(label)} has shape {shape}; expected {expected}.")
    _check_size(array.shape[0], array.shape[1], label)
    array = _to_uint8(array, label)
    return Image.fromarray(np.ascontiguousarray(array[..., 0] if array.shape[-1] == 1 else array))


def _bomb_error(error: Exception, label: str) -> ValueError:
    return ValueError(
        f"{_describe(label)} was refused by PIL's decompression-bomb guard: {error} The limit is "
        "`PIL.Image.MAX_IMAGE_PIXELS`; Ferret keeps it on."
    )


def _open_source(source: str, label: str) -> Image.Image:
    """Opens an image given as a path, an http(s) URL or base64 data (optionally a `data:image/...` URI)."""
    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        if source.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(source, timeout=URL_TIMEOUT_SECONDS) as response:  # follows redirects
                    data = response.read()
            except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
                raise ValueError(f"{_describe(label)}: could not download {shown!r}: {error}") from error
            return Image.open(io.BytesIO(data))
        if os.path.isfile(source):
            return Image.open(source)
        data = source.split(",", 1)[1] if source.startswith("data:image/") and "," in source else source
        try:
            return Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        except (binascii.Error, ValueError, Image.UnidentifiedImageError):
            raise ValueError(
                f"{_describe(label)} is the string {shown!r}, which is neither an existing file, an http(s) URL nor "
                "base64 image data."
            ) from None
    except Image.DecompressionBombError as error:
        raise _bomb_error(error, label) from error
    except Image.UnidentifiedImageError as error:
        raise ValueError(f"{_describe(label)}: {shown!r} is not an image file PIL can read ({error}).") from error


def prepare_image(image, label: str = ""):
    """
    Checks one image and brings it to the form the rest of Ferret's preprocessing relies on, with a clear error naming
    `images` for anything it cannot use.

    * Strings are opened: an existing file path, an http(s) URL or base64 data. PIL's decompression-bomb guard stays
      on: an image larger than `PIL.Image.MAX_IMAGE_PIXELS` is refused with a `ValueError`.
    * PIL images are decoded now (a truncated or corrupt file raises a `ValueError`) and turned upright by their EXIF
      orientation (`ImageOps.exif_transpose`), so pixel coordinates refer to the image as displayed. 16-bit modes
      (`"I;16*"`, `"I"`) are scaled to 8 bits (`round(v / 257)`); mode `"F"` follows the float rule below. Other modes
      (grayscale, palette, CMYK, with alpha, ...) are kept: the image processor converts them to RGB (transparency
      composited on white).
    * numpy arrays and torch tensors are `[height, width]`, `[height, width, channels]` or `[channels, height, width]`
      with 1, 3 or 4 channels; when both ends could be the channels, tensors are read channels-first and numpy
      arrays channels-last. Values: uint8 as is; bool as 0/255; uint16 as 16-bit (`round(v / 257)`); other integers
      must lie in 0..255; floats (any precision, including bfloat16) must be finite and lie in [0, 1] (half an 8-bit
      step of slack) and become `round(255 v)`: a float image outside [0, 1] is rejected, not clipped. Arrays become
      PIL images.
    * An image with zero height or width is rejected.

    Args:
        image: a PIL image, numpy array, torch tensor or string (a 4-D array is a batch: a list is returned).
        label (`str`): where the image sits in `images`, e.g. `"[1]"`, for the error messages.

    Returns:
        a PIL image (or a list of them for a 4-D batch).

    Raises:
        `ValueError`: the image cannot be read or holds values Ferret cannot interpret.
        `TypeError`: the input is not an image.
    """
    if isinstance(image, str):
        image = _open_source(image, label)
    if isinstance(image, Image.Image):
        return _prepare_pil(image, label)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        if image.ndim == 4:
            return [_prepare_array(frame, f"{label}[{index}]") for index, frame in enumerate(image)]
        return _prepare_array(image, label)
    raise TypeError(
        f"{_describe(label)} must be a PIL image, a numpy array, a torch tensor, a file path, an http(s) URL or "
        f"base64 data, got {type(image).__name__}."
    )


def prepare_images(images, label: str = ""):
    """
    [`prepare_image`] on every image of `images`: one image, a list of images or a list of lists of images (one list
    per sample), keeping that nesting; a 4-D array inside a list adds its frames to that list. `None` stays `None`.

    Raises:
        `ValueError`: for a list that mixes images and lists of images, or nests deeper than lists of lists.
    """
    if images is None:
        return None

    def prepare_list(items, items_label: str, depth: int) -> list:
        prepared = []
        for index, item in enumerate(items):
            item_label = f"{items_label}[{index}]"
            if isinstance(item, (list, tuple)):
                if depth == 2:
                    raise ValueError(
                        f"{_describe(item_label)} is a list inside a list of lists: give one image, a list of images, "
                        "or one list of images per sample."
                    )
                prepared.append(prepare_list(item, item_label, depth + 1))
                continue
            image = prepare_image(item, item_label)
            prepared.extend(image if isinstance(image, list) else [image])  # a 4-D array adds its frames
        if any(isinstance(item, list) for item in prepared) and not all(isinstance(item, list) for item in prepared):
            raise ValueError(
                f"{_describe(items_label)} mixes images and lists of images: give a list of images, or one list of "
                "images per sample."
            )
        return prepared

    if isinstance(images, (list, tuple)):
        return prepare_list(images, label, 1)
    return prepare_image(images, label)


class FerretImageProcessorKwargs(ImagesKwargs, total=False):
    """
    image_grid_pinpoints (`list[list[int]]`): Ferret-v2 candidate resolutions `[height, width]`; `None` = Ferret v1.
    tile_size (`int`): side of a tile in pixels.
    tile_image_mean / tile_image_std (`list[float]`): normalisation of the tiles (DINOv2: ImageNet statistics).
    """

    image_grid_pinpoints: list[list[int]] | None
    tile_size: int | None
    tile_image_mean: list[float] | None
    tile_image_std: list[float] | None


class FerretImageProcessorPil(PilBackend):
    r"""
    Constructs a Ferret image processor (PIL / NumPy backend).

    Ferret stretches every image to exactly `size` (336x336 for the released models), ignoring its aspect ratio: there
    is no center crop and no padding. Because the whole original image is kept, region coordinates given in pixels of
    the original image (or on Ferret's 1000x1000 text grid) stay aligned with the vision features. The image is
    resized with PIL bicubic resampling, rescaled by 1/255 and normalised with the OpenAI CLIP mean and std.

    Output: `pixel_values` of shape `[batch_size, 3, size["height"], size["width"]]`.

    Every input image first goes through [`prepare_image`]: EXIF orientation applied, 16-bit images scaled to 8 bits,
    float images read as [0, 1] (values outside are rejected), arrays in `[H, W]`, `[H, W, C]` or `[C, H, W]` layout;
    unreadable, truncated, empty or out-of-range images raise a `ValueError` naming `images` (see
    `docs/robustness.md`).

    Ferret-v2 (any resolution, `image_grid_pinpoints` set): each image is also stretched to the pinpoint that
    transformers' `select_best_resolution` picks for it (largest effective resolution, then least waste; no padding, so
    region coordinates stay aligned), cut into `tile_size` tiles in row-major order and normalised with
    `tile_image_mean`/`tile_image_std`. Extra outputs: `pixel_values_tiles` `[batch_size, max_tiles, 3, tile_size,
    tile_size]` (zero after an image's tiles; `max_tiles` = the largest grid among the pinpoints), `image_grids`
    `[batch_size, 2]` (tile rows, cols) and `image_sizes` `[batch_size, 2]` (original height, width).
    """

    valid_kwargs = FerretImageProcessorKwargs
    image_grid_pinpoints = None
    tile_size = 336
    tile_image_mean = IMAGENET_DEFAULT_MEAN
    tile_image_std = IMAGENET_DEFAULT_STD

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 336, "width": 336}
    default_to_square = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values", "pixel_values_tiles", "image_grids", "region_points"]
    # `pipeline(..., batch_size=n)` pads the inputs listed above on this side and every other input like the text
    # (on the left, for generation). A sample's region slots must come first (the model reads `region_counts` slots
    # from the start), so `region_points`, which the processor samples from regions of this image, is listed too.
    padding_side = "right"

    def fetch_images(self, image_url_or_urls):
        """Opens paths, URLs and base64 strings and checks every image, see [`prepare_image`]."""
        return prepare_images(image_url_or_urls)

    def select_grid(self, image_size: tuple[int, int], image_grid_pinpoints=None, tile_size=None) -> tuple[int, int]:
        """`(rows, cols)` of the tile grid for an image of `(height, width)` `image_size` (best-resolution rule)."""
        pinpoints = image_grid_pinpoints if image_grid_pinpoints is not None else self.image_grid_pinpoints
        tile_size = tile_size or self.tile_size
        height, width = select_best_resolution(tuple(image_size), [tuple(pinpoint) for pinpoint in pinpoints])
        return height // tile_size, width // tile_size

    def _preprocess(self, images, image_grid_pinpoints=None, tile_size=None, tile_image_mean=None, tile_image_std=None,
                    **kwargs) -> BatchFeature:  # fmt: skip
        """The global views as Ferret v1; with `image_grid_pinpoints`, the tiles too (see the class docstring)."""
        return_tensors = kwargs.pop("return_tensors", None)
        outputs = super()._preprocess(images, return_tensors=None, **kwargs)
        if image_grid_pinpoints:
            outputs.update(
                self._preprocess_tiles(
                    images, image_grid_pinpoints, tile_size, tile_image_mean, tile_image_std, kwargs["resample"],
                    kwargs["do_rescale"], kwargs["rescale_factor"], kwargs["do_normalize"],
                )  # fmt: skip
            )
        return BatchFeature(data=dict(outputs), tensor_type=return_tensors)

    def _preprocess_tiles(self, images, pinpoints, tile_size, mean, std, resample, do_rescale, rescale_factor,
                          do_normalize) -> dict:  # fmt: skip
        """Stretches each `[C, H, W]` image to its best pinpoint and cuts `tile_size` tiles, row-major."""
        max_tiles = max((height // tile_size) * (width // tile_size) for height, width in pinpoints)
        grids, sizes, tiles = [], [], np.zeros((len(images), max_tiles, 3, tile_size, tile_size), dtype=np.float32)
        for index, image in enumerate(images):
            rows, cols = self.select_grid(image.shape[-2:], pinpoints, tile_size)
            resized = self.resize(image, SizeDict(height=rows * tile_size, width=cols * tile_size), resample=resample)
            if do_rescale:
                resized = self.rescale(resized, rescale_factor)
            if do_normalize:
                resized = self.normalize(resized, mean, std)
            grid_tiles = resized.reshape(3, rows, tile_size, cols, tile_size).transpose(1, 3, 0, 2, 4)
            tiles[index, : rows * cols] = grid_tiles.reshape(rows * cols, 3, tile_size, tile_size)
            grids.append((rows, cols))
            sizes.append(tuple(image.shape[-2:]))
        return {
            "pixel_values_tiles": tiles,
            "image_grids": np.array(grids, dtype=np.int64),
            "image_sizes": np.array(sizes, dtype=np.int64),
        }


__all__ = ["FerretImageProcessorPil", "prepare_image", "prepare_images"]
