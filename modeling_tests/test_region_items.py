"""Regions as chat content items (`{"type": "region", "box" | "point" | "mask": ...}`): templates, processor,
pipeline batches, errors."""

import copy
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_processor
from transformers import AutoProcessor, pipeline

import transformers_ferret  # noqa: F401  (registers the Ferret classes with the Auto classes)
from transformers_ferret import FerretForConditionalGeneration
from transformers_ferret.chat_templates import (
    CHATML_CHAT_TEMPLATE,
    GEMMA_CHAT_TEMPLATE,
    LLAMA3_CHAT_TEMPLATE,
    VICUNA_CHAT_TEMPLATE,
)
from transformers_ferret.chat_templates import DEFAULT_CHAT_TEMPLATE, RENDER_CONTENT_MACRO
from transformers_ferret.synthetic_shapes import generate_scene, with_article


SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "ferret-shapes-tiny"
TEMPLATES = {
    "default": DEFAULT_CHAT_TEMPLATE,
    "vicuna": VICUNA_CHAT_TEMPLATE,
    "llama3": LLAMA3_CHAT_TEMPLATE,
    "chatml": CHATML_CHAT_TEMPLATE,
    "gemma": GEMMA_CHAT_TEMPLATE,
}
# The macro of templates saved before region items existed (as the shipped checkpoint's was): image and text items only.
MACRO_WITHOUT_REGION_ITEMS = """
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for item in content if item.type == 'image' -%}
            {{- '<image>\\n' -}}
        {%- endfor -%}
        {%- for item in content if item.type == 'text' -%}
            {{- ('\\n' if not loop.first else '') + item.text -}}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
"""
TEMPLATE_WITHOUT_REGION_ITEMS = DEFAULT_CHAT_TEMPLATE.replace(RENDER_CONTENT_MACRO, MACRO_WITHOUT_REGION_ITEMS)
WIDTH, HEIGHT = 160, 120
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "region_points", "region_counts")


@pytest.fixture(scope="module")
def processor(parity_dir):
    return tiny_processor(parity_dir)


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def _mask(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y1:y2, x1:x2] = True
    mask[y1, x1] = False  # not a box
    return mask


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _user(*items) -> dict:
    return {"role": "user", "content": list(items)}


def _question_chats(image) -> list[list[dict]]:
    """Four chats on `image` with different regions: a box; a point and a mask; none; a PIL mask in a second turn."""
    return [chat for chat, _, _ in _chats_in_both_forms(image)]


def _chats_in_both_forms(image) -> list[tuple[list[dict], list[dict], list[dict]]]:
    """For each chat of `_question_chats`: the chat with region items, the same chat with `<region>` typed in the
    text as the templates render region items, and its regions in order."""
    box, point = [10, 20, 70, 90], [30, 40]
    mask, pil_mask = _mask(90, 30, 150, 100), Image.fromarray(_mask(5, 5, 40, 30))
    return [
        (
            [_user({"type": "image", "image": image}, _text("What is "), {"type": "region", "box": box}, _text("?"))],
            [_user({"type": "image", "image": image}, _text("What is <region>?"))],
            [{"box": box}],
        ),
        (
            [_user({"type": "image", "image": image}, _text("Is "), {"type": "region", "point": point},
                   _text(" left of "), {"type": "region", "mask": mask}, _text("?"), _text("Answer briefly."))],
            [_user({"type": "image", "image": image}, _text("Is <region> left of <region>?"),
                   _text("Answer briefly."))],
            [{"point": point}, {"mask": mask}],
        ),
        (
            [_user({"type": "image", "image": image}, _text("Describe the image."))],
            [_user({"type": "image", "image": image}, _text("Describe the image."))],
            [],
        ),
        (
            [_user({"type": "image", "image": image}, _text("Hi.")), {"role": "assistant", "content": "Hello."},
             _user(_text("And "), {"type": "region", "mask": pil_mask}, _text("?"))],
            [_user({"type": "image", "image": image}, _text("Hi.")), {"role": "assistant", "content": "Hello."},
             _user(_text("And <region>?"))],
            [{"mask": pil_mask}],
        ),
    ]  # fmt: skip


