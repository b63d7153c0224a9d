"""`--delta-path/--base-model-path` applies Apple's released delta as the original apply_delta does."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_models import ORIGINAL_FERRET_FIXTURES

REPO = Path(__file__).resolve().parents[1]
PARITY = ORIGINAL_FERRET_FIXTURES
BASE_VOCAB = 500  # the tiny Vicuna stand-in; the Ferret delta adds <region_fea> = 500


def _converter():
    spec = importlib.util.spec_from_file_location("convert_ferret_original", REPO / "conversion" / "convert_ferret_original.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_tree(source: Path, target: Path):
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / path.relative_to(source))


@pytest.fixture(scope="module")
def delta_setup(tmp_path_factory):
    """A random 'Vicuna' base and the delta that turns it into ferret_tiny (made in float16, as make_delta)."""
    root = tmp_path_factory.mktemp("delta")
    target = torch.load(PARITY / "ferret_tiny" / "pytorch_model.bin", weights_only=True)
    converter = _converter()
    generator = torch.Generator().manual_seed(0)
    base, delta = {}, {}
    for name, tensor in target.items():
        if name in converter.MULTIMODAL_KEYS:
            delta[name] = tensor.half()
            continue
        base_shape = (BASE_VOCAB, tensor.shape[1]) if name in ("model.embed_tokens.weight", "lm_head.weight") else tensor.shape
        base[name] = torch.randn(base_shape, generator=generator).half()
        difference = tensor.half().clone()
        difference[: base_shape[0]] -= base[name]
        delta[name] = difference
    base_dir, delta_dir = root / "vicuna", root / "ferret_delta"
    base_dir.mkdir()
    save_file({k: v.contiguous() for k, v in base.items()}, base_dir / "model.safetensors")
    _copy_tree(PARITY / "ferret_tiny", delta_dir)
    (delta_dir / "pytorch_model.bin").unlink()
    torch.save(delta, delta_dir / "pytorch_model.bin")
    return converter, base, delta, base_dir, delta_dir, root


def test_apply_delta_adds_base_in_float16_and_keeps_absolute_rows(delta_setup):
    converter, base, delta, *_ = delta_setup
    merged = converter.apply_delta(base, delta)
    assert merged.keys() == delta.keys()
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float16
        if name in converter.MULTIMODAL_KEYS:
            assert torch.equal(tensor, delta[name]), name
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(tensor[:BASE_VOCAB], delta[name][:BASE_VOCAB] + base[name])
            assert torch.equal(tensor[BASE_VOCAB:], delta[name][BASE_VOCAB:])  # <region_fea> row is absolute
        else:
            assert torch.equal(tensor, delta[name] + base[name]), name


def test_apply_delta_rejects_unknown_keys_and_shapes(delta_setup):
    converter, base, delta, *_ = delta_setup
    with pytest.raises(ValueError, match="neither in the base"):
        converter.apply_delta(base, {**delta, "model.unknown.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        converter.apply_delta(base, {**delta, "model.norm.weight": torch.zeros(3)})


def test_delta_conversion_writes_the_merged_weights(delta_setup):
    converter, base, delta, base_dir, delta_dir, root = delta_setup
    output = root / "converted"
    converter.main(["--delta-path", str(delta_dir), "--base-model-path", str(base_dir), "--output-dir", str(output)])
    weights = load_file(output / "model.safetensors")
    expected_layer = delta["model.layers.0.mlp.up_proj.weight"] + base["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(weights["model.language_model.layers.0.mlp.up_proj.weight"], expected_layer)
    assert torch.equal(weights["model.region_sampler.flatten_projection.weight"], delta["model.region_geo_sampler.flatten_projector.weight"])
    embeddings = weights["model.language_model.embed_tokens.weight"]
    assert embeddings.shape[0] == BASE_VOCAB + 2  # + <region_fea> + <image>
    assert torch.equal(embeddings[BASE_VOCAB], delta["model.embed_tokens.weight"][BASE_VOCAB])


def test_delta_without_base_is_refused(delta_setup):
    converter, *_, delta_dir, root = delta_setup
    with pytest.raises(ValueError, match="base-model-path"):
        converter.main(["--delta-path", str(delta_dir), "--output-dir", str(root / "never")])


def test_delta_with_a_tokenizer_that_does_not_fit_is_refused_before_reading_weights(delta_setup, tmp_path):
    """The tokenizer is checked against config.json before the (multi-GB) delta and base are read: here the base path
    does not even exist, and the error is the tokenizer's."""
    converter, *_, delta_dir, root = delta_setup
    wrong = tmp_path / "delta_wrong_tokenizer"
    _copy_tree(delta_dir, wrong)
    (wrong / "added_tokens.json").write_text('{"<region_fea>": 500, "<pad>": 501}')
    with pytest.raises(ValueError, match=r"502 tokens before <image> is added, 1 more than the 501 rows.*'<pad>' = 5"):
        converter.main(["--delta-path", str(wrong), "--base-model-path", str(tmp_path / "absent"),
                        "--output-dir", str(tmp_path / "never")])  # fmt: skip
    assert not (tmp_path / "never").exists()


def test_delta_with_the_base_vicuna_tokenizer_through_tokenizer_path(delta_setup, tmp_path):
    """Vicuna's own tokenizer (500 pieces, no `<region_fea>`) fits: `<region_fea>` is added at 500, as in the delta."""
    converter, _, _, base_dir, delta_dir, _ = delta_setup
    vicuna_tokenizer = tmp_path / "vicuna_tokenizer"
    vicuna_tokenizer.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(PARITY / "ferret_tiny" / name, vicuna_tokenizer / name)
    output = tmp_path / "converted"
    converter.main(["--delta-path", str(delta_dir), "--base-model-path", str(base_dir), "--output-dir", str(output),
                    "--tokenizer-path", str(vicuna_tokenizer)])  # fmt: skip
    from transformers_ferret import FerretProcessor

    tokenizer = FerretProcessor.from_pretrained(output).tokenizer
    assert tokenizer.convert_tokens_to_ids(["<region_fea>", "<image>"]) == [500, 501] and tokenizer.pad_token == "<unk>"
