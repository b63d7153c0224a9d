"""The synthetic-shapes results the READMEs state come from the committed report (`benchmarks/shapes/results.json`),
and that report stays light: per run the settings, the evaluation and curves of at most 50 points, no per-step logs.

Fast (no model, no training): it parses the figures where README.md and benchmarks/shapes/README.md state them and
compares them with the JSON records. A figure changed in one place only fails here; change the text and the JSON
together (`report.py`, see "What the report keeps" in benchmarks/shapes/README.md).
"""

import json
import math
import re
from pathlib import Path

import pytest
import report  # benchmarks/shapes/report.py, on pytest's `pythonpath` (pyproject.toml)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "benchmarks" / "shapes"

RESULTS = SHAPES / "results.json"
RESULTS_20_80 = SHAPES / "results_objects20-80.json"
SHAPES_README = SHAPES / "README.md"
TOP_README = ROOT / "README.md"
SHIPPED_EVAL = ROOT / "examples" / "checkpoints" / "ferret-shapes-tiny" / "eval.json"
NUMBER = r"(\d+(?:\.\d+)?)"
FRACTIONS = {"half": 1 / 2, "a third": 1 / 3, "a quarter": 1 / 4, "a fifth": 1 / 5, "a tenth": 1 / 10}


@pytest.fixture(scope="module")
def runs() -> dict:
    return json.loads(RESULTS.read_text())


def prose(path: Path) -> str:
    """The file's text with line breaks and runs of spaces as one space, bold markers dropped: a figure's sentence
    can be matched across the lines it is wrapped over."""
    return re.sub(r"\s+", " ", path.read_text().replace("**", ""))


def record(runs: dict, label: str) -> dict:
    """The run labelled `label` in the table ("R10" is the run named "R10. ..."), or the shipped one ("shipped")."""
    if label == "shipped":
        names = [name for name in runs if "(shipped)" in name]
    else:
        names = [name for name in runs if name.startswith(f"{label}. ")]
    assert len(names) == 1, f"no single run {label!r} in {RESULTS.name}: {names}"
    return runs[names[0]]


def lookup(values: dict, key: str):
    for part in key.split("/"):  # "rec_answers/other_object"
        values = values[part]
    return values


# What a figure of the text is, in the JSON, and how closely it is stated: each returns (value, tolerance).
def pct(label, key):
    """A figure of the 200-scene evaluation (`eval`), in % with at most the table's one decimal."""
    return lambda runs: (100 * lookup(record(runs, label)["eval"], key), 0.05 + 1e-9)


def iou(label, key="rec_mean_iou"):
    """A mean IoU (or another fraction), stated with two decimals."""
    return lambda runs: (lookup(record(runs, label)["eval"], key), 0.005 + 1e-9)


def curve(label, key, step):
    """A point of the curves on the 48 curve scenes (`eval_curves`), stated in whole % or halves."""

    def value(runs):
        curves = record(runs, label)["eval_curves"]
        assert step in curves["step"], f"{label} has no curve point at step {step}: {curves['step']}"
        return 100 * curves[key][curves["step"].index(step)], 0.5 + 1e-9

    return value


def curve_iou(label, step):
    def value(runs):
        curves = record(runs, label)["eval_curves"]
        return curves["rec_mean_iou"][curves["step"].index(step)], 0.005 + 1e-9

    return value


def minutes(label, plus=0.0):
    """Wall minutes of a run's training (`train.seconds`), plus `plus` minutes (stage 0), stated to the minute."""
    return lambda runs: (record(runs, label)["train"]["seconds"] / 60 + plus, 0.5 + 1e-9)


def extreme(function, *specs):
    """min or max of other figures, e.g. the "92.5–95.5 %" span of three."""

    def value(runs):
        values = [spec(runs) for spec in specs]
        return function(value for value, _ in values), max(tolerance for _, tolerance in values)

    return value


def share_of_misses(label, part):
    """`rec_answers[part]` as a share of the REC answers that miss, stated in words ("about half", "a third")."""

    def value(runs):
        answers = record(runs, label)["eval"]["rec_answers"]
        return answers[part] / (1 - answers["target"]), 0.05

    return value


def stated(text: str) -> float:
    return FRACTIONS[text] if text in FRACTIONS else float(text)