# --- templates ---


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_shipped_template_renders_region_items_as_region_placeholders_where_they_stand(processor, name):
    image = _image()
    for chat, with_placeholders, _ in _chats_in_both_forms(image):
        rendered = processor.tokenizer.apply_chat_template(chat, chat_template=TEMPLATES[name], tokenize=False)
        expected = processor.tokenizer.apply_chat_template(
            with_placeholders, chat_template=TEMPLATES[name], tokenize=False
        )
        assert rendered == expected
    second = processor.tokenizer.apply_chat_template(_question_chats(image)[1], chat_template=TEMPLATES[name],
                                                     tokenize=False)  # fmt: skip
    assert "<image>\nIs <region> left of <region>?\nAnswer briefly." in second


@pytest.mark.parametrize("name", [*TEMPLATES, "without_region_items"])
def test_processor_renders_region_items_as_the_templates_do_even_with_a_template_without_region_items(
    processor, name
):
    template = TEMPLATES.get(name, TEMPLATE_WITHOUT_REGION_ITEMS)
    chats, with_placeholders, _ = zip(*_chats_in_both_forms(_image()))
    rendered = processor.apply_chat_template(list(chats), chat_template=template, add_generation_prompt=True)
    expected = processor.apply_chat_template(list(with_placeholders), chat_template=template,
                                             add_generation_prompt=True)  # fmt: skip
    assert rendered == expected


# --- processor: the same inputs as `<region>` + processor_kwargs ---


def _both_forms(processor, forms, is_batch: bool = True, processor_kwargs=None, **kwargs):
    """`apply_chat_template` outputs of chats with region items, and of the same chats with `<region>` + regions."""
    chats, with_placeholders, regions = (list(form) for form in zip(*forms))
    call = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **kwargs)
    if not is_batch:
        chats, with_placeholders = chats[0], with_placeholders[0]
    processor_kwargs = processor_kwargs or {}
    items = processor.apply_chat_template(chats, **call, processor_kwargs=processor_kwargs)
    placeholders = processor.apply_chat_template(with_placeholders, **call,
                                                 processor_kwargs={**processor_kwargs, "regions": regions})  # fmt: skip
    return items, placeholders


@pytest.mark.parametrize("region", [{"box": [10, 20, 70, 90]}, {"point": (30.5, 40)},
                                    {"mask": _mask(90, 30, 150, 100)}, {"mask": torch.from_numpy(_mask(0, 0, 9, 9))},
                                    {"mask": Image.fromarray(_mask(5, 5, 40, 30))}],
                         ids=["box", "point", "numpy_mask", "tensor_mask", "pil_mask"])  # fmt: skip
def test_region_item_gives_the_same_inputs_as_region_placeholder_with_processor_kwargs(processor, region):
    image = _image()
    chat = [_user({"type": "image", "image": image}, _text("What is "), {"type": "region", **region}, _text("?"))]
    with_placeholder = [_user({"type": "image", "image": image}, _text("What is <region>?"))]
    items, placeholders = _both_forms(processor, [(chat, with_placeholder, [region])], is_batch=False)
    assert items.keys() == placeholders.keys() and set(MODEL_INPUTS) <= set(items)
    for key in items:
        assert torch.equal(items[key], placeholders[key]), key
    assert items["region_counts"].tolist() == [1] and (items["input_ids"] == processor.region_token_id).sum() == 1


def test_batch_of_chats_with_different_region_counts_gives_the_same_inputs_as_processor_kwargs(processor):
    items, placeholders = _both_forms(
        processor, _chats_in_both_forms(_image()), processor_kwargs={"padding": True, "padding_side": "left"}
    )
    for key in MODEL_INPUTS:
        assert torch.equal(items[key], placeholders[key]), key
    assert items["region_counts"].tolist() == [1, 2, 0, 1]
    assert (items["input_ids"] == processor.region_token_id).sum(1).tolist() == [1, 2, 0, 1]


def test_region_items_keep_the_assistant_mask_of_a_multi_turn_chat(processor):
    chat, with_placeholders, regions = _chats_in_both_forms(_image())[3]
    answer = {"role": "assistant", "content": "A green box [10, 20, 30, 40]."}
    forms = [(chat + [answer], with_placeholders + [answer], regions)]
    items, placeholders = _both_forms(processor, forms, is_batch=False, return_assistant_tokens_mask=True)
    assert torch.equal(items["input_ids"], placeholders["input_ids"])
    assert torch.equal(torch.as_tensor(items["assistant_masks"]), torch.as_tensor(placeholders["assistant_masks"]))
    assert torch.as_tensor(items["assistant_masks"]).sum() > 0


