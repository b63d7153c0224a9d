"""examples/demo.py runs end to end offline and saves the annotated image."""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_demo_answers_both_questions_and_saves_the_annotated_image(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo", REPO / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    output = tmp_path / "demo.png"
    demo.main(["--seed", "1", "--max-new-tokens", "6", "--output", str(output)])
    printed = capsys.readouterr().out
    assert printed.count("\nA: ") + printed.startswith("A: ") == 2 and f"Saved {output}" in printed
    with Image.open(output) as image:
        assert image.mode == "RGB" and min(image.size) >= 480  # small scenes are upscaled for legibility
        saved = np.asarray(image)
    # The referred region is outlined, not tinted: its pixels keep the scene's colours (all of them but those an
    # answer box's edge may cross; a tint changed every one).
    scene, mask, _ = demo.synthetic_scene(1)
    scale = saved.shape[1] // scene.width
    assert saved.shape[:2] == (scene.height * scale, scene.width * scale)
    big_mask = mask.repeat(scale, 0).repeat(scale, 1)
    original = np.asarray(scene.resize((scene.width * scale, scene.height * scale), Image.Resampling.NEAREST))
    assert (saved[big_mask] == original[big_mask]).all(-1).mean() > 0.8
    assert not (saved[~big_mask] == original[~big_mask]).all()  # something is drawn around it