def stage0_minutes() -> float:
    """Stage 0 of S, S2 and S3 (its `pretrain_log.json` is not in the report): as the pipeline's comment states it."""
    found = re.search(pattern("stage 0 again (2000 steps, 2 threads: # min)"), prose(SHAPES_README))
    assert found, "benchmarks/shapes/README.md no longer states stage 0's minutes in S's command comment"
    return float(found.group(1))


def colours(label):
    return tuple(pct(label, f"roc_{region}_colour") for region in ("free-form", "box", "point"))


def referring(label):
    return tuple(pct(label, f"roc_{region}") for region in ("free-form", "box", "point"))


def pattern(template: str) -> str:
    """A regular expression from a sentence of a README in which `#` stands for a number and `~` for a fraction in
    words ("half", "a third", ...): what the claim reads like in the text."""
    words = "(" + "|".join(FRACTIONS) + ")"
    return "".join(NUMBER if part == "#" else words if part == "~" else re.escape(part)
                   for part in re.split(r"([#~])", template))  # fmt: skip


def claims() -> list[tuple[Path, str, tuple]]:
    """(file, sentence with `#` for each figure, what each figure is): every figure must be that of the JSON (a tuple:
    each of them). The sentences are matched with line breaks as spaces and bold markers dropped (`prose`)."""
    stage0 = stage0_minutes()
    ff, box, point = referring("shipped")
    s3_curve = tuple(curve("S3", "rec_acc@0.5", step) for step in (1625, 3250, 4875, 6500))
    s2_curve = tuple(curve("S2", "rec_acc@0.5", step) for step in (1750, 3500, 5250, 7000))
    s_curve = tuple(curve("S", "rec_acc@0.5", step) for step in (1450, 2900, 4350, 5800))
    return [
        # README.md: the shipped model and the 2-hour runs
        (TOP_README, "names the colour of a referred region (# %)", (colours("shipped"),)),
        (TOP_README, "its exact class #–# % of the time (# / # / # % for free-form, box and point regions; # % in "
         "the binary choice",
         (extreme(min, ff, box, point), extreme(max, ff, box, point), ff, box, point,
          pct("shipped", "roc_binary_choice"))),
        (TOP_README, "with a free-form mask (# % vs # % with the box)",
         (pct("shipped", "same_bbox_colour_free-form"), pct("shipped", "same_bbox_colour_box-of-pair"))),
        (TOP_README, "hit (IoU >= 0.5) # % of the time in scenes with 2–5 objects and # % in scenes with one object",
         (pct("shipped", "rec_acc@0.5"), pct("shipped", "rec_acc@0.5_one_object_scenes"))),
        (TOP_README, "of the misses, about ~ are loose boxes around the right object and ~ boxes around another "
         "object",
         (share_of_misses("shipped", "centre_in_target"), share_of_misses("shipped", "other_object"))),
        (TOP_README, "The colour of small objects it names # %", (pct("shipped", "roc_small_objects_box_colour"),)),
        (TOP_README, "reaches # % on that grounding test in # minutes of this 2-core CPU, and still # % when given the "
         "full 2 hours", (pct("S", "rec_acc@0.5"), minutes("S", stage0), pct("S2", "rec_acc@0.5"))),
        (TOP_README, "one run from scratch reaches # % in # minutes",
         (pct("S3", "rec_acc@0.5"), minutes("S3", stage0))),
        (TOP_README, "That run's referring is below the shipped model's (# / # / # %)", referring("S3")),
        # benchmarks/shapes/README.md, "The shipped model"
        (SHAPES_README, "It names the referred object's colour # % and its colour and shape #–# % of the time for "
         "point, box and free-form regions (# / # / # %), # % in the binary choice, the colour of small objects # %, "
         'and it grounds best of the runs here: its "Where is ...?" box hits (IoU >= 0.5) # % of the time in scenes '
         "with 2–5 objects, # % in scenes with one object",
         (colours("shipped"), extreme(min, ff, box, point), extreme(max, ff, box, point), point, box, ff,
          pct("shipped", "roc_binary_choice"), pct("shipped", "roc_small_objects_box_colour"),
          pct("shipped", "rec_acc@0.5"), pct("shipped", "rec_acc@0.5_one_object_scenes"))),
        # "Against the targets of the issue"
        (SHAPES_README, "R10 (shipped) # / # / #;", referring("R10")),
        (SHAPES_README, "binary choice # % (R8), # % (R9), # % (R10)",
         (pct("R8", "roc_binary_choice"), pct("R9", "roc_binary_choice"), pct("R10", "roc_binary_choice"))),
        (SHAPES_README, "one run from scratch in # min, stage 0 included (S3): # % (mean IoU #; one-object scenes # %; "
         "answers on another object # %, loose boxes round the named one # %; # % on the 48 curve scenes at its end",
         (minutes("S3", stage0), pct("S3", "rec_acc@0.5"), iou("S3"), pct("S3", "rec_acc@0.5_one_object_scenes"),
          pct("S3", "rec_answers/other_object"), pct("S3", "rec_answers/centre_in_target"), s3_curve[-1])),
        (SHAPES_README, "(S): # % in # min (mean IoU #; one-object scenes # %; answers on another object # %)",
         (pct("S", "rec_acc@0.5"), minutes("S", stage0), iou("S"), pct("S", "rec_acc@0.5_one_object_scenes"),
          pct("S", "rec_answers/other_object"))),
        (SHAPES_README, "(S2: 7000 steps instead of 5800, # min with stage 0) gave the same # % (mean IoU #; "
         "one-object scenes # %)",
         (minutes("S2", stage0), pct("S2", "rec_acc@0.5"), iou("S2"), pct("S2", "rec_acc@0.5_one_object_scenes"))),
        (SHAPES_README, "R10 (shipped) # % (mean IoU #; one-object scenes # %) after its",
         (pct("R10", "rec_acc@0.5"), iou("R10"), pct("R10", "rec_acc@0.5_one_object_scenes"))),
        # "What limits it now": R10, S, S2, S3, R11
        (SHAPES_README, "R10 ran 800 more steps (seed 17, # min): REC # % (mean IoU #), one-object scenes # %, answers "
         "on another object # %, near the named one # %, near another # %, on none # %; referring # / # / # %, binary "
         "choice # %, small-object colour # %. Its curve: # / # % at steps 400 / 800",
         (minutes("R10"), pct("R10", "rec_acc@0.5"), iou("R10"), pct("R10", "rec_acc@0.5_one_object_scenes"),
          pct("R10", "rec_answers/other_object"), pct("R10", "rec_answers/centre_in_target"),
          pct("R10", "rec_answers/centre_in_other"), pct("R10", "rec_answers/elsewhere"), *referring("R10"),
          pct("R10", "roc_binary_choice"), pct("R10", "roc_small_objects_box_colour"),
          curve("R10", "rec_acc@0.5", 400), curve("R10", "rec_acc@0.5", 800))),
        (SHAPES_README, "REC Acc@0.5 # % (mean IoU #), one-object scenes # %; its answers land on another object # % "
         "of the time",
         (pct("S", "rec_acc@0.5"), iou("S"), pct("S", "rec_acc@0.5_one_object_scenes"),
          pct("S", "rec_answers/other_object"))),
        (SHAPES_README, "Referring is below the targets: # / # / # % exact (free-form / box / point), colour # %",
         (*referring("S"), pct("S", "roc_box_colour"))),
        (SHAPES_README, "REC curve (48 scenes) # / # / # / # % at steps 1450 / 2900 / 4350 / 5800", s_curve),
        (SHAPES_README, "7000 steps (# min; # min with stage 0). REC Acc@0.5 stays at # % (mean IoU #",
         (minutes("S2"), minutes("S2", stage0), pct("S2", "rec_acc@0.5"), iou("S2"))),
        (SHAPES_README, "Referring # / # / # %, binary choice # %, same-bbox # vs # %, the dense heads' mean-patch box",
         (*referring("S2"), pct("S2", "roc_binary_choice"), pct("S2", "same_bbox_colour_free-form"),
          pct("S2", "same_bbox_colour_box-of-pair"))),
        (SHAPES_README, "6500 steps (# min; # min with stage 0). REC Acc@0.5 # % (mean IoU #), one-object scenes # %; "
         "its answers land on the named object # %, on another object # %, loosely round the named one # %, near "
         "another # %, on none # %. Its curve (48 scenes): # / # / # / # % at steps 1625 / 3250 / 4875 / 6500 (S2: "
         "# / # / # / # % at 1750 / 3500 / 5250 / 7000). Referring # / # / # %, binary choice # %, same-bbox # vs # %, "
         "small-object colour # %",
         (minutes("S3"), minutes("S3", stage0), pct("S3", "rec_acc@0.5"), iou("S3"),
          pct("S3", "rec_acc@0.5_one_object_scenes"), pct("S3", "rec_answers/target"),
          pct("S3", "rec_answers/other_object"), pct("S3", "rec_answers/centre_in_target"),
          pct("S3", "rec_answers/centre_in_other"), pct("S3", "rec_answers/elsewhere"), *s3_curve, *s2_curve,
          *referring("S3"), pct("S3", "roc_binary_choice"), pct("S3", "same_bbox_colour_free-form"),
          pct("S3", "same_bbox_colour_box-of-pair"), pct("S3", "roc_small_objects_box_colour"))),
        (SHAPES_README, "R11, R10 + 600 steps of R10's recipe with 5 questions per image in bf16 (# min), stays at REC "
         "# % (mean IoU #, one-object scenes # %), referring # / # / # %, small-object colour # %",
         (minutes("R11"), pct("R11", "rec_acc@0.5"), iou("R11"), pct("R11", "rec_acc@0.5_one_object_scenes"),
          *referring("R11"), pct("R11", "roc_small_objects_box_colour"))),
    ]


