"""The results table and learning curves of the synthetic-shapes benchmark, from the runs' own logs.

    python benchmarks/shapes/report.py --run "Ferret v1=runs/ferret_v1" --run "coordinates only=runs/coords_only" \
        --output benchmarks/shapes/results

Each run folder holds `train_log.json` (written by `train.py`) and `eval.json` (written by `evaluate.py --json`).
`--previous benchmarks/shapes/results.json` takes the records of runs whose folder is not on this machine (run folders
are not committed) from an earlier report's JSON, by folder name (or by run name), so a new report can keep earlier
rows and curves, relabelled.
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


def load_run(folder: Path, name: str = "", previous: dict | None = None) -> dict:
    """A run's record: its folder name, `train_log.json` and `eval.json`; when the folder is not here, the record of
    `previous` (an earlier report's JSON) with the same folder name, or else with the same run name."""
    if not (folder / "train_log.json").exists() and previous:
        same_folder = [record for record in previous.values() if record.get("folder") == folder.name]
        if same_folder or name in previous:
            return {**(same_folder[0] if same_folder else previous[name]), "folder": folder.name}
    train = json.loads((folder / "train_log.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    return {"folder": folder.name, "train": train, "eval": evaluation}


def step_offsets(runs: dict[str, dict]) -> dict[str, int]:
    """Where each run's steps start on a shared axis: 0 for a run trained from scratch, the end of its parent for a
    continuation (`--init-from`) whose parent is also in `runs` (matched by folder name); other runs are left out."""
    by_folder = {run["folder"]: name for name, run in runs.items()}
    offsets = {}

    def offset(name, seen=()):
        if name not in offsets:
            parent = runs[name]["train"].get("init_from")
            if not parent:
                offsets[name] = 0
            elif Path(parent).name in by_folder and name not in seen:
                parent_name = by_folder[Path(parent).name]
                start = offset(parent_name, (*seen, name))
                offsets[name] = None if start is None else start + runs[parent_name]["train"]["steps"]
            else:
                offsets[name] = None
        return offsets[name]

    return {name: value for name in runs if (value := offset(name)) is not None}


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
    """Loss curves of the runs on one step axis (a continuation starts where its parent ended, `step_offsets`): one
    point per `every` steps of each run; below them, where the runs logged it (`train.py --eval-every`), the referring
    accuracy on fresh scenes during training (box regions, exact class) and REC Acc@0.5 (`--eval-rec`)."""
    offsets = step_offsets(runs)

    def series(key, step_every=every):
        points = {}
        for name, offset in offsets.items():
            log = [entry for entry in runs[name]["train"]["log"] if key in entry and entry["step"] % step_every == 0]
            if log:
                points[name] = ([offset + entry["step"] for entry in log], [entry[key] for entry in log])
        return points

    curves = [series("curve_roc_box", 1), series("curve_rec_acc@0.5", 1)]
    height = 840 if any(curves) else 420
    image = Image.new("RGB", (1200, height), "white")
    draw = ImageDraw.Draw(image)
    names = list(runs)
    line_panel(draw, (0, 0, 600, 420), series("loss"), "training loss (answer tokens + auxiliary losses)", "step", "loss",
               colour_order=names)  # fmt: skip
    line_panel(draw, (600, 0, 1200, 420), series("aux_loss"), "dense per-patch loss (aux batch)", "step", "loss",
               colour_order=names)  # fmt: skip
    if any(curves):
        line_panel(draw, (0, 420, 600, 840), curves[0], "ROC exact, box region (fresh scenes)", "step", "accuracy",
                   y_max=1.0, colour_order=names)  # fmt: skip
        line_panel(draw, (600, 420, 1200, 840), curves[1], "REC Acc@0.5 (fresh scenes)", "step", "accuracy",
                   y_max=1.0, colour_order=names)  # fmt: skip
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=FOLDER, in table order")
    parser.add_argument("--output", required=True, help="path prefix for .md, .json and .png")
    parser.add_argument("--previous", help="an earlier report's .json: the records of runs whose folder is not here")
    args = parser.parse_args(argv)
    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    runs = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        runs[name] = load_run(Path(folder), name, previous)
    output = Path(args.output)
    markdown = table(runs)
    output.with_suffix(".md").write_text(markdown + "\n")
    output.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    curves_png(output.with_suffix(".png"), runs)
    print(markdown)


if __name__ == "__main__":
    main()
