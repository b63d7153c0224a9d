"""Write a trained tiny Ferret as the checkpoint shipped with the repository (examples/checkpoints/ferret-shapes-tiny).

    python benchmarks/shapes/ship.py --model runs/ferret_v1 --output examples/checkpoints/ferret-shapes-tiny
    python benchmarks/shapes/evaluate.py --model examples/checkpoints/ferret-shapes-tiny --json \
        examples/checkpoints/ferret-shapes-tiny/eval.json

Weights are stored in float16 (half the size) and loaded as float32 (`dtype` in config.json), so the shipped model
computes in float32 with float16-rounded weights; its table row is measured on exactly these files.

The folder stays portable: it keeps the `auto_map` that `save_pretrained` writes and the code files it names, so it
loads with `trust_remote_code=True` where `transformers_ferret` is not installed (third-party CLIs such as `trl sft`).
Inside this repository the code files are relative symlinks to the package's own modules, so they never drift from it
(`modeling_tests/test_remote_code.py` checks both).
"""

import argparse
import json
import os
from pathlib import Path

import torch

import transformers_ferret  # noqa: F401  (registers Ferret with the Auto classes)
from transformers import AutoModelForImageTextToText, AutoProcessor


def ship(model_dir: str | Path, output: str | Path) -> Path:
    output = Path(output)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    model.to(torch.float16).save_pretrained(output)
    processor.save_pretrained(output)
    config_path = output / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    link_code_files(output)
    return output


def link_code_files(folder: Path) -> list[Path]:
    """Replace the code copies `save_pretrained` wrote into `folder` with relative symlinks to the package's modules
    (when the package is a source checkout), so the shipped folder always runs the code of the commit it is in."""
    package = Path(transformers_ferret.__file__).resolve().parent
    linked = []
    for code in sorted(Path(folder).glob("*.py")):
        source = package / code.name
        if not source.is_file():
            raise FileNotFoundError(f"{code.name} in {folder} is not a module of {package}")
        code.unlink()
        code.symlink_to(os.path.relpath(source, code.parent.resolve()))
        linked.append(code)
    return linked


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    output = ship(args.model, args.output)
    size = sum(path.stat().st_size for path in output.iterdir()) / 2**20
    print(f"wrote {output} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
