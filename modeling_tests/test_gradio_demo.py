"""The interactive demo (examples/gradio_demo.py): strokes become the right regions, `<regionN>` placeholders reach the
processor in order, and, in a real headless Chromium driven by Playwright, drawing a box with the mouse and sending a
question shows the reply and an output image with that box drawn on it."""

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio_demo  # examples/, on pytest's `pythonpath` (pyproject.toml)
import numpy as np
import pytest
from gradio_demo import Region, conversation, fill_enclosed, referenced_regions, region_from_stroke, stroke_mask
from PIL import Image

from transformers_ferret.visualization import PALETTE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

REQUIRE_BROWSER = os.environ.get("FERRET_REQUIRE_BROWSER") == "1"  # set by .ci/run: there the browser test must run
CHROMIUM = os.environ.get("FERRET_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


def square_outline(size=40, side=20, offset=(5, 8), width=2) -> np.ndarray:
    stroke = np.zeros((size, size), dtype=bool)
    x0, y0 = offset
    stroke[y0 : y0 + side, x0 : x0 + side] = True
    stroke[y0 + width : y0 + side - width, x0 + width : x0 + side - width] = False
    return stroke


def test_box_is_the_strokes_bounding_box():
    stroke = np.zeros((50, 60), dtype=bool)
    stroke[10:13, 7:40] = True  # a horizontal bar
    stroke[12:31, 38:41] = True  # and a vertical one
    assert region_from_stroke(stroke, "Box").value == (7, 10, 40, 30)


def test_point_is_the_drawn_pixel_nearest_the_centroid():
    stroke = np.zeros((30, 30), dtype=bool)
    stroke[20:23, 4:7] = True  # a 3x3 dot centred on (5, 21)
    assert region_from_stroke(stroke, "Point").value == (5, 21)
    ring = square_outline()  # the centroid (14.5, 17.5) is not drawn: the nearest drawn pixel is taken
    x, y = region_from_stroke(ring, "Point").value
    assert ring[y, x]


def test_scribble_fills_a_closed_outline_and_keeps_an_open_stroke():
    closed = square_outline(side=20, width=2)
    mask = region_from_stroke(closed, "Scribble").value
    assert mask.sum() == 20 * 20 and mask[8 + 10, 5 + 10]  # outline + the 16x16 inside it
    open_stroke = closed.copy()
    open_stroke[8 + 10, 5 : 5 + 2] = False  # a gap in the left edge lets the outside in
    assert fill_enclosed(open_stroke).sum() == open_stroke.sum()


def test_bad_strokes_and_kinds_are_clear_errors():
    with pytest.raises(ValueError, match="Nothing is drawn"):
        region_from_stroke(np.zeros((5, 5), dtype=bool), "Box")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        region_from_stroke(np.ones((5, 5), dtype=bool), "Lasso")


def test_stroke_mask_reads_the_alpha_of_every_layer():
    layer = np.zeros((12, 16, 4), dtype=np.uint8)
    layer[3:5, 2:9, 3] = 255
    second = np.zeros_like(layer)
    second[10, 15, 3] = 40
    drawn = stroke_mask({"background": np.zeros((12, 16, 4), np.uint8), "layers": [layer, second]})
    assert drawn.sum() == 2 * 7 + 1 and drawn[10, 15]
    assert stroke_mask({"background": np.zeros((12, 16, 4), np.uint8), "layers": [np.zeros_like(layer)]}) is None
    assert stroke_mask(None) is None


def test_placeholders_become_processor_regions_in_message_order():
    regions = [Region("Box", (1, 2, 3, 4)), Region("Point", (5, 6))]
    text, used, numbers = referenced_regions("Compare <region2> with <region1> and <region2>.", regions)
    assert text == "Compare <region> with <region> and <region>."
    assert [region.value for region in used] == [(5, 6), (1, 2, 3, 4), (5, 6)] and numbers == [2, 1, 2]
    with pytest.raises(ValueError, match=r"<region3>; available: <region1> \.\. <region2>"):
        referenced_regions("What is <region3>?", regions)
    with pytest.raises(ValueError, match="add a region first"):
        referenced_regions("What is <region1>?", [])


def test_conversation_puts_the_image_first_and_collects_regions_of_every_turn():
    image = Image.new("RGB", (32, 24))
    regions = [Region("Box", (1, 2, 3, 4)), Region("Point", (5, 6))]
    history = [{"role": "user", "content": "What is <region2>?"}, {"role": "assistant", "content": "a red star"}]
    messages, used = conversation(image, history, "And <region1>?", regions)
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image", "image": image}
    assert all(part["type"] == "text" for message in messages[1:] for part in message["content"])
    assert messages[2]["content"][0]["text"] == "And <region>?"
    assert [region.value for region in used] == [(5, 6), (1, 2, 3, 4)]
    as_gradio = [{**turn, "content": [{"type": "text", "text": turn["content"]}]} for turn in history]  # gradio 6 form
    assert conversation(image, as_gradio, "And <region1>?", regions)[0] == messages


@pytest.fixture(scope="module")
def chat():
    return gradio_demo.load_chat(None, "cpu", max_new_tokens=12)


def test_chat_reply_runs_the_model_with_the_drawn_regions(chat):
    image = Image.fromarray(gradio_demo.synthetic_image(1))
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[20:60, 30:90] = True
    regions = [Region("Scribble", mask), Region("Box", (10, 10, 80, 70)), Region("Point", (40, 40))]
    answer, entities = chat.reply(image, [], "What are <region1>, <region2> and <region3>?", regions)
    assert isinstance(answer, str) and isinstance(entities, list)
    calls = []
    original = chat.model.model.region_sampler.forward
    chat.model.model.region_sampler.forward = lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs)
    try:
        chat.reply(image, [], "What is <region2>?", regions)
    finally:
        del chat.model.model.region_sampler.forward
    assert len(calls) == 1  # the sampler ran once, for the prefill