def test_region_items_leave_the_callers_messages_unchanged(processor):
    chats = _question_chats(_image())
    snapshot = [(message, message["content"], copy.copy(message["content"])) for chat in chats for message in chat]
    items = [(item, dict(item)) for _, _, content in snapshot if isinstance(content, list) for item in content]
    processor.apply_chat_template(chats, tokenize=True, return_dict=True, processor_kwargs={"padding": True})
    for message, content, content_before in snapshot:
        assert message["content"] is content and content == content_before
    for item, item_before in items:
        assert item.keys() == item_before.keys() and all(item[key] is item_before[key] for key in item)


def test_chat_with_an_image_and_no_region_gets_empty_region_inputs_so_it_batches_with_chats_with_regions(processor):
    chat = _question_chats(_image())[2]
    outputs = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt")  # fmt: skip
    assert outputs["region_points"].shape == (1, 0, processor.num_region_points, 2)
    assert outputs["region_counts"].tolist() == [0]
    text_only = processor.apply_chat_template([_user(_text("Hi."))], tokenize=True, return_dict=True)
    assert "region_points" not in text_only  # no image: nothing to batch with regions
    two_images = [_user({"type": "image", "image": _image()}, {"type": "image", "image": _image(1)}, _text("Same?"))]
    two_images = processor.apply_chat_template(two_images, tokenize=True, return_dict=True, return_tensors="pt")
    assert "region_points" not in two_images  # a sample with several images can't have regions (the model says so)
    # `regions` given through `processor_kwargs`: outputs as before (no region inputs without a region)
    as_before = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt",
                                              processor_kwargs={"regions": [[]]})  # fmt: skip
    assert "region_points" not in as_before and "region_counts" not in as_before


def test_sanitized_chat_keeps_a_typed_region_token_as_text_next_to_region_items(processor):
    chat = [_user({"type": "image", "image": _image()}, _text("Is "), {"type": "region", "point": [3, 4]},
                  _text(" a <region_fea>?"))]  # fmt: skip
    outputs = processor.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt",
                                            sanitize_control_tokens=True)  # fmt: skip
    assert outputs["region_counts"].tolist() == [1] and (outputs["input_ids"] == processor.region_token_id).sum() == 1
    assert "a <region_fea>?" in processor.tokenizer.decode(outputs["input_ids"][0])


def test_pipeline_collation_of_single_chats_keeps_each_chats_region_slots_first(processor):
    # `pipeline(..., batch_size=n)` processes chats one at a time and pads them together with `pad_collate_fn`: the
    # text on the tokenizer's side (left, for generation), the image processor's inputs on its side (right), so that
    # the model finds a sample's regions in its first `region_counts` slots.
    from transformers.pipelines.base import pad_collate_fn

    chats = _question_chats(_image())
    singles = [processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt") for chat in chats]  # fmt: skip
    padding_side, processor.tokenizer.padding_side = processor.tokenizer.padding_side, "left"
    try:
        batch = pad_collate_fn(processor.tokenizer, processor.image_processor)([dict(single) for single in singles])
    finally:
        processor.tokenizer.padding_side = padding_side
    together = processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt",
                                             processor_kwargs={"padding": True, "padding_side": "left"})  # fmt: skip
    for key in MODEL_INPUTS:
        assert torch.equal(batch[key], together[key]), key
    assert batch["region_counts"].tolist() == [1, 2, 0, 1]


# --- errors ---


def _batch_with_bad_item(item: dict) -> list[list[dict]]:
    image = _image()
    good = [_user({"type": "image", "image": image}, _text("What is "), {"type": "region", "point": [1, 1]})]
    bad = [{"role": "system", "content": "Be brief."},
           _user({"type": "image", "image": image}, _text("What is "), item)]  # fmt: skip
    return [good, [_user({"type": "image", "image": image}, _text("Hi."))], bad]


