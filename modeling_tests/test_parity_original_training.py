"""Training parity with the original apple/ml-ferret code: one backward step of the converted model gives the loss and
the gradients that the original code computed (`fixtures/original_ferret/cases/<case>_grads.safetensors`).

The original ran `model(input_ids, images, region_masks, labels).loss.backward()` in train mode (no dropout in the tiny
checkpoint), with the last 10 input ids as the text to predict and -100 everywhere else (see the fixture README). We
feed the same inputs and labels (the `-200` placeholder expanded to 64 ignored `<image>` positions) and compare the
loss, the gradients of the region sampler, the projector, the input embeddings and `lm_head`, and the gradients of four
activations: the CLIP features (read by both the projector and the sampler), the features read at the 512 region
points, and the output of each sampler stage.

Case 06 is the tie-heavy one: its 72-pixel point mask is filled up to 512 points by repeating its points, so many
neighbours of a kept point are exact copies of each other and the max pooling meets exact ties. The original's
`AdaptiveMaxPool1d` sends each gradient to one of the tied copies (in the fixture 232 of the 512 points receive one;
every pixel has copies with and copies without); the per-point and per-stage gradients show which copy, so they fail
loudly if our pooling splits the gradient (`amax`) or picks another copy. The parameter gradients alone would hardly
notice: the tied copies are identical, so routing the gradient to another copy changes them only by rounding.

The loss is the model's own `labels=` loss. Our vocabulary has one class more than the original's, the `<image>`
placeholder (the original's image token is -200, outside its vocabulary); its logit is the dtype's lowest value, so it
takes no probability and the loss and every gradient are the original's. Before that rule, `<image>`'s logit was 0
(a zero `lm_head` row): the loss was 1.28e-3 higher, every gradient was off (`lm_head` by up to 5.7e-5) and the
`<image>` row received a gradient (2.6e-3), which these tests found.
"""

import pytest
import torch
from safetensors.torch import load_file

from transformers_ferret import FerretForConditionalGeneration
from transformers_ferret import modeling_ferret_sampler

from test_parity_original import (  # noqa: F401  (converted_dir: the module-scoped fixture converting the checkpoint)
    CASES,
    IMAGE_TOKENS,
    PARITY,
    _fixture_inputs,
    _load_converter,
    converted_dir,
)

GRADIENT_CASES = {case["name"]: case for case in CASES if "grads_file" in case}
RTOL, ATOL = 1e-4, 1e-6
ACTIVATIONS = ("grad_image_features", "grad_region_point_features", "grad_region_stage0_features",
               "grad_region_stage1_features")  # fmt: skip
OUR_VOCAB_ROWS = ("model.language_model.embed_tokens.weight", "lm_head.weight")  # + the `<image>` row


@pytest.fixture
def model(converted_dir):
    return FerretForConditionalGeneration.from_pretrained(converted_dir).train()


