"""FerretDataCollator: GRIT rows -> model batch (regions, coordinate text, labels), as the original training code."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_processor, tiny_ferret_config, tiny_ferret_v2_config

from transformers_ferret import FerretForConditionalGeneration, FerretImageProcessorPil, FerretProcessor
from transformers_ferret.training.collator import FerretDataCollator
from transformers_ferret.coordinates import coordinate_text
from transformers_ferret.training.grit import load_grit, mask_to_rle

TEXT_CONFIG = {"model_type": "llama", "vocab_size": 502, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
HEIGHT, WIDTH = 40, 60


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir, num_region_points=16)


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def _image(seed=0, height=HEIGHT, width=WIDTH):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _l_mask():
    """An L shape whose bounding box [10, 5, 45, 30] has its centre (27.5, 17.5) outside the mask."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[5:31, 10:15] = True
    mask[26:31, 10:46] = True
    return mask


L_BOX = [10, 5, 45, 30]
OTHER_BOX = [40.7, 2, 70, 45]  # partly outside the 60 x 40 image: clamped to [40.7, 2, 59, 39]


def _row(masks=True, **extra):
    row = {
        "id": "sample",
        "image": _image(),
        "image_w": WIDTH,
        "image_h": HEIGHT,
        "conversations": [
            {"from": "human", "value": "What is <bbox_location0>? Compare it with <bbox_location1>.\n<image>"},
            {"from": "gpt", "value": "An L shape <bbox_location0>."},
            {"from": "human", "value": "And the other one?"},
            {"from": "gpt", "value": "Noise."},
        ],
        "box_x1y1x2y2": [[L_BOX, OTHER_BOX], [L_BOX], [], []],
    }
    if masks:
        row["masks"] = [[mask_to_rle(_l_mask()), None], [None], [], []]
    row.update(extra)
    return row


# ---- labels ---------------------------------------------------------------------------------------------------


def test_labels_token_by_token(processor, tokenizer):
    collator = FerretDataCollator(processor, point_probability=0.5, seed=0)
    row = _row()
    prepared = collator.prepare_example(row)
    collator.reset()
    batch = collator([row])
    input_ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert batch["attention_mask"].all()

    # Independent construction, as the original's `preprocess_v1`: the reply of assistant turn k covers the tokens
    # from the end of the prompt that ends with "ASSISTANT:" to the end of the text that ends with its "</s>".
    messages, regions, image = prepared["messages"], prepared["regions"], row["image"]

    def length(text):
        count = text.count(processor.region_token)
        out = processor(images=[image], text=text, regions=[regions[:count]], add_special_tokens=False)
        return len(out["input_ids"][0])

    expected = torch.full_like(input_ids, -100)
    replies = []
    for turn in (1, 3):
        prompt = processor.apply_chat_template(messages[:turn], add_generation_prompt=True)
        through = processor.apply_chat_template(messages[: turn + 1])
        assert through.startswith(prompt) and through.endswith("</s>")
        start, end = length(prompt), length(through)
        expected[start:end] = input_ids[start:end]
        replies.append((start, end))
        assert input_ids[end - 1] == tokenizer.eos_token_id
    assert end == len(input_ids)
    assert labels.tolist() == expected.tolist()

    supervised = [tokenizer.decode(input_ids[start:end]) for start, end in replies]
    box_text = coordinate_text(L_BOX, WIDTH, HEIGHT)
    assert supervised == [f"An L shape {box_text}.</s>", "Noise.</s>"]
    for token_id in (processor.image_token_id, processor.region_token_id):
        assert (input_ids == token_id).any() and not (labels == token_id).any()


def test_right_padding_and_prompt_layout(processor, tokenizer):
    collator = FerretDataCollator(processor, point_probability=0.0)
    short = _row(conversations=[{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}],
                 box_x1y1x2y2=[[], []], masks=None)  # fmt: skip
    batch = collator([_row(), short])
    lengths = batch["attention_mask"].sum(1)
    assert lengths[1] < lengths[0] and batch["attention_mask"][1, : lengths[1]].all()
    assert not batch["attention_mask"][1, lengths[1] :].any()
    assert (batch["input_ids"][1, lengths[1] :] == tokenizer.pad_token_id).all()
    assert (batch["labels"][1, lengths[1] :] == -100).all()
    assert batch["region_counts"].tolist() == [2, 0]
    # `<image>` moves to the start of the first user turn, followed by a line break.
    text = processor.apply_chat_template(collator.prepare_example(_row())["messages"])
    assert "USER: <image>\nWhat is [" in text and text.count("<image>") == 1
    assert "Compare it with [678, 50, 983, 975] <region_fea>. ASSISTANT: An L shape [166, 125, 750, 750].</s>" in text


# ---- regions --------------------------------------------------------------------------------------------------


def _region_pixels(batch, row_index, slot):
    """Pixel (x, y) of the region points of one slot."""
    points = batch["region_points"][row_index, slot].numpy()
    return np.round(points * [WIDTH, HEIGHT]).astype(int)


