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
"""Image processor for Ferret (v1): CLIP normalisation after an anisotropic stretch."""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


class FerretImageProcessorPil(PilBackend):
    r"""
    Constructs a Ferret image processor (PIL / NumPy backend).

    Ferret stretches every image to exactly `size` (336x336 for the released models), ignoring its aspect ratio: there
    is no center crop and no padding. Because the whole original image is kept, region coordinates given in pixels of
    the original image (or on Ferret's 1000x1000 text grid) stay aligned with the vision features. The image is
    resized with PIL bicubic resampling, rescaled by 1/255 and normalised with the OpenAI CLIP mean and std.

    Output: `pixel_values` of shape `[batch_size, 3, size["height"], size["width"]]`.
    """

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
    model_input_names = ["pixel_values"]


__all__ = ["FerretImageProcessorPil"]
