"""The results table and learning curves of the synthetic-shapes benchmark, from the runs' own logs.

    python benchmarks/shapes/report.py --run "Ferret v1=runs/ferret_v1" --run "coordinates only=runs/coords_only" \
        --output benchmarks/shapes/results

Each run folder holds `train_log.json` (written by `train.py`: the settings and a log entry every `--logging-steps`
steps) and `eval.json` (written by `evaluate.py --json`). The per-step logs stay in the run folders (`runs/`, not
committed); the report keeps per run only what the table and the figure need, at a bounded size (`compact_record`):
the training settings (`train_log.json` without its log), the evaluation (`eval.json`), the training curves as means
over windows of steps (the smallest multiple of 100 steps that gives at most 50 windows; the last window ends at the
run's last logged step) and the curves of the evaluations during training (`train.py --eval-every`) at their
checkpoints as logged (at most 50: more are thinned evenly, keeping the last).
`--previous benchmarks/shapes/results.json` takes the records of runs whose folder is not on this machine from an
earlier report's JSON, by folder name (or by run name), so a new report can keep earlier rows and curves, relabelled;
it reads both this compact form and the full one of earlier reports (whose records held every log entry), which it
compacts, so the output may be the file `--previous` reads.
Writes `<output>.md` (the table, pasted into README.md), `<output>.json` (the records) and `<output>.png` (training
loss and dense auxiliary loss per window, and the referring and REC curves of the evaluations during training).
"""

import argparse
import json
import math
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
MAX_POINTS = 50  # per curve and metric in the report's JSON
WINDOW_UNIT = 100  # the training curves' windows are multiples of this many steps
NOT_AVERAGED = ("step", "epoch", "num_tokens", "learning_rate")  # counters and the schedule, not measurements
CURVE_PREFIX = "curve_"  # train.py's name for the metrics of its evaluations during training


def window_steps(last_step: int, max_points: int = MAX_POINTS, unit: int = WINDOW_UNIT) -> int:
    """The smallest multiple of `unit` steps that cuts steps 1..`last_step` into at most `max_points` windows."""
    return unit * max(1, math.ceil(last_step / (unit * max_points)))


