"""Safe loading: every `torch.load` under src/ and conversion/ uses `weights_only=True`, nothing unpickles arbitrary
objects, and PIL's decompression-bomb and truncated-image guards are never switched off (see docs/robustness.md)."""

import ast
from pathlib import Path

import pytest


REPOSITORY = Path(__file__).resolve().parents[1]
SCANNED = [REPOSITORY / "src", REPOSITORY / "conversion"]


def _dotted(node: ast.AST) -> str:
    """`torch.load`, `np.load`, `Image.MAX_IMAGE_PIXELS`, ... for a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loading(source: str) -> list[str]:
    """Problems in one Python source: `(line) what`."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name == "torch.load":
                if not _keyword_is(node, "weights_only", True):
                    problems.append(f"({node.lineno}) torch.load without weights_only=True")
            elif name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in (
                "pickle", "cPickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"
            ):  # fmt: skip
                problems.append(f"({node.lineno}) {name}")
            elif name.endswith(("np.load", "numpy.load")) and _keyword_is(node, "allow_pickle", True):
                problems.append(f"({node.lineno}) {name} with allow_pickle=True")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names]
            modules += [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(module and module.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve")
                   for module in modules):  # fmt: skip
                problems.append(f"({node.lineno}) import of a pickle module")
            from_torch = isinstance(node, ast.ImportFrom) and node.module == "torch"
            if from_torch and any(alias.name == "load" for alias in node.names):
                problems.append(f"({node.lineno}) `from torch import load` hides torch.load from this check")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = _dotted(target)
                if name.endswith("MAX_IMAGE_PIXELS"):
                    problems.append(f"({node.lineno}) {name} changed: PIL's decompression-bomb guard stays on")
                if name.endswith("LOAD_TRUNCATED_IMAGES"):
                    problems.append(f"({node.lineno}) {name} changed: truncated images must raise")
    return problems


def test_torch_load_calls_use_weights_only_and_nothing_unpickles():
    files = [path for root in SCANNED for path in sorted(root.rglob("*.py"))]
    assert len(files) > 10
    problems = {
        str(path.relative_to(REPOSITORY)): found
        for path in files
        if (found := unsafe_loading(path.read_text(encoding="utf-8")))
    }
    assert problems == {}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import torch\nstate = torch.load(path)", "torch.load without weights_only=True"),
        ("import torch\nstate = torch.load(path, weights_only=False)", "torch.load without weights_only=True"),
        ("import torch as t\nstate = t.load(path, map_location='cpu')", None),  # aliases: see below
        ("import pickle\nstate = pickle.load(f)", "import of a pickle module"),
        ("import numpy as np\nnp.load(p, allow_pickle=True)", "np.load with allow_pickle=True"),
        ("from PIL import Image\nImage.MAX_IMAGE_PIXELS = None", "decompression-bomb guard stays on"),
        ("from PIL import ImageFile\nImageFile.LOAD_TRUNCATED_IMAGES = True", "truncated images must raise"),
        ("from torch import load\nload(p)", "hides torch.load"),
        ("import torch\ntorch.load(path, map_location='cpu', weights_only=True, mmap=True)", ""),
    ],
)
def test_the_check_catches_unsafe_patterns(source, expected):
    problems = unsafe_loading(source)
    if expected == "":
        assert problems == []
    elif expected is None:
        # `import torch as t` is not resolved; the code base imports torch by its name, which this asserts
        assert all("import torch as" not in path.read_text() for root in SCANNED for path in root.rglob("*.py"))
    else:
        assert any(expected in problem for problem in problems), problems
