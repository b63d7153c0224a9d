"""Write a trained tiny Ferret as the checkpoint shipped with the repository (examples/checkpoints/ferret-shapes-tiny).

    python benchmarks/shapes/ship.py --model runs/ferret_v1 --output examples/checkpoints/ferret-shapes-tiny
    python benchmarks/shapes/evaluate.py --model examples/checkpoints/ferret-shapes-tiny --json \
        examples/checkpoints/ferret-shapes-tiny/eval.json

Weights are stored in float16 (half the size) and loaded as float32 (`dtype` in config.json), so the shipped model
computes in float32 with float16-rounded weights; its table row is measured on exactly these files. The copies of the
modeling code that `save_pretrained` writes for `trust_remote_code` are left out (the package is installed next to
the checkpoint; `import transformers_ferret` registers the classes), together with the `auto_map` that points at them.
"""

import argparse
import json
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
    for code in output.glob("*.py"):
        code.unlink()
    config_path = output / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("auto_map", None)
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = output / name
        if path.exists():
            data = json.loads(path.read_text())
            if data.pop("auto_map", None) is not None:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return output


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
