"""conversion/convert_ferret_original.py checks the tokenizer against the checkpoint before converting.

A tokenizer that does not fit the embedding matrix used to convert silently, and the converted model failed at its
first `generate` ("Image features and image tokens do not match, tokens: 0, features: ..." when the tokenizer is
smaller than the matrix; "index out of range" when it has tokens past it). Each case here is a copy of the tiny
original checkpoint of the parity fixtures (`ferret_tiny`: 500 SentencePiece pieces + `<region_fea>` = 500, an
embedding matrix of 501 rows) with one thing changed.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_ferret import FerretForConditionalGeneration, FerretProcessor

from tiny_models import ORIGINAL_FERRET_FIXTURES

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = ORIGINAL_FERRET_FIXTURES / "ferret_tiny"


def _converter():
    path = REPO / "conversion" / "convert_ferret_original.py"
    spec = importlib.util.spec_from_file_location("convert_ferret_original", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _checkpoint(folder: Path, extra_rows: int = 0, added_tokens: dict | None = None) -> Path:
    """A copy of ferret_tiny, its embedding matrix and lm_head grown by `extra_rows` (config vocab_size with them),
    and/or its `added_tokens.json` replaced."""
    shutil.copytree(CHECKPOINT, folder)
    if extra_rows:
        weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
        generator = torch.Generator().manual_seed(0)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            extra = torch.randn(extra_rows, weights[name].shape[1], generator=generator, dtype=weights[name].dtype)
            weights[name] = torch.cat([weights[name], extra])
        torch.save(weights, folder / "pytorch_model.bin")
        config = json.loads((folder / "config.json").read_text())
        config["vocab_size"] += extra_rows
        (folder / "config.json").write_text(json.dumps(config))
    if added_tokens is not None:
        (folder / "added_tokens.json").write_text(json.dumps(added_tokens))
    return folder


def _generate(output: Path) -> torch.Tensor:
    model = FerretForConditionalGeneration.from_pretrained(output).eval()
    processor = FerretProcessor.from_pretrained(output)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is <region>?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, regions=[(5, 5, 20, 20)], return_tensors="pt",
                       add_special_tokens=False)  # fmt: skip
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)


def test_a_tokenizer_smaller_than_the_embedding_matrix_is_refused_before_conversion(tmp_path):
    """A matrix of 506 rows (vocab_size 506) for a tokenizer of 501: `<image>` would get 501, the model reads 506."""
    checkpoint = _checkpoint(tmp_path / "padded", extra_rows=5)
    output = tmp_path / "converted"
    with pytest.raises(ValueError) as error:
        _converter().main(["--model-path", str(checkpoint), "--output-dir", str(output)])
    message = str(error.value)
    for text in ("it has 501 tokens before <image> is added, 5 fewer than the 506 rows of the checkpoint's embedding",
                 "<region_fea> is row 500, <image> becomes row 506",
                 "<image> has id 501 in the tokenizer (inside the matrix) but 506 in the model",
                 "Image features and image tokens do not match, tokens: 0", "--tokenizer-path"):  # fmt: skip
        assert text in message, text
    assert not output.exists()  # refused before any weight was read or written


def test_a_tokenizer_with_tokens_past_the_matrix_is_refused(tmp_path):
    """A `<pad>` = 501 added to the tokenizer after training: no row for it, and `<image>` would get 502."""
    checkpoint = _checkpoint(tmp_path / "extra", added_tokens={"<region_fea>": 500, "<pad>": 501})
    with pytest.raises(ValueError) as error:
        _converter().main(["--model-path", str(checkpoint), "--output-dir", str(tmp_path / "converted")])
    message = str(error.value)
    for text in ("it has 502 tokens before <image> is added, 1 more than the 501 rows",
                 "<image> has id 502 in the tokenizer (outside the converted matrix) but 501 in the model",
                 "tokens past the checkpoint's 501 rows: '<pad>' = 501, '<image>' = 502",
                 "index out of range"):  # fmt: skip
        assert text in message, text


def test_a_tokenizer_with_region_fea_elsewhere_is_refused(tmp_path):
    checkpoint = _checkpoint(tmp_path / "moved", added_tokens={"<box>": 500, "<region_fea>": 501})
    with pytest.raises(ValueError) as error:
        _converter().main(["--model-path", str(checkpoint), "--output-dir", str(tmp_path / "converted")])
    message = str(error.value)
    for text in ("<region_fea> has id 501 in the tokenizer (the row appended for <image>) but 500 in the model",
                 "<image> has id 502 in the tokenizer (outside the converted matrix) but 501 in the model",
                 "'<region_fea>' = 501, '<image>' = 502"):  # fmt: skip
        assert text in message, text


def test_check_tokenizer_fits_accepts_the_checkpoints_own_tokenizer_only():
    from transformers import CLIPVisionConfig

    from transformers_ferret.conversion import convert_original_tokenizer

    converter = _converter()
    original = json.loads((CHECKPOINT / "config.json").read_text())
    clip_config = CLIPVisionConfig.from_pretrained(CHECKPOINT / "vision_tower")
    tokenizer = convert_original_tokenizer(CHECKPOINT)
    converter.check_tokenizer_fits(tokenizer, converter.build_config(original, clip_config), 501)
    padded = converter.build_config({**original, "vocab_size": 502}, clip_config)
    with pytest.raises(ValueError, match="1 fewer than the 502 rows"):
        converter.check_tokenizer_fits(tokenizer, padded, 502)


def test_tokenizer_path_replaces_a_wrong_tokenizer_and_the_model_generates(tmp_path):
    checkpoint = _checkpoint(tmp_path / "extra", added_tokens={"<region_fea>": 500, "<pad>": 501})
    output = tmp_path / "converted"
    _converter().main(["--model-path", str(checkpoint), "--output-dir", str(output),
                       "--tokenizer-path", str(CHECKPOINT)])  # fmt: skip
    tokenizer = FerretProcessor.from_pretrained(output).tokenizer
    assert tokenizer.convert_tokens_to_ids(["<region_fea>", "<image>"]) == [500, 501] and len(tokenizer) == 502
    generated = _generate(output)
    assert generated.shape[0] == 1 and (generated[0, -2:] != 501).all()