def test_point_is_the_mask_pixel_nearest_the_box_centre(processor):
    collator = FerretDataCollator(processor, point_probability=1.0)
    prepared = collator.prepare_example(_row())
    info = prepared["region_info"][0]
    assert info["kind"] == "point"
    mask = _l_mask()
    x, y = info["point"]
    assert mask[int(y), int(x)]
    rows, cols = np.nonzero(mask)
    distances = (cols - 27.5) ** 2 + (rows - 17.5) ** 2
    assert (x - 27.5) ** 2 + (y - 17.5) ** 2 == distances.min()
    assert info["text"] == coordinate_text([x, y], WIDTH, HEIGHT)
    # The region is the 11x11 window around the point, within the mask.
    region = prepared["regions"][0]["mask"]
    window = np.zeros_like(mask)
    window[max(0, int(y) - 5) : int(y) + 6, max(0, int(x) - 5) : int(x) + 6] = True
    assert np.array_equal(region, window & mask)

    collator.reset()
    batch = collator([_row()])
    for px, py in _region_pixels(batch, 0, 0):
        assert mask[py, px] and abs(px - int(x)) <= 5 and abs(py - int(y)) <= 5


def test_point_without_mask_is_a_gaussian_draw_inside_the_box(processor):
    collator = FerretDataCollator(processor, point_probability=1.0, seed=1, use_masks=False)
    points = []
    for _ in range(50):
        info = collator.prepare_example(_row())["region_info"]
        points += [(region["point"], region["box"]) for region in info]
    for (x, y), (x1, y1, x2, y2) in points:
        assert x1 <= x <= x2 and y1 <= y <= y2
    xs = np.array([point[0] for point, box in points if box == [10.0, 5.0, 45.0, 30.0]])
    assert abs(xs.mean() - 27.5) < 2.0 and 2.0 < xs.std() < 8.0  # sigma = 0.15 * 35 = 5.25
    assert len({point for point, _ in points}) == len(points)


def test_box_with_mask_is_box_and_mask(processor):
    collator = FerretDataCollator(processor, point_probability=0.0)
    prepared = collator.prepare_example(_row())
    assert [info["kind"] for info in prepared["region_info"]] == ["box", "box"]
    assert np.array_equal(prepared["regions"][0]["mask"], _l_mask())  # box ∩ mask
    box_mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    box_mask[2:40, 40:60] = True  # [40.7, 2, 70, 45] clamped to the image, no mask: the box
    assert np.array_equal(prepared["regions"][1]["mask"], box_mask)
    assert [info["text"] for info in prepared["region_info"]] == ["[166, 125, 750, 750]", "[678, 50, 983, 975]"]
    no_masks = FerretDataCollator(processor, point_probability=0.0, use_masks=False).prepare_example(_row())
    assert no_masks["regions"][0]["mask"].sum() == 36 * 26  # the whole inclusive box


def test_choice_is_seeded_and_reproducible(processor):
    rows = [_row() for _ in range(6)]

    def kinds(collator):
        return [[info["kind"] for info in collator.prepare_example(row)["region_info"]] for row in rows]

    first, again = kinds(FerretDataCollator(processor, seed=3)), kinds(FerretDataCollator(processor, seed=3))
    assert first == again
    assert all(len(set(turn)) == 1 for turn in first)  # one draw per user turn
    assert {turn[0] for turn in first} == {"point", "box"}
    assert any(kinds(FerretDataCollator(processor, seed=seed)) != first for seed in (4, 5, 6))

    batch_a = FerretDataCollator(processor, seed=3)(rows[:2])
    batch_b = FerretDataCollator(processor, seed=3)(rows[:2])
    assert all(torch.equal(batch_a[key], batch_b[key]) for key in batch_a)

    collator = FerretDataCollator(processor, point_probability=0.5, seed=0)
    draws = [collator.prepare_example(_row())["region_info"][0]["kind"] == "point" for _ in range(200)]
    assert 0.4 < np.mean(draws) < 0.6


