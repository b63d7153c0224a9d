"""Training stages: the exact trainable parameters of each Ferret / Ferret-v2 stage."""

import pytest
import torch
from tiny_models import tiny_ferret_model, tiny_ferret_v2_model

from transformers_ferret.training.stages import (
    STAGES,
    apply_training_stage,
    format_trainable_summary,
    trainable_summary,
)

V1_MODULES = [
    "model.vision_tower", "model.multi_modal_projector", "model.region_sampler", "model.language_model", "lm_head"
]  # fmt: skip
V2_MODULES = V1_MODULES[:1] + ["model.tile_vision_tower"] + V1_MODULES[1:2] + ["model.tile_projector"] + V1_MODULES[2:]

EXPECTED = {
    "v1-stage1": ["model.multi_modal_projector"],
    "v1-stage2": ["model.multi_modal_projector", "model.region_sampler", "model.language_model", "lm_head"],
    "v2-stage1": ["model.multi_modal_projector"],
    "v2-stage2": ["model.multi_modal_projector", "model.tile_projector", "model.region_sampler"],
    "v2-stage3": V2_MODULES,
}


def _module_of(name: str) -> str:
    return name.split(".")[0] if name.startswith("lm_head") else ".".join(name.split(".")[:2])


def _trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def _names_under(model, modules) -> set[str]:
    return {name for name, _ in model.named_parameters() if _module_of(name) in modules}


@pytest.mark.parametrize("stage", ["v1-stage1", "v1-stage2"])
def test_v1_stages(stage):
    model = tiny_ferret_model()
    assert sorted({_module_of(name) for name, _ in model.named_parameters()}) == sorted(V1_MODULES)
    summary = apply_training_stage(model, stage)
    assert _trainable_names(model) == _names_under(model, EXPECTED[stage])
    assert list(summary) == V1_MODULES
    for module, counts in summary.items():
        assert counts["trainable"] == (counts["total"] if module in EXPECTED[stage] else 0)


@pytest.mark.parametrize("stage", ["v2-stage1", "v2-stage2", "v2-stage3"])
def test_v2_stages(stage):
    model = tiny_ferret_v2_model()
    apply_training_stage(model, "v2-stage3" if stage != "v2-stage3" else "v2-stage1")  # start from another state
    summary = apply_training_stage(model, stage)
    assert _trainable_names(model) == _names_under(model, EXPECTED[stage])
    assert list(summary) == V2_MODULES
    assert sum(counts["trainable"] for counts in summary.values()) == sum(
        parameter.numel() for parameter in model.parameters() if parameter.requires_grad
    )


def test_v2_stage2_initialises_the_tile_projector_from_the_global_one():
    model = tiny_ferret_v2_model()
    global_state = model.model.multi_modal_projector.state_dict()
    assert any(not torch.equal(global_state[k], v) for k, v in model.model.tile_projector.state_dict().items())
    apply_training_stage(model, "v2-stage2")
    tile_state = model.model.tile_projector.state_dict()
    assert all(torch.equal(global_state[k], v) for k, v in tile_state.items())
    with torch.no_grad():
        model.model.tile_projector.linear_1.bias.add_(1.0)
    apply_training_stage(model, "v2-stage2", init_tile_projector=False)  # resuming keeps the trained copy
    assert not torch.equal(model.model.tile_projector.linear_1.bias, global_state["linear_1.bias"])


def test_v2_stage2_trains_the_tile_feature_adapter():
    model = tiny_ferret_v2_model(tile_vision_config={"model_type": "dinov2", "image_size": 28, "patch_size": 14,
                                                     "hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 1,
                                                     "num_attention_heads": 2},
                                 tile_feature_adapter=True)  # fmt: skip
    with pytest.raises(ValueError, match="differ in shape"):  # a 24-wide DINOv2 projector cannot copy a 16-wide one
        apply_training_stage(model, "v2-stage2")
    summary = apply_training_stage(model, "v2-stage2", init_tile_projector=False)
    modules = EXPECTED["v2-stage2"] + ["model.tile_feature_adapter"]
    assert _trainable_names(model) == _names_under(model, modules)
    assert summary["model.tile_feature_adapter"]["trainable"] == 24 * 16 + 16


def test_errors():
    with pytest.raises(ValueError, match="Ferret-v2 stage.*no tile encoder"):
        apply_training_stage(tiny_ferret_model(), "v2-stage2")
    with pytest.raises(ValueError, match="Ferret v1 stage.*Ferret-v2 model"):
        apply_training_stage(tiny_ferret_v2_model(), "v1-stage2")
    with pytest.raises(ValueError, match="Unknown training stage 'stage2'"):
        apply_training_stage(tiny_ferret_model(), "stage2")
    with pytest.raises(TypeError):
        apply_training_stage(torch.nn.Linear(2, 2), "v1-stage1")
    assert sorted(STAGES) == sorted(EXPECTED)


def test_base_model_and_summary_table():
    model = tiny_ferret_model()
    summary = apply_training_stage(model.model, "v1-stage2")  # the FerretModel alone (no lm_head)
    assert list(summary) == ["vision_tower", "multi_modal_projector", "region_sampler", "language_model"]
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    table = format_trainable_summary(trainable_summary(model))
    lines = table.splitlines()
    assert lines[0].split() == ["module", "trainable", "total", "%"]
    assert [line.split()[0] for line in lines[2:-2]] == V1_MODULES and lines[-1].split()[0] == "total"
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in lines[-1]
    assert lines[2].split()[1:] == ["0", f"{summary['vision_tower']['total']:,}", "0.0%"]
