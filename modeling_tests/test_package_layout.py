"""The package reads like a transformers model folder: `import transformers_ferret` loads the model core only, and
no module or class outgrows what one reader can hold."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transformers_ferret"
NOT_CORE = ("training", "evaluation", "synthetic_shapes", "visualization", "conversion")


def test_importing_the_package_loads_the_model_core_only():
    script = (
        "import json, sys, transformers_ferret; "
        "print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in "
        "('transformers_ferret', 'datasets', 'trl', 'peft', 'pycocotools', 'gradio'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "transformers_ferret.modeling_ferret" in loaded and "transformers_ferret.processing_ferret" in loaded
    outside_core = [name for name in loaded if name.split(".")[0] != "transformers_ferret" or
                    (name.count(".") and name.split(".")[1] in NOT_CORE)]  # fmt: skip
    assert outside_core == []


def test_no_module_over_700_lines_and_no_class_over_310():
    long_modules, long_classes = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(PACKAGE).as_posix()
        if source.count("\n") > 700:
            long_modules[name] = source.count("\n")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 310:
                long_classes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long_modules == {} and long_classes == {}