def test_the_report_json_is_compact_summaries_and_curves_of_at_most_50_points():
    for path in (RESULTS, RESULTS_20_80):
        assert path.stat().st_size < 200_000, f"{path.name}: {path.stat().st_size} bytes; per-step logs stay in runs/"
        for name, run in json.loads(path.read_text()).items():
            assert list(run) == ["folder", "train", "eval", "train_curves", "eval_curves"], (path.name, name)
            assert "log" not in run["train"] and run["train"]["steps"] > 0 and "rec_acc@0.5" in run["eval"]
            for kind in ("train_curves", "eval_curves"):
                curves = run[kind]
                lengths = {key: len(values) for key, values in curves.items() if isinstance(values, list)}
                assert set(lengths.values()) == {len(curves["step"])}, (path.name, name, kind, lengths)
                assert len(curves["step"]) <= report.MAX_POINTS and curves["step"] == sorted(curves["step"])
            window = run["train_curves"]["window_steps"]
            assert window % 100 == 0 and run["train_curves"]["step"][-1] == run["train"]["steps"], (name, window)
            assert "loss" in run["train_curves"] and "aux_loss" in run["train_curves"]


def test_the_results_tables_of_the_readme_are_the_report_of_the_committed_json():
    """Every cell of the two results tables of benchmarks/shapes/README.md: `report.table` of the JSON, and the .md
    the report wrote next to it."""
    text = SHAPES_README.read_text()
    for path, heading in ((RESULTS, "## Results (G–L"), (RESULTS_20_80, "### Results (objects 20–80 px")):
        assert text.count(heading) == 1, heading
        after = text[text.index(heading):]
        start = after.index("| run | steps x batch |")
        in_readme = after[start: after.index("\n\n", start)]
        from_json = report.table(json.loads(path.read_text()))
        assert in_readme == from_json, f"the table under {heading!r} is not report.table({path.name})"
        assert path.with_suffix(".md").read_text() == from_json + "\n"


