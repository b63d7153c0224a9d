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
"""
Training collator for Ferret: raw GRIT-format rows in, a padded model batch with labels out.

It reproduces the data path of the original Ferret training code (`ferret/train/train.py`):

* boxes are clamped to the image (`[0, W-1] x [0, H-1]`);
* in a **user** turn, each `<bbox_locationK>` becomes a referred region: the turn is presented either with points
  (probability `point_probability`) or with boxes, one draw per turn. The text is the coordinates on the 1000 grid
  followed by one space and the region token (`"[x, y] <region_fea>"` or `"[x1, y1, x2, y2] <region_fea>"`), and
  the region's mask is:
  * point: the 11x11 window around the point intersected with the box's segmentation mask (when the sample has one)
    or else with the box. The point is the mask pixel nearest the box centre among up to 1000 random mask pixels,
    or, without a mask, a Gaussian draw around the box centre (sigma = 0.15 x box size per axis), redrawn until it
    falls inside the box;
  * box: the box intersected with the segmentation mask (the box alone if there is no mask or the intersection is
    empty), so with masks a "box" region is really free-form;
* in an **assistant** turn, each placeholder becomes the plain box text `[x1, y1, x2, y2]` (`int(v * 1000 / W)`);
* `<image>` is removed from the text and the image goes at the start of the first user turn (`<image>\\n...`);
* only assistant replies and their closing `</s>` are supervised (everything after `"ASSISTANT:"` up to and including
  `</s>`, as the original): every other position, and every image or region token, has label -100.

Samples made by `transformers_ferret.synthetic_shapes` carry a `region_types` column (`"point"`, `"box"` or
`"free-form"` per box); with `use_region_types=True` (the default) it decides each region instead of the draw:
a point stored as a box `[x, y, x, y]` is that point (its window ∩ the mask, or the whole window without a mask),
`"box"` is the box alone, `"free-form"` is box ∩ mask.

The coordinate text is written by the collator, followed by the processor's region token; the region itself (the
final mask) goes to the processor in `regions`, which samples its points. This is how the processor accepts
regions whose text it did not write (its `<region>` placeholder would write the *mask's* bounding box, not the
original's box or point text).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..coordinates import coordinate_text
from ..region_utils import normalize_region


_BBOX_PLACEHOLDER = re.compile(r"<bbox_location(\d+)>")
_MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "region_points",
    "region_counts",
    "pixel_values_tiles",
    "image_grids",
    "image_sizes",
)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def clamp_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """The original's `regulate_box`: corners clamped to `[0, width - 1] x [0, height - 1]`."""
    x1, y1, x2, y2 = (float(value) for value in box)
    return [
        min(max(x1, 0.0), width - 1.0),
        min(max(y1, 0.0), height - 1.0),
        min(max(x2, 0.0), width - 1.0),
        min(max(y2, 0.0), height - 1.0),
    ]