def test_region_counts_equal_region_tokens(processor):
    rows = [
        _row(),
        _row(conversations=[{"from": "human", "value": "<image>\nWhat is <bbox_location0>?"},
                            {"from": "gpt", "value": "Noise."}],
             box_x1y1x2y2=[[OTHER_BOX], []], masks=None),  # fmt: skip
        _row(conversations=[{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Noise."}],
             box_x1y1x2y2=[[], []], masks=None),  # fmt: skip
    ]
    batch = FerretDataCollator(processor)(rows)
    tokens = (batch["input_ids"] == processor.region_token_id).sum(1)
    assert batch["region_counts"].tolist() == tokens.tolist() == [2, 1, 0]
    assert batch["region_points"].shape == (3, 2, 16, 2)
    assert not batch["region_points"][1, 1:].any() and not batch["region_points"][2].any()

    config = tiny_ferret_config(text_config=TEXT_CONFIG, image_token_index=501, region_token_index=500)
    torch.manual_seed(0)
    model = FerretForConditionalGeneration(config).eval()
    with torch.no_grad():
        outputs = model(**batch)
    assert outputs.region_hidden_states.shape[:2] == (3, 2) and torch.isfinite(outputs.loss)


def test_max_length_drops_cut_regions_and_refuses_to_cut_images(processor):
    full = FerretDataCollator(processor, point_probability=0.0)([_row()])
    second_region = int((full["input_ids"][0] == processor.region_token_id).nonzero()[1])
    batch = FerretDataCollator(processor, point_probability=0.0, max_length=second_region)([_row()])
    assert batch["input_ids"].shape[1] == second_region
    assert batch["region_counts"].tolist() == [1] and batch["region_points"].shape[1] == 1
    first_image = int((full["input_ids"][0] == processor.image_token_id).nonzero()[0])
    with pytest.raises(ValueError, match="cuts image tokens"):
        FerretDataCollator(processor, max_length=first_image + 1)([_row()])


def test_errors(processor):
    with pytest.raises(ValueError, match="bbox_location1"):
        FerretDataCollator(processor).prepare_example(_row(box_x1y1x2y2=[[L_BOX], [L_BOX], [], []], masks=None))
    with pytest.raises(ValueError, match="image_w"):
        FerretDataCollator(processor).prepare_example(_row(image_w=61))
    with pytest.raises(ValueError, match="point_probability"):
        FerretDataCollator(processor, point_probability=1.5)


def test_rows_from_load_grit_and_region_types(processor, tmp_path):
    """Rows as `datasets` hands them (decoded image, RLE masks, float boxes) and the `region_types` column."""
    row = _row()
    row["image"].save(tmp_path / "a.png")
    record = {**row, "image": "a.png", "region_types": [["point", "free-form"], ["box"], [], []]}
    record["box_x1y1x2y2"] = [[[20, 28, 20, 28], L_BOX], [L_BOX], [], []]  # a point is stored as [x, y, x, y]
    record["masks"] = [[None, mask_to_rle(_l_mask())], [None], [], []]
    dataset = load_grit([record], tmp_path)
    collator = FerretDataCollator(processor, point_probability=0.0)
    prepared = collator.prepare_example(dataset[0])
    assert [info["kind"] for info in prepared["region_info"]] == ["point", "box"]
    assert prepared["region_info"][0]["point"] == (20.0, 28.0)
    assert prepared["messages"][0]["content"][1]["text"] == (
        "What is [333, 700] <region_fea>? Compare it with [166, 125, 750, 750] <region_fea>."
    )
    assert prepared["regions"][0]["mask"].sum() == 11 * 11  # a stored point without mask: its whole window
    assert np.array_equal(prepared["regions"][1]["mask"], _l_mask())  # free-form = box ∩ mask
    batch = collator([dataset[0]])
    assert batch["region_counts"].tolist() == [2]


def test_synthetic_shapes_text_matches_its_renderer(processor):
    from transformers_ferret import synthetic_shapes
    samples = synthetic_shapes.make_samples(6, seed=0, turns_per_image=3, max_side=128)
    dataset = synthetic_shapes.to_dataset(samples)
    collator = FerretDataCollator(processor)
    for sample, row in zip(samples, dataset):
        messages = collator.prepare_example(row)["messages"]
        rendered = synthetic_shapes.render_conversation(sample)
        rendered[0]["value"] = rendered[0]["value"].replace("<image>", "").strip()
        assert [message["content"][-1]["text"] for message in messages] == [turn["value"] for turn in rendered]
    batch = collator([dataset[i] for i in range(len(dataset))])
    assert batch["region_counts"].tolist() == (batch["input_ids"] == processor.region_token_id).sum(1).tolist()


def test_ferret_v2_batch_has_tiles(tokenizer):
    config = tiny_ferret_v2_config(text_config=TEXT_CONFIG, image_token_index=501, region_token_index=500)
    image_processor = FerretImageProcessorPil(
        size={"height": 28, "width": 28}, image_grid_pinpoints=config.image_grid_pinpoints, tile_size=28
    )
    processor = FerretProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                tile_patch_size=14, num_region_points=16)  # fmt: skip
    tall = _row(image=_image(1, 100, 30), image_w=30, image_h=100, masks=None)
    batch = FerretDataCollator(processor)([_row(), tall])
    assert {"pixel_values_tiles", "image_grids", "image_sizes"} <= set(batch)
    assert batch["image_sizes"].tolist() == [[HEIGHT, WIDTH], [100, 30]]
    torch.manual_seed(0)
    model = FerretForConditionalGeneration(config).eval()
    with torch.no_grad():
        outputs = model(**batch)
    assert torch.isfinite(outputs.loss)
    assert re.search(r"\d", tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100]))
