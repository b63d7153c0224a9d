"""examples/demo.py runs end to end offline and saves the annotated image."""

import importlib.util
from pathlib import Path

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
        assert image.mode == "RGB" and min(image.size) >= 160
