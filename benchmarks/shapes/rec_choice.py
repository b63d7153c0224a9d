"""Where REC's choice of object happens, and whether the model has what it needs there.

    python benchmarks/shapes/rec_choice.py --model runs/rec_r6 [--num-scenes 2048] [--json runs/rec_r6/rec_choice.json]

Teacher-forced REC answers ("The cyan star [x1, y1, x2, y2].") on fresh scenes (seed 9000, never used in training):

1. `pointer_mass_by_digit`: the mean attention mass that the pointer head (rec_pointer.py; layer 1, head 0 unless
   given) puts on the named object's global patches, at each digit query of the answer (0 = the query that predicts
   the first digit, i.e. the position of "["). Only the first query has to choose the object from its name: the later
   ones see the coordinates written so far.
2. `name_probes`: linear probes (trained on three quarters of the scenes, accuracy on the rest; chance 1/8) of the
   named object's colour and shape from the language model's hidden state at the answer's colour token, its shape
   token and the first digit query, at each layer's input; and from the mean state of the named object's global
   patches. They say where the name is at hand for a head that has to match it against the patches.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import eval_samples, truth  # noqa: E402
from rec_pointer import pointer_targets  # noqa: E402

import transformers_ferret  # noqa: E402,F401
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from transformers_ferret.training import FerretDataCollator  # noqa: E402
from transformers_ferret.synthetic_shapes import COLOURS, SHAPES  # noqa: E402

PROBE_SEED = 9000
POSITIONS = {"colour_token": -2, "shape_token": -1, "first_digit_query": 0}  # relative to the first digit query
MAX_DIGITS = 12  # four 0..999 coordinates


def collect(model, processor, num_scenes: int, pointer_layer: int, pointer_head: int, batch_size: int = 32) -> dict:
    """
    Runs teacher-forced REC batches and keeps, per scene: the pointer head's mass on the named object's patches at
    each digit query (`[scenes, digits]`, NaN past the answer's last digit), the hidden states at `POSITIONS` per layer
    input (`{position: [layers, scenes, hidden]}`), the mean state of the object's global patches (`[layers, scenes,
    hidden]`) and the object's colour and shape indices.
    """
    collator = FerretDataCollator(processor, seed=0)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    image_id = model.config.image_token_index
    masses, states, patch_states, colours, shapes = [], {name: [] for name in POSITIONS}, [], [], []
    for start in range(0, num_scenes, batch_size):
        samples = eval_samples("rec", min(batch_size, num_scenes - start), seed=PROBE_SEED + start)
        batch = collator(samples)
        with torch.no_grad():
            outputs = model(**batch, output_hidden_states=True, output_attentions=True)
        hidden = torch.stack(outputs.hidden_states[:-1])  # [layers, batch, seq, hidden]: each layer's input
        attention = outputs.attentions[pointer_layer][:, pointer_head]  # [batch, seq, seq]
        found = pointer_targets(batch["input_ids"], batch["labels"], processor.tokenizer, image_id, grid)
        for b, sample in enumerate(samples):
            queries = found.targets[b].any(-1).nonzero().flatten()
            names = found.name_targets[b].any(-1).nonzero().flatten()
            if len(queries) == 0 or len(names) != 2:  # one-token colour and shape names only
                continue
            first = queries[0].item()
            mass = (attention[b, queries] * found.targets[b, queries]).sum(-1)
            masses.append(torch.nn.functional.pad(mass, (0, MAX_DIGITS - len(mass)), value=float("nan")))
            for name, offset in POSITIONS.items():
                states[name].append(hidden[:, b, first + offset])
            image_positions = (batch["input_ids"][b] == image_id).nonzero().flatten()[: grid * grid]
            inside = found.targets[b, first, image_positions].float()
            patch_states.append((hidden[:, b, image_positions] * inside[:, None]).sum(1) / inside.sum())
            named = next(item for item in sample["objects"] if item["box"] == truth(sample)[1])
            colours.append(list(COLOURS).index(named["colour"]))
            shapes.append(SHAPES.index(named["shape"]))
    return {
        "masses": torch.stack(masses),
        "states": {name: torch.stack(values, dim=1) for name, values in states.items()},
        "patch_states": torch.stack(patch_states, dim=1),
        "colours": torch.tensor(colours),
        "shapes": torch.tensor(shapes),
    }


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, steps: int = 300, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier (standardised `[n, d]` features, Adam, weight decay) trained on the
    first three quarters of the rows and tested on the last quarter."""
    torch.manual_seed(seed)
    split = len(labels) * 3 // 4
    mean, std = features[:split].mean(0), features[:split].std(0).clamp_min(1e-3)
    features = (features - mean) / std
    classifier = torch.nn.Linear(features.shape[-1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(classifier(features[:split]), labels[:split]).backward()
        optimizer.step()
    with torch.no_grad():
        return (classifier(features[split:]).argmax(-1) == labels[split:]).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-scenes", type=int, default=2048)
    parser.add_argument("--pointer-layer", type=int, default=1)
    parser.add_argument("--pointer-head", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    model.set_attn_implementation("eager")  # attention probabilities
    processor = AutoProcessor.from_pretrained(args.model)
    data = collect(model, processor, args.num_scenes, args.pointer_layer, args.pointer_head)
    masses = data["masses"]
    results = {
        "scenes": len(masses),
        "pointer_mass_by_digit": [round(column[~column.isnan()].mean().item(), 3) for column in masses.T],
        "name_probes": {},
    }
    sources = {**data["states"], "named_object_patches": data["patch_states"]}
    for name, layers in sources.items():
        results["name_probes"][name] = [
            {"layer_input": layer, "colour": round(probe_accuracy(features, data["colours"]), 3),
             "shape": round(probe_accuracy(features, data["shapes"]), 3)}
            for layer, features in enumerate(layers)
        ]  # fmt: skip
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