def test_the_figures_the_readmes_state_are_those_of_the_committed_json(runs):
    problems = []
    for path, template, specs in claims():
        found = re.search(pattern(template), prose(path))
        if not found:
            problems.append(f"{path.relative_to(ROOT)} no longer states {template[:80]!r}...")
            continue
        assert len(found.groups()) == len(specs), template
        for text, spec in zip(found.groups(), specs):
            for one in spec if isinstance(spec, tuple) else (spec,):
                value, tolerance = one(runs)
                if abs(stated(text) - value) > tolerance:
                    problems.append(f"{path.relative_to(ROOT)}: {text!r} in /{found.group(0)[:90]}.../ "
                                    f"but the JSON gives {value:.4g}")  # fmt: skip
    assert not problems, "\n".join(problems)


def test_lists_of_runs_in_the_shapes_readme_are_those_of_the_committed_json(runs):
    """The figures the README lists run by run: same-bbox pairs, small-object colour, REC along the lineage, and the
    lineage's training minutes."""
    text, problems = prose(SHAPES_README), []

    def check(label, stated_value, spec):
        value, tolerance = spec(runs)
        if abs(float(stated_value) - value) > tolerance:
            problems.append(f"{label}: README {stated_value}, JSON {value:.4g}")

    def segment(start, end):
        assert start in text, start
        part = text[text.index(start):]
        return part[: part.index(end)]

    same_bbox = re.findall(NUMBER + " % vs " + NUMBER + r" % \((\w+)\)",
                           segment("| same-bbox >= 0.9 with free-form", "| met |"))  # fmt: skip
    assert len(same_bbox) >= 8, same_bbox
    for free_form, box, label in same_bbox:
        check(label, free_form, pct(label, "same_bbox_colour_free-form"))
        check(label, box, pct(label, "same_bbox_colour_box-of-pair"))
    small = re.findall(r"(R\d+) " + NUMBER, segment("a fifth of small-object scenes brought it back (", ")"))
    lost = re.findall(r"\b(L|Q) " + NUMBER, segment("lost it (small-object colour", ")"))
    assert len(small) == 6 and len(lost) == 2, (small, lost)
    for label, value in small + lost:
        check(label, value, pct(label, "roc_small_objects_box_colour"))
    lineage = re.findall(r"(R\d+)(?: \(shipped\))? " + NUMBER + " %",
                         segment("with the supervised pointer R2", "(mean"))  # fmt: skip
    assert [label for label, _ in lineage] == ["R2", "R4", "R5", "R6", "R7", "R8", "R9", "R10"], lineage
    for label, value in lineage:
        check(label, value, pct(label, "rec_acc@0.5"))
    lineage_time = segment("The shipped model's lineage used the 2 cores", ". The 2-hour")
    times = re.findall(r"\b([GKLQR]\d*) (\d+)\b", lineage_time)
    assert len(times) == 13, times
    for label, value in times:
        check(f"{label} minutes", value, minutes(label))
    assert not problems, "\n".join(problems)


