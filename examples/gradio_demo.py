"""Interactive Ferret demo: draw a point, a box or a scribble on the image, refer to it in a chat, see the answer's boxes.

    pip install -e ".[demo]"
    python examples/gradio_demo.py                          # the shipped tiny checkpoint, http://127.0.0.1:7860
    python examples/gradio_demo.py --model path/to/ferret-7b --device cuda

How to use it: pick Point, Box or Scribble, draw on the image with the mouse (a click for a point, a stroke across or
around the object for a box, a closed outline for a free-form region), press "Add region". The drawing becomes region
N in the list and `<regionN>` is appended to the message, where you can move it. Send the message: the regions it
names are passed to the model (a point as `(x, y)`, a box as `(x1, y1, x2, y2)`, a scribble as a mask), and the
answer's boxes are drawn with their phrases next to the regions you asked about. "Undo region" removes the last
region, "Clear" the regions and the chat; "New scene" draws a fresh synthetic scene, or upload your own image.

The region logic (strokes to regions, `<regionN>` to the processor's `<region>` placeholders) is plain Python in the
functions below, so it is tested without a browser; `modeling_tests/test_gradio_demo.py` also drives the app in a
headless Chromium.
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import SHIPPED_CHECKPOINT, random_tiny_model_and_processor  # noqa: E402

from transformers_ferret.visualization import draw_annotations  # noqa: E402

REGION_KINDS = ("Point", "Box", "Scribble")
PLACEHOLDER = re.compile(r"<region(\d+)>")
BRUSH_COLOUR = "#ff1e1e"


@dataclass
class Region:
    """A region drawn by the user, in pixels of the image: `value` is `(x, y)`, `(x1, y1, x2, y2)` or a bool mask."""

    kind: str
    value: tuple | np.ndarray

    def describe(self) -> str:
        if self.kind == "Scribble":
            ys, xs = np.nonzero(self.value)
            return f"free-form, {int(self.value.sum())} px in [{xs.min()}, {ys.min()}, {xs.max()}, {ys.max()}]"
        return f"{self.kind.lower()} {list(self.value)}"


# ----------------------------------------------------------------------------------------------- strokes to regions
def stroke_mask(editor_value: dict | None) -> np.ndarray | None:
    """The pixels drawn on the editor's layers, `[height, width]` bool, or None when nothing is drawn."""
    if not editor_value or editor_value.get("background") is None:
        return None
    layers = [np.asarray(layer) for layer in editor_value.get("layers") or [] if layer is not None]
    if not layers:
        return None
    drawn = np.logical_or.reduce([layer[..., 3] > 0 for layer in layers])  # RGBA layers (image_mode="RGBA")
    return drawn if drawn.any() else None


def fill_enclosed(stroke: np.ndarray) -> np.ndarray:
    """The stroke plus every pixel it encloses (what a closed outline means), `[height, width]` bool."""
    height, width = stroke.shape
    # a free border that touches the outside; `.copy()`: floodfill silently leaves an array-backed image unchanged
    canvas = Image.fromarray(np.pad(stroke, 1).astype(np.uint8) * 255).copy()
    ImageDraw.floodfill(canvas, (0, 0), 128)
    return (np.asarray(canvas) != 128)[1 : height + 1, 1 : width + 1]