@pytest.mark.parametrize(
    "item, error, message",
    [
        ({"type": "region"}, ValueError, r'needs exactly one of "box" .*"point" .*"mask" .*got none of them'),
        ({"type": "region", "bbox": [1, 2, 3, 4]}, ValueError, r"needs .*got none of them \(keys \['bbox', 'type'\]\)"),
        ({"type": "region", "box": [1, 2, 3, 4], "point": [1, 2]}, ValueError, r'needs .*got "box" and "point"'),
        ({"type": "region", "box": [1, 2, 3]}, ValueError, r'"box" needs 4 numbers \[x1, y1, x2, y2\], got'),
        ({"type": "region", "point": (1, 2, 3)}, ValueError, r'"point" needs 2 numbers \[x, y\]'),
        ({"type": "region", "box": "1, 2, 3, 4"}, TypeError, r'"box" must be a list of 4 numbers'),
        ({"type": "region", "point": [True, False]}, TypeError, r'"point" must be a list of 2 numbers'),
        ({"type": "region", "box": [[1, 2], [3, 4]]}, TypeError, r'"box" must be a list of 4 numbers'),
        ({"type": "region", "mask": [[0, 1], [1, 0]]}, TypeError, r'"mask" must be a \[height, width\]'),
        ({"type": "region", "mask": np.ones((2, 3, 4))}, ValueError, r'"mask" must have 2 dimensions .*\(2, 3, 4\)'),
    ],
    ids=["no_geometry", "misspelt_key", "two_geometries", "box_of_3", "point_of_3", "box_string", "point_bools",
         "nested_box", "mask_list", "mask_3d"],
)  # fmt: skip
def test_bad_region_item_error_names_the_chat_the_message_and_what_was_expected(processor, item, error, message):
    with pytest.raises(error, match=r"^chat 2, message 1 \('user'\), content item 2: a region (item )?" + message):
        processor.apply_chat_template(_batch_with_bad_item(item), tokenize=True, return_dict=True)


def test_region_items_and_processor_kwargs_regions_in_one_call_are_rejected(processor):
    chats = _question_chats(_image())
    with pytest.raises(ValueError, match=r'both as \{"type": "region", ...\} items .* and as `processor_kwargs'):
        processor.apply_chat_template(chats, tokenize=True, processor_kwargs={"regions": [[(1, 1)], [], [], []]})


def test_region_placeholder_typed_next_to_region_items_names_its_chat_and_message(processor):
    chats = _question_chats(_image())
    chats[2] = [_user({"type": "image", "image": _image()}, _text("Where is <region>?"))]
    with pytest.raises(ValueError, match=r"^chat 2, message 0 \('user'\) has '<region>' in its text, but .* items"):
        processor.apply_chat_template(chats, tokenize=True)
    chats[2] = [_user({"type": "image", "image": _image()}, _text("Where is [1, 2] <region_fea>?"))]
    with pytest.raises(ValueError, match=r"^chat 2, message 0 \('user'\) has '<region_fea>' in its text"):
        processor.apply_chat_template(chats, tokenize=True)


@pytest.mark.parametrize("num_images", [0, 2])
def test_chat_with_region_items_and_not_one_image_names_its_chat(processor, num_images):
    chats = _question_chats(_image())
    chats[1] = [_user(*[{"type": "image", "image": _image()}] * num_images, _text("What is "),
                      {"type": "region", "box": [1, 2, 3, 4]})]  # fmt: skip
    with pytest.raises(ValueError, match=rf"^Chat 1 refers to 1 regions with region items but has {num_images} images"):
        processor.apply_chat_template(chats, tokenize=True)


def test_region_count_mismatch_with_processor_kwargs_names_the_right_chat(processor):
    chats = [with_placeholders for _, with_placeholders, _ in _chats_in_both_forms(_image())]
    regions = [[(1, 1)], [(1, 1), (2, 2)], [], [(3, 3), (4, 4)]]  # chat 3 has one `<region>`, two regions
    with pytest.raises(ValueError, match=r"^Sample 3 has 1 region placeholders .* but 2 regions .* content items"):
        processor.apply_chat_template(chats, tokenize=True, processor_kwargs={"regions": regions, "padding": True})


def test_error_for_a_single_chat_names_its_message_not_a_batch_index(processor):
    chat = _batch_with_bad_item({"type": "region", "box": [1, 2]})[2]
    with pytest.raises(ValueError, match=r"^message 1 \('user'\), content item 2: a region \"box\" needs 4"):
        processor.apply_chat_template(chat, tokenize=True)


# --- pipeline("image-text-to-text") with the shipped checkpoint ---


