"""The results table and learning curves of the synthetic-shapes benchmark, from the runs' own logs.

    python benchmarks/shapes/report.py --run "Ferret v1=runs/ferret_v1" --run "coordinates only=runs/coords_only" \
        --output benchmarks/shapes/results

Each run folder holds `train_log.json` (written by `train.py`) and `eval.json` (written by `evaluate.py --json`).
Writes `<output>.md` (the table, pasted into README.md), `<output>.json` (every number) and `<output>.png` (training
loss per logging step of every run, and the dense auxiliary loss).
"""

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plot import line_panel  # noqa: E402

COLUMNS = (
    ("roc_free-form", "ROC free-form"),
    ("roc_box", "ROC box"),
    ("roc_point", "ROC point"),
    ("roc_box_colour", "box: colour"),
    ("roc_box_shape", "box: shape"),
    ("roc_binary_choice", "ROC binary choice"),
    ("same_bbox_colour_free-form", "same-bbox, free-form"),
    ("same_bbox_colour_box-of-pair", "same-bbox, box"),
    ("rec_acc@0.5", "REC Acc@0.5"),
    ("rec_parse_failure_rate", "REC parse failures"),
    ("roc_small_objects_box", "small objects: ROC"),
    ("roc_small_objects_box_colour", "small objects: colour"),
)


def load_run(folder: Path) -> dict:
    train = json.loads((folder / "train_log.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    return {"train": train, "eval": evaluation}


def table(runs: dict[str, dict]) -> str:
    header = "| run | steps x batch | train min | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (3 + len(COLUMNS))]
    for name, run in runs.items():
        train, evaluation = run["train"], run["eval"]
        cells = [f"{100 * evaluation[key]:.1f}" if key in evaluation else "-" for key, _ in COLUMNS]
        steps = f"{train['steps']} x {train['batch_size']}"
        lines.append(f"| {name} | {steps} | {train['seconds'] / 60:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_png(path: Path, runs: dict[str, dict], every: int = 100) -> None:
    """Loss curves of the runs trained from scratch (continuations start from another run's weights): one point per
    `every` steps (a tick per point); below them, where the runs logged it (`train.py --eval-every`), the referring
    accuracy on fresh scenes during training (box regions: exact class, and the shape word)."""
    scratch = {name: run for name, run in runs.items() if not run["train"].get("init_from")}

    def series(key, step_every=every):
        points = {}
        for name, run in scratch.items():
            log = [entry for entry in run["train"]["log"] if key in entry and entry["step"] % step_every == 0]
            if log:
                points[name] = ([entry["step"] for entry in log], [entry[key] for entry in log])
        return points

    curves = [series("curve_roc_box", 1), series("curve_roc_box_shape", 1)]
    height = 840 if any(curves) else 420
    image = Image.new("RGB", (1200, height), "white")
    draw = ImageDraw.Draw(image)
    line_panel(draw, (0, 0, 600, 420), series("loss"), "training loss (answer tokens)", "step", "loss")
    line_panel(draw, (600, 0, 1200, 420), series("aux_loss"), "dense per-patch loss (aux batch)", "step", "loss")
    if any(curves):
        line_panel(draw, (0, 420, 600, 840), curves[0], "ROC exact, box region (fresh scenes)", "step", "accuracy")
        line_panel(draw, (600, 420, 1200, 840), curves[1], "ROC shape word, box region", "step", "accuracy")
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=FOLDER, in table order")
    parser.add_argument("--output", required=True, help="path prefix for .md, .json and .png")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        runs[name] = load_run(Path(folder))
    output = Path(args.output)
    markdown = table(runs)
    output.with_suffix(".md").write_text(markdown + "\n")
    output.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    curves_png(output.with_suffix(".png"), runs)
    print(markdown)


if __name__ == "__main__":
    main()
