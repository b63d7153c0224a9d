"""Publish a converted Ferret folder on the Hugging Face Hub, with a model card that states the weights' licence.

    python conversion/push_to_hub.py --folder OUT --repo-id user/ferret-7b --weights original-ferret [--dry-run]

`--dry-run` writes the model card into the folder and prints what would be uploaded, without any network access.
The folder must come from `save_pretrained` (it then holds its modeling code and a complete `auto_map`, so it loads
with `trust_remote_code=True` even where transformers-ferret is not installed).
"""

import argparse
import json
from pathlib import Path

WEIGHT_LICENCES = {
    "original-ferret": (
        "cc-by-nc-4.0",
        "These weights are Apple's released Ferret weights (CC-BY-NC 4.0, research use only), distributed by Apple as "
        "deltas over Vicuna v1.3 and merged here; Vicuna is itself derived from LLaMA and bound by its licence. "
        "Commercial use is not permitted.",
    ),
    "ferret-ui": ("other", "Apple's Ferret-UI weights: see Apple's licence for the released Ferret-UI checkpoints."),
    "own": ("apache-2.0", "Weights trained with transformers-ferret; check the licences of the parts it was composed from."),
}

CARD_TEMPLATE = """---
license: {license}
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- ferret
- referring
- grounding
- transformers-ferret
---

# {title}

A [Ferret](https://arxiv.org/abs/2310.07704) model in the transformers-native format of
[transformers-ferret](https://pypi.org/project/transformers-ferret/): it **refers** (ask about a point, a box or a
free-form region of the image) and **grounds** (answers carry boxes as `[x1, y1, x2, y2]` on a 0..999 grid).

## Licence of the weights

{licence_text}

## Use

```python
import transformers_ferret  # or pass trust_remote_code=True without the package
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{repo_id}")
processor = AutoProcessor.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": [{{"type": "image", "image": image}}, {{"type": "text", "text": "What is <region>?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt", processor_kwargs={{"regions": [[(x1, y1, x2, y2)]]}})
answer = processor.post_process_image_text_to_text(model.generate(**inputs, max_new_tokens=64)[:, inputs["input_ids"].shape[1]:])
boxes = processor.post_process_grounding(answer, image_sizes=[(image.height, image.width)])
```

Architecture: {architecture}.
"""


def model_card(folder: Path, repo_id: str, weights: str) -> str:
    """The README.md model card for `folder`."""
    licence, licence_text = WEIGHT_LICENCES[weights]
    config = json.loads((folder / "config.json").read_text())
    any_resolution = config.get("tile_vision_config") is not None or config.get("image_grid_pinpoints") is not None
    architecture = (
        f"{'Ferret-v2 (any resolution)' if any_resolution else 'Ferret v1'}, "
        f"{config['text_config'].get('model_type', '?')} language model with "
        f"{config['text_config'].get('num_hidden_layers', '?')} layers of width {config['text_config'].get('hidden_size', '?')}"
    )
    return CARD_TEMPLATE.format(
        license=licence, licence_text=licence_text, repo_id=repo_id, title=repo_id.split("/")[-1], architecture=architecture
    )


def push(folder: str, repo_id: str, weights: str, dry_run: bool = False, private: bool = False) -> list[str]:
    """Writes the card and uploads `folder` (or, with `dry_run`, only lists the files). Returns the file names."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if "mm_vision_tower" in config:
        raise ValueError(f"{folder} holds an original-format checkpoint; convert it first (convert_ferret_original.py).")
    if "auto_map" not in config:
        raise ValueError(f"{folder}/config.json has no auto_map; save the model with save_pretrained.")
    (folder / "README.md").write_text(model_card(folder, repo_id, weights))
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    if dry_run:
        print(f"Would upload {len(files)} files to {repo_id}:", *files, sep="\n  ")
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload Ferret (transformers-ferret)")
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--weights", choices=sorted(WEIGHT_LICENCES), required=True, help="whose weights these are")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    push(args.folder, args.repo_id, args.weights, args.dry_run, args.private)


if __name__ == "__main__":
    main()