def _expanded_labels(input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original's labels laid out as our ids: its single -200 placeholder becomes 64 ignored `<image>` positions."""
    rows = []
    for ids, row_labels in zip(input_ids.tolist(), labels.tolist()):
        rows.append([])
        for token, label in zip(ids, row_labels):
            assert token != -200 or label == -100
            rows[-1] += [-100] * IMAGE_TOKENS if token == -200 else [label]
    return torch.tensor(rows)


def _probe_activation_gradients(model, monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Makes the next forward keep the activations whose gradients the fixtures hold (as the generator does for the
    original): the selected CLIP features become a leaf that requires grad (the original tower runs without
    gradients), the point features read by the sampler and each stage's pooled output retain their gradients."""
    probes = {name: [] for name in ACTIVATIONS}

    def retained(name, tensor):
        tensor.retain_grad()
        probes[name].append(tensor)
        return tensor

    select = model.model._select_vision_features
    monkeypatch.setattr(model.model, "_select_vision_features",
                        lambda *a, **k: retained("grad_image_features", select(*a, **k).detach().requires_grad_()))  # fmt: skip
    read = modeling_ferret_sampler.sample_point_features
    monkeypatch.setattr(modeling_ferret_sampler, "sample_point_features",
                        lambda *a, **k: retained("grad_region_point_features", read(*a, **k)))  # fmt: skip

    def keep_stage_output(name):
        def hook(module, args, out):  # a stage returns (kept points, their pooled features)
            retained(name, out[1])

        return hook

    for stage, layer in enumerate(model.model.region_sampler.layers):
        layer.register_forward_hook(keep_stage_output(f"grad_region_stage{stage}_features"))
    return probes


def _training_step(model, case, monkeypatch):
    """Runs forward + backward on the case's inputs and labels; returns the loss, the gradients of the stored
    parameters under our names (the original's names mapped by the converter) and the four activation gradients,
    each next to the original's value."""
    inputs, expected = _fixture_inputs(case, model.config.image_token_id)
    reference = load_file(PARITY / case["grads_file"])
    labels = _expanded_labels(expected["input_ids"], reference["labels"])
    probes = _probe_activation_gradients(model, monkeypatch)
    loss = model(**inputs, labels=labels).loss
    loss.backward()

    pairs = {"loss": (loss.detach(), reference["loss"])}
    original_parameters = {name: grad for name, grad in reference.items() if name.startswith(("model.", "lm_head."))}
    parameters = dict(model.named_parameters())
    for name, original_grad in _load_converter().rename_original_state_dict(original_parameters).items():
        pairs[name] = (parameters[name].grad, original_grad)
    for name in ACTIVATIONS:
        pairs[name] = (torch.cat([t.grad for t in probes[name]]), reference[name])
    return pairs


def _mismatches(pairs) -> list[str]:
    """Names whose values differ beyond RTOL/ATOL, with their largest absolute and relative differences. Our two
    vocabulary matrices have one row more (`<image>`): its gradient must be exactly zero, the other rows compared."""
    failures = []
    for name, (ours, original) in pairs.items():
        if name in OUR_VOCAB_ROWS:
            extra = ours[original.shape[0]:]
            if torch.count_nonzero(extra):
                failures.append(f"{name}: <image> row gradient max |.| {extra.abs().max():.3g}, expected 0")
            ours = ours[: original.shape[0]]
        assert ours.shape == original.shape, (name, ours.shape, original.shape)
        if not torch.allclose(ours, original, rtol=RTOL, atol=ATOL):
            diff = (ours - original).abs()
            relative = (diff / original.abs()).nan_to_num(0, posinf=float("inf")).max()
            failures.append(f"{name}: max |diff| {diff.max():.3g} (max |original| {original.abs().max():.3g}, "
                            f"max rel diff {relative:.3g}, {int((~torch.isclose(ours, original, RTOL, ATOL)).sum())} "
                            f"of {original.numel()} values off)")  # fmt: skip
    return failures


def test_gradient_fixtures_cover_a_box_and_ties_where_the_original_picked_one_copy():
    assert sorted(GRADIENT_CASES) == ["03_image_box", "06_image_point_at_border"]
    case = GRADIENT_CASES["06_image_point_at_border"]
    assert case["samples"][0]["regions"][0]["num_pixels"] == 72  # 512 points = 7 or 8 copies of each pixel
    points = load_file(PARITY / case["file"])["region_points_init"][0]
    grads = load_file(PARITY / case["grads_file"])["grad_region_point_features"][0]
    pixel_of_point = torch.unique(points, dim=0, return_inverse=True)[1]
    # pixels some of whose copies received a gradient and others none: the original sent tied gradients to one copy
    received = grads.ne(0).any(-1)
    split = [pixel for pixel in range(72) if received[pixel_of_point == pixel].unique().numel() == 2]
    assert len(split) > 0


@pytest.mark.parametrize("name", ["03_image_box", "06_image_point_at_border"])
def test_model_loss_and_its_gradients_equal_the_originals(model, name, monkeypatch):
    """`model(..., labels=...).loss` (shift, ignored placeholders, mean) and the gradients of the sampler, projector,
    embeddings and `lm_head` equal the original's; on case 06 this includes which tied neighbour copy receives each
    gradient. The `<image>` class takes no probability, so its `lm_head` row gets no gradient."""
    pairs = _training_step(model, GRADIENT_CASES[name], monkeypatch)
    reference = load_file(PARITY / GRADIENT_CASES[name]["grads_file"])
    for activation in ("grad_region_point_features", "grad_region_stage0_features"):  # the probes reach the sampler
        assert torch.count_nonzero(reference[activation]) > 0
    failures = _mismatches(pairs)
    assert not failures, "\n".join(failures)