def _numeric(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def train_curves(log: list[dict]) -> dict:
    """The training metrics of a `train_log.json` log (its entries with a "loss") as means over windows of
    `window_steps` steps: window k takes the entries of steps k * window + 1 .. (k + 1) * window, its point is at the
    step of its last entry (so the last window ends at the run's last logged step). Every numeric metric is kept but
    the counters and the learning rate (`NOT_AVERAGED`); a window without a metric gets None."""
    entries = [entry for entry in log if "loss" in entry]
    if not entries:
        return {"window_steps": None, "step": []}
    window = window_steps(entries[-1]["step"])
    groups: dict[int, list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["step"] - 1) // window, []).append(entry)
    metrics = [key for key in dict.fromkeys(key for entry in entries for key in entry)
               if key not in NOT_AVERAGED and all(_numeric(entry[key]) for entry in entries if key in entry)]
    curves = {"window_steps": window, "step": [group[-1]["step"] for group in groups.values()]}
    for key in metrics:
        means = []
        for group in groups.values():
            values = [entry[key] for entry in group if entry.get(key) is not None]
            means.append(round(sum(values) / len(values), 4) if values else None)
        curves[key] = means
    return curves


def thin(items: list, max_points: int = MAX_POINTS) -> list:
    """`items` if there are at most `max_points` of them, else `max_points` of them evenly spaced, the first and the
    last kept."""
    if len(items) <= max_points:
        return list(items)
    indexes = {round(i * (len(items) - 1) / (max_points - 1)) for i in range(max_points)}
    return [items[index] for index in sorted(indexes)]


def eval_curves(log: list[dict]) -> dict:
    """The evaluations during training of a `train_log.json` log (`train.py --eval-every`: its entries with
    `curve_*` metrics) at their checkpoints, values as logged (thinned to `MAX_POINTS` if there are more), keyed by
    the metric's name without `curve_`."""
    entries = thin([entry for entry in log if any(key.startswith(CURVE_PREFIX) for key in entry)])
    keys = dict.fromkeys(key for entry in entries for key in entry if key.startswith(CURVE_PREFIX))
    return {"step": [entry["step"] for entry in entries],
            **{key[len(CURVE_PREFIX):]: [entry.get(key) for entry in entries] for key in keys}}  # fmt: skip


def compact_record(record: dict) -> dict:
    """A run's record as the report's JSON keeps it: its folder, `train` (the settings of `train_log.json`, without
    the log), `eval` (`eval.json`), `train_curves` (`train_curves`) and `eval_curves` (`eval_curves`). A record in
    the full form of earlier reports (`train` holding the whole `log`) is compacted; a compact one is kept as it is
    (its keys put in that order)."""
    train = record.get("train", {})
    if "log" in train:
        record = {**record, "train": {key: value for key, value in train.items() if key != "log"},
                  "train_curves": train_curves(train["log"]), "eval_curves": eval_curves(train["log"])}  # fmt: skip
    order = ("folder", "train", "eval", "train_curves", "eval_curves")
    return {**{key: record[key] for key in order if key in record}, **record}


def load_run(folder: Path, name: str = "", previous: dict | None = None) -> dict:
    """A run's record (`compact_record`) from its folder's `train_log.json` and `eval.json`; when the folder is not
    here, the record of `previous` (an earlier report's JSON, full or compact) with the same folder name, or else
    with the same run name."""
    if not (folder / "train_log.json").exists() and previous:
        same_folder = [record for record in previous.values() if record.get("folder") == folder.name]
        if same_folder or name in previous:
            return compact_record({**(same_folder[0] if same_folder else previous[name]), "folder": folder.name})
    train = json.loads((folder / "train_log.json").read_text())
    evaluation = json.loads((folder / "eval.json").read_text())
    return compact_record({"folder": folder.name, "train": train, "eval": evaluation})


def dumps(value, indent: int = 1, level: int = 0) -> str:
    """JSON with one key per line, like `json.dumps(value, indent=indent)`, but lists of numbers (the curves) on one
    line each."""
    if isinstance(value, dict) and value:
        inner = " " * indent * (level + 1)
        items = [f"{inner}{json.dumps(key)}: {dumps(item, indent, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent * level + "}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        inner = " " * indent * (level + 1)
        items = [inner + dumps(item, indent, level + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent * level + "]"
    return json.dumps(value)


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


def curves_png(path: Path, runs: dict[str, dict]) -> None:
    """Loss curves of the runs on one step axis (a continuation starts where its parent ended, `step_offsets`), from
    their records' `train_curves` (means over windows of steps); below them, where the runs logged it
    (`train.py --eval-every`), the referring accuracy on fresh scenes during training (box regions, exact class) and
    REC Acc@0.5 (`--eval-rec`), from their `eval_curves`."""
    offsets = step_offsets(runs)

    def series(curves_key, metric):
        points = {}
        for name, offset in offsets.items():
            curves = runs[name].get(curves_key) or {}
            pairs = [(offset + step, value) for step, value in zip(curves.get("step", []), curves.get(metric, []))
                     if value is not None]  # fmt: skip
            if pairs:
                points[name] = ([step for step, _ in pairs], [value for _, value in pairs])
        return points

    curves = [series("eval_curves", "roc_box"), series("eval_curves", "rec_acc@0.5")]
    height = 840 if any(curves) else 420
    image = Image.new("RGB", (1200, height), "white")
    draw = ImageDraw.Draw(image)
    names = list(runs)
    line_panel(draw, (0, 0, 600, 420), series("train_curves", "loss"),
               "training loss (answer tokens + auxiliary losses), window means", "step", "loss",
               colour_order=names)  # fmt: skip
    line_panel(draw, (600, 0, 1200, 420), series("train_curves", "aux_loss"),
               "dense per-patch loss (aux batch), window means", "step", "loss", colour_order=names)  # fmt: skip
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
    parser.add_argument("--previous", help="an earlier report's .json (compact or full): the records of runs whose "
                        "folder is not here; it may be the output's .json")  # fmt: skip
    args = parser.parse_args(argv)
    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    runs = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        runs[name] = load_run(Path(folder), name, previous)
    output = Path(args.output)
    markdown = table(runs)
    output.with_suffix(".md").write_text(markdown + "\n")
    output.with_suffix(".json").write_text(dumps(runs) + "\n")
    curves_png(output.with_suffix(".png"), runs)
    print(markdown)


if __name__ == "__main__":
    main()