def test_the_curve_points_the_shapes_readme_lists_are_those_of_the_committed_json(runs):
    """The table of curve points of Q to R11 and S to S3 (48 scenes: free-form / box / point exact, REC, mean IoU),
    and G's row of the table of the stopped runs (box: exact / colour / shape at steps 250, 500, 750)."""
    text, problems, checked = SHAPES_README.read_text(), [], 0

    def check(label, key, step, stated_value, spec=curve):
        nonlocal checked
        checked += 1
        value, tolerance = (spec(label, key, step) if spec is curve else spec(label, step))(runs)
        if abs(float(stated_value) - value) > tolerance:
            problems.append(f"{label} step {step} {key}: README {stated_value}, JSON {value:.4g}")

    point = re.compile(r"(?:step )?(\d+): " + NUMBER + " / " + NUMBER + " / " + NUMBER + ", REC " + NUMBER
                       + r"(?: \((?:mean IoU )?(\d\.\d+)\))?")  # fmt: skip
    rows = re.findall(r"^\| (Q|R\d*|S\d*) \(.*?\) \| (.*) \|$", text, flags=re.MULTILINE)
    assert [label for label, _ in rows] == ["Q", "R", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "S", "S2",
                                            "S3", "R11"], rows  # fmt: skip
    for label, cells in rows:
        for step, free_form, box, region_point, rec, mean_iou in point.findall(cells):
            step = int(step)
            for key, value in (("roc_free-form", free_form), ("roc_box", box), ("roc_point", region_point),
                               ("rec_acc@0.5", rec)):  # fmt: skip
                check(label, key, step, value)
            if mean_iou:
                check(label, "rec_mean_iou", step, mean_iou, curve_iou)
    g_row = re.search(r"^\| G\. region features, referring-focused mix \| (.*) \|$", text, flags=re.MULTILINE)
    assert g_row, "the table of the stopped runs has no G row"
    for step, cell in zip((250, 500, 750), g_row.group(1).split(" | ")):
        for key, value in zip(("roc_box", "roc_box_colour", "roc_box_shape"), cell.split(" / ")):
            check("G", key, step, value)
    assert checked > 150 and not problems, "\n".join(problems)


def test_the_shipped_eval_json_is_the_shipped_runs_evaluation(runs):
    """`examples/checkpoints/ferret-shapes-tiny/eval.json` (measured on the shipped float16 files) gives the shipped
    run's row: every figure of its evaluation but the wall time."""
    shipped = json.loads(SHIPPED_EVAL.read_text())
    row = record(runs, "shipped")["eval"]
    assert set(shipped) == set(row)
    differing = {key: (shipped[key], row[key]) for key in row if key != "eval_seconds" and shipped[key] != row[key]}
    assert not differing, differing
    assert re.search(r"`examples/checkpoints/ferret-shapes-tiny` is run (R\d+) ", prose(SHAPES_README)).group(1) == (
        next(name for name in runs if "(shipped)" in name).split(".")[0]
    )