@pytest.fixture(scope="module")
def shipped_pipeline():
    model = FerretForConditionalGeneration.from_pretrained(SHIPPED_CHECKPOINT).eval()
    return pipeline("image-text-to-text", model=model, processor=AutoProcessor.from_pretrained(SHIPPED_CHECKPOINT))


def _scene_chats():
    """Chats about one generated scene (the shipped model's training distribution) and the names of the objects
    they ask about: a box, a point, two regions (a mask and a box), none (where is an object?), a mask."""
    scene = generate_scene(np.random.default_rng(7), num_objects=(3, 5), min_side=160, max_side=320,
                           object_size=(40, 110))  # fmt: skip (the shipped model's training scenes)
    first, second, third = scene.objects[:3]
    ys, xs = np.nonzero(second.mask)
    point = [int(xs[len(xs) // 2]), int(ys[len(ys) // 2])]

    def ask(*items):
        return [_user({"type": "image", "image": scene.image}, *items)]

    chats = [
        ask(_text("What is the object "), {"type": "region", "box": list(first.box)}, _text("?")),
        ask(_text("What is the object "), {"type": "region", "point": point}, _text("?")),
        ask(_text("Is the object "), {"type": "region", "mask": third.mask}, _text(" the same as the object "),
            {"type": "region", "box": list(first.box)}, _text("?")),
        ask(_text(f"Where is the {first.name}?")),
        ask(_text("What is the object "), {"type": "region", "mask": third.mask}, _text("?")),
    ]  # fmt: skip
    return chats, [first.name, second.name, None, first.name, third.name]


def test_pipeline_batch_gives_each_chat_with_its_own_regions_the_answer_it_gets_alone(shipped_pipeline):
    chats, names = _scene_chats()
    call = dict(max_new_tokens=12, return_full_text=False, generate_kwargs={"do_sample": False})
    alone = [shipped_pipeline(text=chat, **call)[0]["generated_text"] for chat in chats]
    region_slots = []
    sampler = shipped_pipeline.model.model.region_sampler
    hook = sampler.register_forward_pre_hook(lambda module, args: region_slots.append(tuple(args[1].shape[:2])))
    try:
        batched = [output[0]["generated_text"] for output in shipped_pipeline(text=chats, batch_size=4, **call)]
    finally:
        hook.remove()
    # the pipeline's own batching: a prefill of chats 0-3 (1, 1, 2 and 0 regions: 2 slots each), then chat 4 alone
    assert region_slots == [(4, 2), (1, 1)]
    assert batched == alone
    referring = [0, 1, 4]
    assert [alone[index].strip() for index in referring] == [with_article(names[index]) for index in referring]
    assert alone[3].strip().startswith(f"The {names[3]} [")


def test_pipeline_returns_each_chat_with_its_region_items_and_the_answer(shipped_pipeline):
    chats, _ = _scene_chats()
    outputs = shipped_pipeline(text=chats[:2], batch_size=2, max_new_tokens=6, generate_kwargs={"do_sample": False})
    for chat, output in zip(chats, outputs):
        conversation = output[0]["generated_text"]
        assert conversation[:-1] == chat and conversation[-1]["role"] == "assistant"


def test_pipeline_error_for_a_bad_region_item_names_its_message(shipped_pipeline):
    chats, _ = _scene_chats()
    chats[2][0]["content"][2] = {"type": "region", "box": [1, 2, 3]}
    with pytest.raises(ValueError, match=r"^message 0 \('user'\), content item 2: a region \"box\" needs 4 numbers"):
        shipped_pipeline(text=chats, batch_size=4, max_new_tokens=2)


def test_the_shipped_checkpoints_own_template_renders_region_items():
    """Tools that render a checkpoint's chat template themselves (tokenizer-level rendering, serving stacks) see region
    items too: the shipped folder's template writes them as `<region>` where they stand."""
    template = (SHIPPED_CHECKPOINT / "chat_template.jinja").read_text()
    conversation = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is the object "}, {"type": "region", "box": [1, 2, 3, 4]},
        {"type": "text", "text": "?"},
    ]}]  # fmt: skip
    rendered = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).from_string(
        template.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    ).render(messages=conversation, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    assert rendered.endswith("USER: <image>\nWhat is the object <region>? ASSISTANT:")