def test_annotate_draws_the_region_box_in_its_colour():
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    annotated = np.asarray(gradio_demo.annotate(image, [Region("Box", (10, 12, 40, 30))], [1], []))
    assert (annotated[30, 20] == PALETTE[0]).all() and (annotated[20, 25] == 128).all()


# ------------------------------------------------------------------------------------------------- real browser test
def _demo_python() -> str:
    """The interpreter that runs the app: `FERRET_DEMO_PYTHON` (.ci/run's `.venv-demo`, where gradio lives; it pins
    pillow<13, so it is kept out of the test environment), else this one."""
    return os.environ.get("FERRET_DEMO_PYTHON", sys.executable)


def _browser_unavailable() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright not installed (pip install -e '.[dev]')"
    if subprocess.run([_demo_python(), "-c", "import gradio"], capture_output=True).returncode != 0:
        return f"gradio not importable by {_demo_python()} (set FERRET_DEMO_PYTHON to a `.[demo]` environment)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FERRET_CHROMIUM)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    reason = _browser_unavailable()
    if reason:
        if REQUIRE_BROWSER:
            pytest.fail(f"the browser test must run here: {reason}")
        pytest.skip(reason)
    port = _free_port()
    log = tmp_path_factory.mktemp("gradio") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as output:
        app = subprocess.Popen(
            [_demo_python(), str(EXAMPLES / "gradio_demo.py"), "--port", str(port), "--seed", "3", "--max-new-tokens", "12"],
            stdout=output, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if app.poll() is not None:
                pytest.fail(f"the demo exited with {app.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the demo did not serve {url} within 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        app.terminate()
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()


def test_drawing_a_box_and_asking_shows_the_reply_and_the_box_in_chromium(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            canvas = page.locator("#editor canvas").first
            canvas.wait_for(timeout=30_000)
            page.get_by_role("radio", name="Box").check()
            area = canvas.bounding_box()
            centre_x, centre_y = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2
            page.mouse.move(centre_x - 40, centre_y - 30)
            page.mouse.down()
            for step in range(1, 11):  # a diagonal stroke: its bounding box is the region
                page.mouse.move(centre_x - 40 + 8 * step, centre_y - 30 + 6 * step)
            page.mouse.up()
            page.click("#add-region")
            page.wait_for_function("document.querySelector('#regions').innerText.includes('box [')", timeout=30_000)
            region_text = page.inner_text("#regions")
            x1, y1, x2, y2 = (int(value) for value in region_text.split("box [")[1].split("]")[0].split(","))
            assert 0 <= x1 < x2 and 0 <= y1 < y2 and x2 - x1 > 20 and y2 - y1 > 15  # an 80x60 px drag, zoomed
            assert page.input_value("#message textarea") == "<region1>"

            page.fill("#message textarea", "What is the object <region1>?")
            page.click("#send")
            page.wait_for_selector("#chat .bot", timeout=30_000)
            page.wait_for_function("document.querySelector('#chat .bot').innerText.trim().length > 0")
            assert "What is the object <region1>?" in page.inner_text("#chat")
            page.fill("#message textarea", "And what colour is <region1>?")  # a second turn: the history goes back in
            page.click("#send")
            page.wait_for_function(
                "document.querySelector('#chat').innerText.includes('And what colour is <region1>?')", timeout=30_000
            )
            assert len(page.locator("#chat .bot").all_inner_texts()) == 2
            source = page.locator("#answer-image img").first.get_attribute("src")
            shown = np.asarray(Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB"))
            edge = shown[y1, x1 : x2 + 1]  # the region's top edge, drawn in the first palette colour
            assert (edge == PALETTE[0]).all(axis=1).mean() > 0.9
            page.screenshot(path=str(tmp_path / "gradio_demo.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "gradio_demo.png").stat().st_size > 10_000