class FerretDataCollator:
    r"""
    Turns raw GRIT-format rows into a Ferret training batch (see the module docstring for the conversion rules).

    Use it with TRL's `SFTTrainer` and `SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset":
    True})` so that the rows reach the collator whole:

    ```python
    trainer = SFTTrainer(model=model, processing_class=processor, train_dataset=load_grit(json_path, image_folder),
                         data_collator=FerretDataCollator(processor), args=SFTConfig(remove_unused_columns=False, ...))
    ```

    Args:
        processor ([`FerretProcessor`]): the model's processor (its chat template, region token, image processor).
        point_probability (`float`, defaults to 0.5): probability that a user turn presents its regions as points.
        seed (`int`, defaults to 0): seeds every random choice (point or box, point location, subsets of mask
            pixels). Two collators with the same seed give the same batches for the same sequence of calls. The
            random state lives in the collator, so with `dataloader_num_workers > 0` every worker starts from the same
            state (each worker collates different rows, so this only correlates the draws across workers).
        max_length (`int`, *optional*): truncate each sequence to this many tokens (after image expansion) on the
            right. Regions whose token is cut off are dropped; cutting an image token raises a `ValueError`.
        use_masks (`bool`, defaults to `True`): use the samples' segmentation masks (else regions are built from
            boxes alone, as for a dataset without masks).
        use_region_types (`bool`, defaults to `True`): follow a `region_types` column when a row has one.
        image_folder (`str`, *optional*): folder for rows whose `image` is a file name rather than an image.
        num_mask_candidates (`int`, defaults to 1000): mask pixels considered when picking a point.
        random_region_points (`bool`, defaults to `True`): sample a random subset of the pixels of large region masks
            for the region sampler (as the original), drawn from the seeded generator; `False` uses the processor's
            deterministic evenly spaced subset.
        pad_to_multiple_of (`int`, *optional*): pad the sequence length to a multiple of this.

    Returns (from `__call__`):
        `dict` of tensors: `input_ids`, `attention_mask` (right padding), `labels`, `pixel_values`; `region_points`
        and `region_counts` when some sample of the batch refers to a region; and for a Ferret-v2 image processor
        `pixel_values_tiles`, `image_grids` and `image_sizes`.
    """

    def __init__(
        self,
        processor,
        point_probability: float = 0.5,
        seed: int = 0,
        max_length: int | None = None,
        use_masks: bool = True,
        use_region_types: bool = True,
        image_folder: str | os.PathLike | None = None,
        num_mask_candidates: int = 1000,
        random_region_points: bool = True,
        pad_to_multiple_of: int | None = None,
    ):
        if not 0.0 <= point_probability <= 1.0:
            raise ValueError(f"`point_probability` must be in [0, 1], got {point_probability}.")
        self.processor = processor
        self.point_probability = point_probability
        self.seed = seed
        self.max_length = max_length
        self.use_masks = use_masks
        self.use_region_types = use_region_types
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.num_mask_candidates = num_mask_candidates
        self.random_region_points = random_region_points
        self.pad_to_multiple_of = pad_to_multiple_of
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Restarts the random streams (from `seed`, default the constructor's)."""
        seed = self.seed if seed is None else seed
        self.rng = np.random.default_rng(seed)
        self.region_generator = torch.Generator().manual_seed(seed)

    # -- one sample ------------------------------------------------------------------------------------------
    def _load_image(self, image) -> Image.Image | None:
        if image is None or isinstance(image, Image.Image):
            return image
        if isinstance(image, Mapping):  # `datasets.Image(decode=False)`
            if image.get("bytes") is not None:
                return Image.open(io.BytesIO(image["bytes"]))
            image = image["path"]
        path = Path(image)
        if self.image_folder is not None and not path.is_absolute():
            path = self.image_folder / path
        return Image.open(path)

    def _segmentation(self, masks, turn_index: int, box_index: int, height: int, width: int) -> np.ndarray | None:
        if not self.use_masks or not masks or masks[turn_index] is None or box_index >= len(masks[turn_index]):
            return None
        rle = masks[turn_index][box_index]
        if rle is None:
            return None
        from .grit import rle_to_mask

        mask = rle_to_mask(rle)
        if mask.shape != (height, width):
            raise ValueError(
                f"A segmentation mask is {mask.shape[0]}x{mask.shape[1]} (height x width) but the image is "
                f"{height}x{width}."
            )
        return mask if mask.any() else None

    def _sample_point(self, box: list[float], mask: np.ndarray | None) -> tuple[float, float]:
        """The original's point for a box: nearest mask pixel to the box centre, else a Gaussian draw in the box."""
        x1, y1, x2, y2 = box
        centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
        if mask is not None:
            rows, columns = np.nonzero(mask)
            if rows.size > self.num_mask_candidates:
                keep = self.rng.choice(rows.size, self.num_mask_candidates, replace=False)
                rows, columns = rows[keep], columns[keep]
            nearest = int(np.argmin((columns - centre_x) ** 2 + (rows - centre_y) ** 2))
            return float(columns[nearest]), float(rows[nearest])
        for _ in range(100):
            x = self.rng.normal(centre_x, 0.15 * (x2 - x1))
            y = self.rng.normal(centre_y, 0.15 * (y2 - y1))
            if x1 <= x <= x2 and y1 <= y <= y2:
                return float(x), float(y)
        return centre_x, centre_y

    def _user_region(self, kind: str, box: list[float], segmentation, height: int, width: int):
        """`(text, mask, point)` of one referred region of kind `"point"`, `"box"`, `"free-form"` or `"sampled-box"`."""
        if kind not in ("point", "box", "free-form", "sampled-box"):
            raise ValueError(f"Unknown region type {kind!r}; expected 'point', 'box' or 'free-form'.")
        size = (height, width)
        if kind == "point":
            stored_point = box[:2] == box[2:]  # a point stored as the box [x, y, x, y] (synthetic_shapes)
            point = tuple(box[:2]) if stored_point else self._sample_point(box, segmentation)
            window, text = normalize_region({"point": point}, size)
            if segmentation is not None:
                limit = segmentation
            elif not stored_point:
                limit = normalize_region({"box": box}, size)[0]
            else:
                return text, window, point
            mask = window & limit
            return text, (mask if mask.any() else window), point
        box_mask, text = normalize_region({"box": box}, size)
        if kind == "box" or segmentation is None:
            return text, box_mask, None
        mask = box_mask & segmentation
        return text, (mask if mask.any() else box_mask), None

    def prepare_example(self, example: Mapping) -> dict:
        """
        Converts one GRIT row into chat messages and regions, drawing the random choices.

        Returns:
            `dict` with `messages` (the processor's chat format, image item first in the first user message),
            `regions` (one `{"mask": [H, W] bool}` per region token, in order) and `region_info` (per region: `kind`
            `"point"` or `"box"`, the clamped `box`, the `point` `(x, y)` for a point, and the coordinate `text`).
        """
        image = self._load_image(example.get("image"))
        conversations = example["conversations"]
        boxes_per_turn = example.get("box_x1y1x2y2") or [[] for _ in conversations]
        masks = example.get("masks")
        types_per_turn = example.get("region_types") if self.use_region_types else None
        if image is not None:
            width, height = image.size
            if example.get("image_w") is not None and (example["image_w"], example["image_h"]) != (width, height):
                raise ValueError(
                    f"Row {example.get('id', '')!r}: `image_w` x `image_h` = {example['image_w']} x "
                    f"{example['image_h']} but the image is {width} x {height}."
                )
        else:
            width, height = example.get("image_w"), example.get("image_h")

        messages, regions, region_info = [], [], []
        image_placed = False
        for turn_index, turn in enumerate(conversations):
            role = _ROLES.get(turn["from"])
            if role is None:
                raise ValueError(f"Unknown speaker {turn['from']!r}; GRIT turns are from 'human' or 'gpt'.")
            text = turn["value"]
            if "<image>" in text:
                text = text.replace("<image>", "").strip()
            boxes = [clamp_box(box, width, height) for box in (boxes_per_turn[turn_index] or [])]
            turn_types = types_per_turn[turn_index] if types_per_turn and types_per_turn[turn_index] else None
            turn_kind = None
            if role == "user" and _BBOX_PLACEHOLDER.search(text) and turn_types is None:
                turn_kind = "point" if self.rng.random() < self.point_probability else "sampled-box"

            def replace(match, role=role, boxes=boxes, turn_types=turn_types, turn_kind=turn_kind,
                        turn_index=turn_index):  # fmt: skip
                index = int(match.group(1))
                if index >= len(boxes):
                    raise ValueError(
                        f"Turn {turn_index} refers to <bbox_location{index}> but has {len(boxes)} boxes."
                    )
                box = boxes[index]
                kind = turn_types[index] if turn_types is not None else turn_kind
                if role == "assistant":
                    values = box[:2] if kind == "point" else box
                    return coordinate_text(values, width, height)
                segmentation = self._segmentation(masks, turn_index, index, height, width)
                region_text, mask, point = self._user_region(kind, box, segmentation, height, width)
                regions.append({"mask": mask})
                region_info.append(
                    {"kind": "point" if kind == "point" else "box", "box": box, "point": point, "text": region_text}
                )
                return f"{region_text} {self.processor.region_token}"

            text = _BBOX_PLACEHOLDER.sub(replace, text)
            content = [{"type": "text", "text": text}]
            if role == "user" and image is not None and not image_placed:
                content.insert(0, {"type": "image", "image": image})
                image_placed = True
            messages.append({"role": role, "content": content})
        return {"messages": messages, "regions": regions, "region_info": region_info}

    # -- the batch -------------------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        prepared = [self.prepare_example(example) for example in examples]
        processor_kwargs = {
            "regions": [sample["regions"] for sample in prepared],
            "padding": True,
            "padding_side": "right",
            "add_special_tokens": False,
        }
        if self.pad_to_multiple_of is not None:
            processor_kwargs["pad_to_multiple_of"] = self.pad_to_multiple_of
        if self.random_region_points:
            processor_kwargs["region_generator"] = self.region_generator
        outputs = self.processor.apply_chat_template(
            [sample["messages"] for sample in prepared],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs=processor_kwargs,
        )
        batch = {key: outputs[key] for key in _MODEL_INPUTS if key in outputs}
        input_ids = batch["input_ids"]
        labels = input_ids.clone()
        special = torch.tensor([self.processor.image_token_id, self.processor.region_token_id])
        unsupervised = (
            (torch.as_tensor(outputs["assistant_masks"]) == 0)
            | (batch["attention_mask"] == 0)
            | torch.isin(input_ids, special)
        )
        labels[unsupervised] = -100
        batch["labels"] = labels
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            batch = self._truncate(batch)
        for key in ("input_ids", "attention_mask", "labels", "region_counts", "image_grids", "image_sizes"):
            if key in batch:
                batch[key] = batch[key].long()
        return batch

    def _truncate(self, batch: dict) -> dict:
        """Cuts every sequence to `max_length` tokens, dropping the regions whose tokens are cut off."""
        length = self.max_length
        input_ids = batch["input_ids"]
        if (input_ids[:, length:] == self.processor.image_token_id).any():
            raise ValueError(
                f"`max_length={length}` cuts image tokens off (the image alone takes "
                f"{int((input_ids == self.processor.image_token_id).sum(1).max())} tokens); raise `max_length`."
            )
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch[key][:, :length]
        if "region_counts" in batch:
            counts = (batch["input_ids"] == self.processor.region_token_id).sum(1)
            batch["region_counts"] = counts
            if counts.max() == 0:
                del batch["region_points"], batch["region_counts"]
            else:
                batch["region_points"] = batch["region_points"][:, : int(counts.max())]
        return batch


__all__ = ["FerretDataCollator", "clamp_box"]