def region_from_stroke(stroke: np.ndarray, kind: str) -> Region:
    """Turns drawn pixels into a Ferret region: Point = the drawn pixel nearest the stroke's centroid, Box = the
    stroke's bounding box, Scribble = the stroke with the area it encloses (a free-form mask)."""
    if kind not in REGION_KINDS:
        raise ValueError(f"`kind` must be one of {REGION_KINDS}, got {kind!r}.")
    if stroke is None or not stroke.any():
        raise ValueError("Nothing is drawn: draw on the image first.")
    ys, xs = np.nonzero(stroke)
    if kind == "Point":
        nearest = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
        return Region(kind, (int(xs[nearest]), int(ys[nearest])))
    if kind == "Box":
        return Region(kind, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    return Region(kind, fill_enclosed(stroke))


# ------------------------------------------------------------------------------------------------ chat to model input
def referenced_regions(message: str, regions: list[Region]) -> tuple[str, list[Region], list[int]]:
    """Replaces each `<regionN>` (1-based) by the processor's `<region>` and lists the regions in that order.

    Returns:
        The prompt text, the regions it refers to (one per placeholder, repeats allowed) and their numbers.
    """
    numbers = [int(match) for match in PLACEHOLDER.findall(message)]
    unknown = sorted({number for number in numbers if not 1 <= number <= len(regions)})
    if unknown:
        available = f"<region1> .. <region{len(regions)}>" if regions else "none: add a region first"
        raise ValueError(f"The message names {', '.join(f'<region{n}>' for n in unknown)}; available: {available}.")
    return PLACEHOLDER.sub("<region>", message), [regions[number - 1] for number in numbers], numbers


def message_text(content) -> str:
    """The text of a chat message: a string, or gradio 6's list of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(part["text"] for part in parts if isinstance(part, dict) and part.get("type", "text") == "text")


def conversation(image: Image.Image, history: list[dict], message: str, regions: list[Region]):
    """The chat as Ferret messages (the image in the first user turn) and the regions of all its turns, in order."""
    messages, turn_regions = [], []
    for turn in [*history, {"role": "user", "content": message}]:
        text = message_text(turn["content"])
        if turn["role"] == "user":
            text, used, _ = referenced_regions(text, regions)
            turn_regions += used
        content = [{"type": "text", "text": text}]
        if not messages:
            content.insert(0, {"type": "image", "image": image})
        messages.append({"role": turn["role"], "content": content})
    return messages, turn_regions


class FerretChat:
    """Runs a Ferret model and processor on a chat about one image."""

    def __init__(self, model, processor, max_new_tokens: int = 64):
        self.model, self.processor, self.max_new_tokens = model.eval(), processor, max_new_tokens

    def reply(self, image: Image.Image, history: list[dict], message: str, regions: list[Region]):
        """Greedy answer to `message`; returns the text and the grounded entities (boxes in the image's pixels)."""
        messages, used = conversation(image, history, message, regions)
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"regions": [[region.value for region in used]]},
        ).to(self.model.device)  # fmt: skip (the model casts pixel values to its towers' dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answer = self.processor.post_process_image_text_to_text(output[:, inputs["input_ids"].shape[1] :])[0].strip()
        grounded = self.processor.post_process_grounding(answer, image_sizes=[(image.height, image.width)])
        return answer, grounded["entities"]


def annotate(image: Image.Image, regions: list[Region], numbers: list[int], entities: list[dict]) -> Image.Image:
    """The image with the regions (labelled `region N`) and the answer's boxes with their phrases, outlined."""
    values, labels = [region.value for region in regions], [f"region{n}" for n in numbers]
    return draw_annotations(image, values, entities, region_labels=labels)


# ------------------------------------------------------------------------------------------------------------- app
def synthetic_image(seed: int) -> np.ndarray:
    from transformers_ferret.synthetic_shapes import generate_scene

    scene = generate_scene(
        np.random.default_rng(seed), num_objects=(3, 5), min_side=240, max_side=320, object_size=(40, 110)
    )
    return np.asarray(scene.image.convert("RGB"))


def editor_image(editor_value: dict | None) -> Image.Image | None:
    if not editor_value or editor_value.get("background") is None:
        return None
    return Image.fromarray(np.asarray(editor_value["background"])[..., :3].astype(np.uint8))