def full_log(steps: int, every: int = 10, eval_every: int = 0) -> list[dict]:
    log = []
    for step in range(every, steps + 1, every):
        if eval_every and step % eval_every == 0:
            log.append({"step": step, "curve_roc_box": step / steps, "curve_rec_acc@0.5": step / (2 * steps)})
        log.append({"loss": float(step), "aux_loss": 1.0, "grad_norm": 2.0, "learning_rate": 1e-3,
                    "epoch": step / steps, "num_tokens": 100.0 * step, "step": step})  # fmt: skip
    return log


def test_report_windows_training_curves_in_multiples_of_100_steps_to_at_most_50_points():
    assert [report.window_steps(steps) for steps in (40, 250, 1500, 5000, 5001, 5800, 7000, 25_000)] == [
        100, 100, 100, 100, 200, 200, 200, 500]  # fmt: skip
    curves = report.train_curves(full_log(250))
    assert curves["window_steps"] == 100 and curves["step"] == [100, 200, 250]
    # means of the entries in each window: steps 10..100, 110..200, 210..250 (the last window ends at the last step)
    assert curves["loss"] == [55.0, 155.0, 230.0] and curves["aux_loss"] == [1.0, 1.0, 1.0]
    assert set(curves) == {"window_steps", "step", "loss", "aux_loss", "grad_norm"}
    long = report.train_curves(full_log(7000))
    assert long["window_steps"] == 200 and len(long["step"]) == 35 and long["step"][-1] == 7000
    assert report.train_curves([{"step": 10, "curve_roc_box": 0.5}]) == {"window_steps": None, "step": []}


def test_report_compacts_a_full_record_keeping_the_evaluation_checkpoints_as_logged():
    full = {"eval": {"roc_box": 0.9}, "folder": "rec_x",
            "train": {"steps": 1500, "seconds": 60, "init_from": None, "log": full_log(1500, eval_every=250)}}
    compact = report.compact_record(full)
    assert list(compact) == ["folder", "train", "eval", "train_curves", "eval_curves"]
    assert compact["train"] == {"steps": 1500, "seconds": 60, "init_from": None} and compact["eval"] == full["eval"]
    assert compact["eval_curves"] == {"step": [250, 500, 750, 1000, 1250, 1500],
                                      "roc_box": [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0],
                                      "rec_acc@0.5": [1 / 12, 2 / 12, 3 / 12, 4 / 12, 5 / 12, 0.5]}  # fmt: skip
    assert len(compact["train_curves"]["step"]) == 15
    assert report.compact_record(compact) == compact  # a compact record (a later --previous) is kept as it is
    # more than 50 evaluations are thinned evenly, first and last kept
    many = report.eval_curves(full_log(1000, eval_every=10))
    assert len(many["step"]) == 50 and many["step"][0] == 10 and many["step"][-1] == 1000
    assert report.thin(list(range(7))) == list(range(7))


def test_report_previous_reads_full_and_compact_reports_alike_and_writes_the_same_files(tmp_path):
    full = {"A. run": {"folder": "run_a", "train": {"steps": 300, "batch_size": 16, "seconds": 600, "init_from": None,
                                                    "log": full_log(300, eval_every=150)},
                       "eval": {"roc_box": 0.5, "rec_acc@0.5": 0.25}},
            "B. continued": {"folder": "run_b", "train": {"steps": 200, "batch_size": 16, "seconds": 300,
                                                          "init_from": "runs/run_a", "log": full_log(200)},
                             "eval": {"roc_box": 0.75, "rec_acc@0.5": 0.5}}}  # fmt: skip
    (tmp_path / "full.json").write_text(json.dumps(full, indent=1))
    specs = ["--run", f"A. run={tmp_path / 'run_a'}", "--run", f"B. continued={tmp_path / 'run_b'}"]
    report.main([*specs, "--previous", str(tmp_path / "full.json"), "--output", str(tmp_path / "first")])
    first = json.loads((tmp_path / "first.json").read_text())
    assert first == {name: report.compact_record(record) for name, record in full.items()}
    report.main([*specs, "--previous", str(tmp_path / "first.json"), "--output", str(tmp_path / "second")])
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"first{suffix}").read_bytes() == (tmp_path / f"second{suffix}").read_bytes(), suffix
    assert "| A. run | 300 x 16 | 10 | - | 50.0 |" in (tmp_path / "first.md").read_text()
    assert math.isclose(first["B. continued"]["train_curves"]["loss"][0], 55.0)
