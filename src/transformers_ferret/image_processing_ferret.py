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

import numpy as np
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
    model_input_names = ["pixel_values", "pixel_values_tiles", "image_grids"]

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


__all__ = ["FerretImageProcessorPil"]