def build_app(chat: FerretChat, seed: int = 0):
    import gradio as gr

    def editor_value(image: np.ndarray) -> dict:
        return {"background": image, "layers": [], "composite": None}

    def region_list(regions: list[Region]) -> str:
        if not regions:
            return "No regions yet: choose a kind, draw on the image, press **Add region**."
        return "\n".join(f"{index}. `<region{index}>` {region.describe()}" for index, region in enumerate(regions, 1))

    def add_region(value, kind, regions, message):
        try:
            region = region_from_stroke(stroke_mask(value), kind)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        regions = [*regions, region]
        image = editor_image(value)
        preview = annotate(image, regions, list(range(1, len(regions) + 1)), [])
        message = f"{message.rstrip()} <region{len(regions)}>".lstrip()
        return editor_value(np.asarray(image)), regions, region_list(regions), message, preview

    def undo_region(value, regions, message):
        if not regions:
            return regions, region_list(regions), message, gr.skip()
        message = re.sub(rf"\s*<region{len(regions)}>", "", message)
        regions = regions[:-1]
        image = editor_image(value)
        preview = annotate(image, regions, list(range(1, len(regions) + 1)), []) if image is not None else None
        return regions, region_list(regions), message, preview

    def clear():
        return [], region_list([]), "", [], None

    def new_scene(scene_seed):
        scene_seed += 1
        return (editor_value(synthetic_image(scene_seed)), scene_seed, *clear())

    def send(value, message, history, regions):
        image = editor_image(value)
        if image is None:
            raise gr.Error("Upload an image or press New scene first.")
        if not message.strip():
            raise gr.Error("Type a message (refer to drawn regions as <region1>, <region2>, ...).")
        try:
            answer, entities = chat.reply(image, history, message, regions)
            _, used, numbers = referenced_regions(message, regions)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": answer}]
        boxes = "\n".join(f"- {entity['phrase'] or 'object'}: {entity['box']}" for entity in entities)
        return history, "", annotate(image, used, numbers, entities), boxes or "No boxes in the answer."

    with gr.Blocks(title="Ferret: refer and ground") as app:
        gr.Markdown("## Ferret: refer and ground\nDraw a point, a box or a scribble, press *Add region*, and refer to "
                    "it as `<regionN>` in your message.")  # fmt: skip
        scene_seed = gr.State(seed)
        regions = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    value=editor_value(synthetic_image(seed)), type="numpy", image_mode="RGBA", label="Image: draw here",
                    sources=("upload", "clipboard"), layers=False, transforms=(), elem_id="editor",
                    brush=gr.Brush(default_size=6, colors=[BRUSH_COLOUR], color_mode="fixed"),
                )  # fmt: skip
                kind = gr.Radio(list(REGION_KINDS), value="Box", label="Region kind", elem_id="kind")
                with gr.Row():
                    add_button = gr.Button("Add region", variant="primary", elem_id="add-region")
                    undo_button = gr.Button("Undo region", elem_id="undo-region")
                    clear_button = gr.Button("Clear", elem_id="clear")
                    scene_button = gr.Button("New scene", elem_id="new-scene")
                region_markdown = gr.Markdown(region_list([]), elem_id="regions")
            with gr.Column(scale=1):
                output_image = gr.Image(label="Regions and answer boxes", type="pil", format="png", interactive=False,
                                        elem_id="answer-image")  # fmt: skip
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=260)
                boxes = gr.Markdown(elem_id="answer-boxes")
                with gr.Row():
                    message = gr.Textbox(placeholder="What is the object <region1>?", show_label=False, scale=4,
                                         elem_id="message")  # fmt: skip
                    send_button = gr.Button("Send", variant="primary", scale=1, elem_id="send")

        add_button.click(add_region, [editor, kind, regions, message],
                         [editor, regions, region_markdown, message, output_image])  # fmt: skip
        undo_button.click(undo_region, [editor, regions, message], [regions, region_markdown, message, output_image])
        clear_button.click(clear, None, [regions, region_markdown, message, chatbot, output_image])
        scene_button.click(new_scene, scene_seed,
                           [editor, scene_seed, regions, region_markdown, message, chatbot, output_image])  # fmt: skip
        editor.upload(clear, None, [regions, region_markdown, message, chatbot, output_image])
        for trigger in (send_button.click, message.submit):
            trigger(send, [editor, message, chatbot, regions], [chatbot, message, output_image, boxes])
    return app


def load_chat(model_id: str | None, device: str, max_new_tokens: int) -> FerretChat:
    import transformers_ferret  # noqa: F401  (registers Ferret with the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = model_id or (SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.is_dir() else None)
    if source is None:
        print("No shipped checkpoint found: using an UNTRAINED tiny Ferret, so the answers are noise.")
        model, processor = random_tiny_model_and_processor()
    else:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        processor = AutoProcessor.from_pretrained(source)
    return FerretChat(model.to(device), processor, max_new_tokens)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="converted Ferret folder or Hub id (default: the shipped tiny checkpoint)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--seed", type=int, default=0, help="first synthetic scene")
    args = parser.parse_args(argv)
    app = build_app(load_chat(args.model, args.device, args.max_new_tokens), seed=args.seed)
    app.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
