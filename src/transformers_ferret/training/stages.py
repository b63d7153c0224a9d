# Copyright 2025 The transformers-ferret authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Which parameters train in each training stage of Ferret and Ferret-v2.

| stage | trains | frozen | source |
|---|---|---|---|
| `"v1-stage1"` | projector | CLIP, sampler, LLM | LLaVA-1.5 projector pretraining (Ferret starts from its result) |
| `"v1-stage2"` | LLM (embeddings, decoder, `lm_head`), projector, sampler | CLIP | Ferret's training (`ferret_7b_train.sh`) |
| `"v2-stage1"` | CLIP projector | both encoders, DINOv2 projector, sampler, LLM | Ferret-v2 I, image-caption alignment |
| `"v2-stage2"` | both projectors, sampler (+ `tile_feature_adapter`) | both encoders, LLM | Ferret-v2 II, dense alignment; the DINOv2 projector starts as a copy of the CLIP projector |
| `"v2-stage3"` | everything | nothing | Ferret-v2 III, instruction tuning |

Module names (of `FerretForConditionalGeneration`): `model.vision_tower` (CLIP), `model.tile_vision_tower` (DINOv2),
`model.multi_modal_projector` (CLIP projector), `model.tile_projector` (DINOv2 projector),
`model.tile_feature_adapter` (optional), `model.region_sampler`, `model.language_model`, `lm_head`.
"""

from __future__ import annotations

from torch import nn


MODULE_NAMES = (
    "vision_tower",
    "tile_vision_tower",
    "multi_modal_projector",
    "tile_projector",
    "tile_feature_adapter",
    "region_sampler",
    "language_model",
    "lm_head",
)
"""Every top-level trainable part of a Ferret model (names of `FerretModel` children, plus `lm_head`)."""

STAGES = {
    "v1-stage1": ("multi_modal_projector",),
    "v1-stage2": ("multi_modal_projector", "region_sampler", "language_model", "lm_head"),
    "v2-stage1": ("multi_modal_projector",),
    "v2-stage2": ("multi_modal_projector", "tile_projector", "tile_feature_adapter", "region_sampler"),
    "v2-stage3": MODULE_NAMES,  # everything trains
}
"""Trainable top-level modules of each stage (names of `FerretModel` children, plus `lm_head`)."""


def _ferret_parts(model: nn.Module) -> tuple[nn.Module, dict[str, nn.Module], str]:
    """The `FerretModel`, its named parts `{short name: module}` and the prefix of their parameter names."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        model = model.get_base_model()  # a PeftModel
    has_head = isinstance(getattr(model, "lm_head", None), nn.Module)
    if has_head and hasattr(getattr(model, "model", None), "region_sampler"):
        base, prefix = model.model, "model."
    elif hasattr(model, "region_sampler"):
        base, prefix = model, ""
    else:
        raise TypeError(f"Expected a FerretForConditionalGeneration or FerretModel, got {type(model).__name__}.")
    parts = {name: getattr(base, name) for name in MODULE_NAMES if isinstance(getattr(base, name, None), nn.Module)}
    if prefix:
        parts["lm_head"] = model.lm_head
    return base, parts, prefix


def _module_key(name: str, prefix: str) -> str:
    return name if name == "lm_head" else prefix + name


def trainable_summary(model: nn.Module) -> dict[str, dict[str, int]]:
    """
    Per-module parameter counts: `{module name: {"trainable": n, "total": m}}`, module names as in the model's
    parameter names (`"model.vision_tower"`, ..., `"lm_head"`); parameters outside those modules are under `"other"`.
    Tied parameters are counted once (under the first module that holds them).
    """
    _, parts, prefix = _ferret_parts(model)
    summary, seen = {}, set()
    for name, module in parts.items():
        counts = {"trainable": 0, "total": 0}
        for parameter in module.parameters():
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            counts["total"] += parameter.numel()
            counts["trainable"] += parameter.numel() if parameter.requires_grad else 0
        summary[_module_key(name, prefix)] = counts
    other = [parameter for parameter in model.parameters() if id(parameter) not in seen]
    if other:
        summary["other"] = {
            "trainable": sum(p.numel() for p in other if p.requires_grad),
            "total": sum(p.numel() for p in other),
        }
    return summary


def apply_training_stage(model: nn.Module, stage: str, init_tile_projector: bool = True) -> dict[str, dict[str, int]]:
    """
    Sets `requires_grad` for a training stage of Ferret (`"v1-stage1"`, `"v1-stage2"`) or Ferret-v2 (`"v2-stage1"`,
    `"v2-stage2"`, `"v2-stage3"`); see the module docstring for what each trains.

    Args:
        model (`FerretForConditionalGeneration` or `FerretModel`): the model, before any PEFT wrapping.
        stage (`str`): the stage name.
        init_tile_projector (`bool`, defaults to `True`): for `"v2-stage2"`, copy the CLIP projector's weights into the
            DINOv2 projector first (`FerretModel.init_tile_projector_from_global`), as the paper does when the stage
            starts; pass `False` when resuming stage II.

    Returns:
        The [`trainable_summary`] after the change.

    Raises:
        `ValueError`: unknown stage; a `"v2-*"` stage on a model without a tile encoder (`tile_vision_config`); a
            `"v1-*"` stage on a Ferret-v2 model (its tile encoder and projector would be left out of the plan).
    """
    if stage not in STAGES:
        raise ValueError(f"Unknown training stage {stage!r}; expected one of {sorted(STAGES)}.")
    base, parts, _ = _ferret_parts(model)
    is_v2 = "tile_vision_tower" in parts
    if stage.startswith("v2") and not is_v2:
        raise ValueError(
            f"{stage!r} is a Ferret-v2 stage but this model has no tile encoder (`config.tile_vision_config` is None): "
            "use 'v1-stage1' or 'v1-stage2', or build a Ferret-v2 model."
        )
    if stage.startswith("v1") and is_v2:
        raise ValueError(f"{stage!r} is a Ferret v1 stage but this is a Ferret-v2 model: use 'v2-stage1/2/3'.")
    if stage == "v2-stage2" and init_tile_projector:
        base.init_tile_projector_from_global()
    model.requires_grad_(False)
    for name in STAGES[stage]:
        if name in parts:
            parts[name].requires_grad_(True)
    return trainable_summary(model)


def format_trainable_summary(summary: dict[str, dict[str, int]]) -> str:
    """The summary of [`apply_training_stage`] / [`trainable_summary`] as a text table with a total row."""
    rows = [(name, counts["trainable"], counts["total"]) for name, counts in summary.items()]
    rows.append(("total", sum(row[1] for row in rows), sum(row[2] for row in rows)))
    width = max(len("module"), *(len(row[0]) for row in rows))
    lines = [f"{'module':<{width}}  {'trainable':>14}  {'total':>14}  {'%':>6}", "-" * (width + 42)]
    for index, (name, trainable, total) in enumerate(rows):
        if index == len(rows) - 1:
            lines.append("-" * (width + 42))
        percent = 100.0 * trainable / total if total else 0.0
        lines.append(f"{name:<{width}}  {trainable:>14,}  {total:>14,}  {percent:>5.1f}%")
    return "\n".join(lines)


__all__ = ["STAGES", "apply_training_stage", "format_trainable_summary", "trainable_summary"]
