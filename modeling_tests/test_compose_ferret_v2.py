"""conversion/compose_ferret_v2.py: a Ferret-v2 from tiny random CLIP, DINOv2 and language models of four families.

Everything is built offline in temporary folders: the parts with `save_pretrained`, byte-level BPE tokenizers with
each family's special tokens trained in memory, and the tiny SentencePiece tokenizer of the parity fixtures for
Vicuna (with its `pad_token` `<unk>`, as Vicuna v1.3 ships it) and for Llama-2 (the same model without
`special_tokens_map.json`: `<unk>`, `<s>`, `</s>` and no pad token, as meta-llama/Llama-2-*-hf ship it).
"""

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    GemmaConfig,
    GemmaForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from transformers_ferret import FerretForConditionalGeneration, FerretProcessor
from transformers_ferret.chat_templates import (
    FERRET_UI_SYSTEM_PROMPT,
    GEMMA_CHAT_TEMPLATE,
    LLAMA3_CHAT_TEMPLATE,
    VICUNA_CHAT_TEMPLATE,
    chat_template_for,
)
from transformers_ferret.chat_templates import DEFAULT_CHAT_TEMPLATE, FERRET_SYSTEM_PROMPT

from tiny_models import ORIGINAL_FERRET_FIXTURES

REPO = Path(__file__).resolve().parents[1]
PARITY = ORIGINAL_FERRET_FIXTURES
SIDE, PATCH = 28, 14  # global view and tile side, CLIP and DINOv2 patch: 2 x 2 patches, 4 tokens per view
CORPUS = [
    "A chat between a human and an AI that understands visuals. Follow instructions.",
    "What is the object [12, 34, 56, 78] in the image? It is a cat.",
    "The objects are: 1: cat [10, 20, 30, 40], 2: dog [50, 60, 70, 80].",
    "Bounding box: [x1, y1, x2, y2]. Image size: 1000x1000. user model assistant system",
] * 4
# (special tokens of the tokenizer, its named special tokens, end of an assistant turn in the Ferret template)
FAMILIES = {
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "<|eot_id|>",
    ),
    "qwen2": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "<|im_end|>",
    ),
    "gemma": (
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        "<end_of_turn>\n<eos>",
    ),
    "vicuna": (None, None, "</s>"),
    "llama2": (None, None, "</s>"),  # Vicuna's template; a SentencePiece tokenizer without a pad token
}
SENTENCEPIECE_FAMILIES = ("vicuna", "llama2")
TEXT_KWARGS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=512)  # fmt: skip


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "conversion" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bpe_tokenizer(special_tokens: list[str], **named_tokens) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of ~300 tokens trained on CORPUS, with the given special tokens first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **named_tokens)


def write_clip(folder: Path, full: bool = False, hidden_size: int = 16) -> Path:
    """A tiny CLIPVisionModel (or full CLIPModel) folder with a preprocessor_config.json of its own statistics."""
    torch.manual_seed(1)
    vision = dict(image_size=SIDE, patch_size=PATCH, hidden_size=hidden_size, intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
    if full:
        text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
        CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=8)).save_pretrained(folder)
    else:
        CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(folder)
    statistics = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (folder / "preprocessor_config.json").write_text(json.dumps(statistics))
    return folder


def write_dinov2(folder: Path, hidden_size: int = 16) -> Path:
    torch.manual_seed(2)
    config = Dinov2Config(image_size=SIDE, patch_size=PATCH, hidden_size=hidden_size, mlp_ratio=2,
                          num_hidden_layers=2, num_attention_heads=2)  # fmt: skip
    Dinov2Model(config).save_pretrained(folder)
    return folder


def write_llama2_tokenizer(folder: Path, with_pad: bool = False) -> Path:
    """The parity fixture's SentencePiece Llama tokenizer (500 pieces: `<unk>` = 0, `<s>` = 1, `</s>` = 2). Without
    `with_pad` it has no pad token, as Llama-2 (its `tokenizer_config.json` says `"pad_token": null`); with it, the
    fixture's `special_tokens_map.json` makes `<unk>` the pad token, as Vicuna v1.3."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ("tokenizer.model", "tokenizer_config.json") + (("special_tokens_map.json",) if with_pad else ())
    for name in names:
        shutil.copyfile(PARITY / "ferret_tiny" / name, folder / name)
    return folder


def write_llm(folder: Path, family: str) -> Path:
    """A tiny causal LM of `family` with its tokenizer (and, for Llama-3, an instruct-style generation config)."""
    torch.manual_seed(3)
    if family in SENTENCEPIECE_FAMILIES:
        write_llama2_tokenizer(folder, with_pad=family == "vicuna")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **TEXT_KWARGS)
        LlamaForCausalLM(config).save_pretrained(folder)
        return folder
    special_tokens, named_tokens, _ = FAMILIES[family]
    tokenizer = bpe_tokenizer(special_tokens, **named_tokens)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in named_tokens.items()}
    special_ids = dict(bos_token_id=ids.get("bos_token"), eos_token_id=ids["eos_token"],
                       pad_token_id=ids.get("pad_token"))  # fmt: skip
    if family == "llama3":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **special_ids, **TEXT_KWARGS))
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        model.generation_config = GenerationConfig(bos_token_id=ids["bos_token"], eos_token_id=[ids["eos_token"], eot])
    elif family == "qwen2":  # tied, and 12 unused rows past the tokenizer (as Qwen2 pads its vocabulary)
        config = Qwen2Config(vocab_size=len(tokenizer) + 12, tie_word_embeddings=True, **special_ids, **TEXT_KWARGS)
        model = Qwen2ForCausalLM(config)
    else:  # gemma: tied
        config = GemmaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **special_ids, **TEXT_KWARGS)
        model = GemmaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- one composition per family -------------------------------------------------------------------------------------


class Composed:
    """The parts, the composed output folder and what was loaded back from it."""

    def __init__(self, family: str, root: Path):
        self.family = family
        compose = load_script("compose_ferret_v2")
        # Qwen2: a full CLIPModel folder, and a DINOv2 wider than CLIP (adapter; tile projector not copyable).
        self.clip_dir = write_clip(root / "clip", full=family == "qwen2")
        self.dinov2_dir = write_dinov2(root / "dinov2", hidden_size=24 if family == "qwen2" else 16)
        self.llm_dir = write_llm(root / "llm", family)
        self.output_dir = root / "ferret"
        self.stage1 = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._compose(compose, root)
        self.warnings = [str(warning.message) for warning in caught]
        self.clip = CLIPVisionModel.from_pretrained(self.clip_dir).eval()
        self.dinov2 = Dinov2Model.from_pretrained(self.dinov2_dir).eval()
        self.llm = AutoModelForCausalLM.from_pretrained(self.llm_dir).eval()
        self.llm_tokenizer = AutoTokenizer.from_pretrained(self.llm_dir)
        self.model = FerretForConditionalGeneration.from_pretrained(self.output_dir).eval()
        self.processor = FerretProcessor.from_pretrained(self.output_dir)

    def _compose(self, compose, root: Path) -> None:
        if self.family == "llama3":  # stage-I projector in LLaVA's mm_projector.bin layout, through the command line
            generator = torch.Generator().manual_seed(4)
            self.stage1 = {
                "model.mm_projector.0.weight": torch.randn(32, 16, generator=generator),
                "model.mm_projector.0.bias": torch.randn(32, generator=generator),
                "model.mm_projector.2.weight": torch.randn(32, 32, generator=generator),
                "model.mm_projector.2.bias": torch.randn(32, generator=generator),
            }
            torch.save(self.stage1, root / "mm_projector.bin")
            compose.main([
                "--clip", str(self.clip_dir), "--dinov2", str(self.dinov2_dir), "--llm", str(self.llm_dir),
                "--output-dir", str(self.output_dir), "--stage1-projector", str(root / "mm_projector.bin"),
                "--grids", "1x1", "1x2", "2x1", "2x2", "1x3", "3x1",
            ])  # fmt: skip
            self.summary = None
        else:
            self.summary = compose.compose(self.clip_dir, self.dinov2_dir, self.llm_dir, self.output_dir)


@pytest.fixture(scope="module", params=list(FAMILIES))
def composed(request, tmp_path_factory) -> Composed:
    return Composed(request.param, tmp_path_factory.mktemp(request.param))


def _original_size(composed: Composed) -> int:
    return len(composed.llm_tokenizer)


def _new_token_ids(composed: Composed) -> list[int]:
    tokenizer = composed.processor.tokenizer
    return [tokenizer.convert_tokens_to_ids("<region_fea>"), tokenizer.convert_tokens_to_ids("<image>")]


def test_parts_are_copied_exactly(composed):
    inner = composed.model.model
    for part, copy in ((composed.clip, inner.vision_tower), (composed.dinov2, inner.tile_vision_tower)):
        expected = part.state_dict()
        assert expected.keys() == copy.state_dict().keys()
        for name, tensor in copy.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
    llm_weights = composed.llm.model.state_dict()
    assert llm_weights.keys() == inner.language_model.state_dict().keys()
    rows = composed.llm.get_input_embeddings().weight.shape[0]
    kept = [row for row in range(rows) if row not in _new_token_ids(composed)]
    for name, tensor in inner.language_model.state_dict().items():
        if name == "embed_tokens.weight":
            assert torch.equal(tensor[kept], llm_weights[name][kept])
        else:
            assert torch.equal(tensor, llm_weights[name]), name
    if composed.llm.config.tie_word_embeddings:
        assert composed.model.lm_head.weight.data_ptr() == inner.language_model.embed_tokens.weight.data_ptr()
    else:
        assert torch.equal(composed.model.lm_head.weight[kept], composed.llm.lm_head.weight[kept])


def test_original_vocabulary_logits_equal_the_language_models(composed):
    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, _original_size(composed), (2, 11), generator=generator)
    with torch.no_grad():
        ours = composed.model(input_ids=input_ids).logits
        theirs = composed.llm(input_ids=input_ids).logits
    kept = [row for row in range(theirs.shape[-1]) if row not in _new_token_ids(composed)]
    assert (ours[..., kept] - theirs[..., kept]).abs().max() <= 1e-5


def test_added_tokens_have_the_expected_ids_and_rows(composed):
    region_id, image_id = _new_token_ids(composed)
    size = _original_size(composed)
    assert (region_id, image_id) == (size, size + 1)
    config = composed.model.config
    assert (config.region_token_id, config.image_token_id) == (region_id, image_id)
    rows = composed.llm.get_input_embeddings().weight.shape[0]
    assert config.text_config.vocab_size == max(rows, size + 2)  # Qwen2's padded matrix has room for both
    embeddings = composed.model.get_input_embeddings().weight
    mean_row = composed.llm.get_input_embeddings().weight[:size].mean(0)
    for token_id in (region_id, image_id):
        torch.testing.assert_close(embeddings[token_id], mean_row, rtol=0, atol=1e-6)
        if not config.tie_word_embeddings:
            assert composed.model.lm_head.weight[token_id].abs().sum() == 0
    tokenizer = composed.processor.tokenizer
    assert "<image>" in tokenizer.all_special_tokens and "<region_fea>" in tokenizer.all_special_tokens
    text = "What is the object [12, 34, 56, 78] in the image?"
    assert tokenizer(text)["input_ids"] == composed.llm_tokenizer(text)["input_ids"]


def test_generation_config_suppresses_image_and_stops_at_the_turn_end(composed):
    generation_config = composed.model.generation_config
    tokenizer = composed.processor.tokenizer
    assert generation_config.suppress_tokens == [composed.model.config.image_token_id]
    eos = generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    turn_end = FAMILIES[composed.family][2].split("\n")[0]
    assert tokenizer.convert_tokens_to_ids(turn_end) in eos and tokenizer.eos_token_id in eos
    assert tokenizer.pad_token_id is not None and generation_config.pad_token_id == tokenizer.pad_token_id


def test_tile_projector_starts_as_the_global_projector(composed):
    inner = composed.model.model
    if composed.family == "qwen2":  # DINOv2 width 24, CLIP 16: the first layers cannot be copied
        assert composed.model.config.tile_feature_adapter and hasattr(inner, "tile_feature_adapter")
        assert "own initialisation" in composed.summary["tile_projector"]
        return
    global_weights = inner.multi_modal_projector.state_dict()
    for name, tensor in inner.tile_projector.state_dict().items():
        assert torch.equal(tensor, global_weights[name]), name
    if composed.stage1 is not None:
        assert torch.equal(global_weights["linear_1.weight"], composed.stage1["model.mm_projector.0.weight"])
        assert torch.equal(global_weights["linear_2.bias"], composed.stage1["model.mm_projector.2.bias"])


def test_new_modules_get_the_models_initialisation(composed):
    """Sampler (and projectors without a stage-I file) as FerretForConditionalGeneration initialises them."""
    inner = composed.model.model
    modules = [inner.region_sampler] + ([] if composed.stage1 is not None else [inner.multi_modal_projector])
    for module in modules:
        for name, parameter in module.named_parameters():
            if name.endswith("norm.weight"):
                assert torch.equal(parameter, torch.ones_like(parameter)), name
            elif name.endswith("bias"):
                assert parameter.abs().sum() == 0, name
            else:
                assert 0.01 < parameter.std() < 0.03 and parameter.mean().abs() < 0.01, name


def test_config_and_processor_settings(composed):
    config, image_processor = composed.model.config, composed.processor.image_processor
    assert config.projector_type == "mlp2x_gelu" and not config.sampler_transposed_read
    assert config.tile_size == SIDE and config.tile_vision_config.model_type == "dinov2"
    expected_grids = 6 if composed.family == "llama3" else 14
    assert len(config.image_grid_pinpoints) == expected_grids
    assert image_processor.image_grid_pinpoints == config.image_grid_pinpoints
    assert image_processor.size == {"height": SIDE, "width": SIDE} and image_processor.tile_size == SIDE
    assert list(image_processor.image_mean) == [0.1, 0.2, 0.3] and list(image_processor.image_std) == [0.4, 0.5, 0.6]
    assert list(image_processor.tile_image_mean) == [0.485, 0.456, 0.406]
    assert composed.processor.tile_patch_size == PATCH and composed.processor.patch_size == PATCH
    # Gemma's transformers 4 forward scaled image and region features with the text embeddings
    hidden = config.text_config.hidden_size
    assert config.multimodal_embedding_scale == (hidden**0.5 if composed.family == "gemma" else 1.0)


def _expected_prompt(family: str, question: str, answer: str | None) -> str:
    """The family's rendering of `[user: <image> + question, (assistant: answer)]` with Ferret's system text."""
    if family in SENTENCEPIECE_FAMILIES:
        prompt = f"<s>{FERRET_SYSTEM_PROMPT} USER: <image>\n{question} ASSISTANT:"
        return prompt + (f" {answer}</s>" if answer else "")
    system = FERRET_UI_SYSTEM_PROMPT
    if family == "llama3":
        prompt = (f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
                  f"<|start_header_id|>user<|end_header_id|>\n\n<image>\n{question}<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip
        return prompt + (f"{answer}<|eot_id|>" if answer else "")
    if family == "qwen2":
        prompt = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{question}<|im_end|>\n"
                  "<|im_start|>assistant\n")  # fmt: skip
        return prompt + (f"{answer}<|im_end|>\n" if answer else "")
    prompt = f"<bos>{system}<start_of_turn>user\n<image>\n{question}<end_of_turn>\n<start_of_turn>model\n"
    return prompt + (f"{answer}<end_of_turn>\n<eos>" if answer else "")


def _conversation(image, question: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    return messages + ([{"role": "assistant", "content": answer}] if answer else [])


def test_chat_template_renders_the_familys_format_with_ferret_system_text(composed):
    image, question, answer = random_image(40, 90), "What is <region>?", "A cat [10, 20, 30, 40]."
    processor = composed.processor
    prompt = processor.apply_chat_template(_conversation(image, question), add_generation_prompt=True)
    assert prompt == _expected_prompt(composed.family, question, None)
    full = processor.apply_chat_template(_conversation(image, question, answer))
    assert full == _expected_prompt(composed.family, question, answer)


def test_assistant_mask_covers_exactly_the_reply_and_its_turn_end(composed):
    image = random_image(40, 90, seed=1)
    conversation = _conversation(image, "What is <region>?", "A cat [10, 20, 30, 40].")
    conversation += [{"role": "user", "content": "And <region>?"}, {"role": "assistant", "content": "A dog."}]
    outputs = composed.processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True,
        processor_kwargs={"regions": [(5, 5, 30, 20), (60, 30)]},
    )  # fmt: skip
    ids, mask = outputs["input_ids"][0], outputs["assistant_masks"][0].bool()
    edges = torch.diff(torch.cat([torch.tensor([0]), mask.int(), torch.tensor([0])]))
    spans = zip(torch.nonzero(edges == 1).flatten().tolist(), torch.nonzero(edges == -1).flatten().tolist())
    tokenizer = composed.processor.tokenizer
    replies = [tokenizer.decode(ids[start:end]) for start, end in spans]
    turn_end = FAMILIES[composed.family][2]
    if composed.family in SENTENCEPIECE_FAMILIES:  # the reply's first SentencePiece piece carries the space after ":"
        replies = [reply.removeprefix(" ") for reply in replies]
    assert replies == [f"A cat [10, 20, 30, 40].{turn_end}", f"A dog.{turn_end}"]
    assert outputs["region_counts"].tolist() == [2]


def test_forward_and_generate_with_an_image_and_a_region(composed):
    image = random_image(30, 80, seed=2)
    processor = composed.processor
    prompt = processor.apply_chat_template(_conversation(image, "What is <region>?"), add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, regions=[(10, 5, 40, 25)], return_tensors="pt",
                       add_special_tokens=False)  # fmt: skip
    rows, cols = inputs["image_grids"][0].tolist()
    num_image_tokens = int((inputs["input_ids"] == composed.model.config.image_token_id).sum())
    assert num_image_tokens == 4 + rows * cols * 4
    with torch.no_grad():
        output = composed.model(**inputs)
        generated = composed.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert torch.isfinite(output.logits).all() and output.region_hidden_states.shape[:2] == (1, 1)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    assert (generated[0, inputs["input_ids"].shape[1] :] != composed.model.config.image_token_id).all()


def test_a_family_without_ferret_template_needs_an_explicit_one(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    compose = load_script("compose_ferret_v2")
    clip, dinov2 = write_clip(tmp_path / "clip"), write_dinov2(tmp_path / "dinov2")
    tokenizer = bpe_tokenizer(["<unk>", "<s>", "</s>"], bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), **TEXT_KWARGS)).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    with pytest.raises(ValueError, match=r"'mistral'.*supported: llama"):
        compose.compose(clip, dinov2, tmp_path / "llm", tmp_path / "out")
    template = "{% for message in messages %}{{ message.content }}{% endfor %}"
    summary = compose.compose(clip, dinov2, tmp_path / "llm", tmp_path / "out", grids=["1x2"], chat_template=template)
    assert summary["chat_template"] == "custom" and summary["grids"] == ["1x2"]
    assert FerretProcessor.from_pretrained(tmp_path / "out").chat_template == template


def test_left_padded_batch_with_tiles_and_regions_equals_single_samples(composed):
    """Two different prompts (an image on different tile grids, one and two regions) padded on the left: each sample's
    logits on its real tokens equal its single-sample run. For Llama-2 the padding token is `<unk>`, set by
    composition (the tokenizer had none, and padding failed with "Asking to pad but the tokenizer does not have a
    padding token")."""
    processor = composed.processor
    tokenizer = processor.tokenizer
    images = [random_image(30, 80, seed=6), random_image(90, 40, seed=7)]
    questions = ["What is <region>?", "Compare <region> with <region>, in a few words please."]
    regions = [[(10, 5, 40, 25)], [(5, 10, 30, 60), (20, 50)]]
    prompts = [
        processor.apply_chat_template(_conversation(image, question), add_generation_prompt=True)
        for image, question in zip(images, questions)
    ]
    kwargs = dict(return_tensors="pt", add_special_tokens=False)
    batch = processor(images=images, text=prompts, regions=regions, padding=True, padding_side="left", **kwargs)
    if composed.family == "llama2":
        assert composed.llm_tokenizer.pad_token is None
        assert composed.summary["pad_token_set"] == "<unk>"
        assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == tokenizer.unk_token_id == 0
    assert composed.model.generation_config.pad_token_id == tokenizer.pad_token_id is not None
    assert batch["image_grids"].tolist()[0] != batch["image_grids"].tolist()[1]  # different tile grids
    assert min(rows * cols for rows, cols in batch["image_grids"].tolist()) > 1
    mask = batch["attention_mask"].bool()
    assert not mask.all() and (batch["input_ids"][~mask] == tokenizer.pad_token_id).all()
    with torch.no_grad():
        batched = composed.model(**batch).logits
        for row, (image, prompt, sample_regions) in enumerate(zip(images, prompts, regions)):
            single = processor(images=image, text=prompt, regions=[sample_regions], **kwargs)
            assert torch.equal(batch["input_ids"][row][mask[row]], single["input_ids"][0])
            logits = composed.model(**single).logits[0]
            assert (batched[row][mask[row]] - logits).abs().max() <= 1e-4


def test_no_context_or_vocabulary_warning_for_parts_that_fit(composed):
    assert not [text for text in composed.warnings if "max_position_embeddings" in text or "embedding matrix" in text]
    if composed.summary is not None:
        context = composed.summary["context"]
        assert context["max_position_embeddings"] == 512 and context["typical_prompt_tokens"] <= 512
        assert context["typical_prompt_text_tokens"] > 20 and context["image_tokens"] == 4 + 6 * 4  # 1x6 grid


# ---- padding token, tokens past the matrix, context length ---------------------------------------------------------


def test_pad_token_choice(tmp_path):
    compose = load_script("compose_ferret_v2")
    llama2 = AutoTokenizer.from_pretrained(write_llama2_tokenizer(tmp_path / "llama2"))
    assert llama2.pad_token is None and llama2.unk_token == "<unk>"
    assert compose._has_token(llama2, "<unk>") and not compose._has_token(llama2, "<image>")
    assert compose.set_pad_token(llama2, "</s>") == "<unk>" and llama2.pad_token_id == 0
    # No unk and the only end of text closes turns: nothing to reuse; a new <pad> only when asked.
    bare = bpe_tokenizer(["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    assert compose.set_pad_token(bare, "</s>") is None and bare.pad_token is None
    assert compose.set_pad_token(bare, "</s>", add_if_missing=True) == "<pad>"
    assert bare.pad_token_id == len(bare) - 1
    # A tokenizer that has one keeps it.
    qwen2 = bpe_tokenizer(FAMILIES["qwen2"][0], **FAMILIES["qwen2"][1])
    assert compose.set_pad_token(qwen2, "<|im_end|>") is None and qwen2.pad_token == "<|endoftext|>"


def test_a_tokenizer_without_unk_or_spare_end_of_text_gets_a_new_pad_row(tmp_path):
    compose = load_script("compose_ferret_v2")
    clip, dinov2 = write_clip(tmp_path / "clip"), write_dinov2(tmp_path / "dinov2")
    tokenizer = bpe_tokenizer(["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    size = len(tokenizer)
    torch.manual_seed(3)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=size, bos_token_id=0, eos_token_id=1, **TEXT_KWARGS))
    llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    summary = compose.compose(clip, dinov2, tmp_path / "llm", tmp_path / "out", grids=["1x2"])
    assert summary["pad_token_set"] == "<pad>"
    assert summary["added_tokens"] == {"<region_fea>": size, "<image>": size + 1, "<pad>": size + 2}
    model = FerretForConditionalGeneration.from_pretrained(tmp_path / "out")
    processor = FerretProcessor.from_pretrained(tmp_path / "out")
    assert processor.tokenizer.pad_token == "<pad>" and processor.tokenizer.pad_token_id == size + 2
    assert model.config.text_config.vocab_size == size + 3 and model.generation_config.pad_token_id == size + 2
    mean_row = llm.get_input_embeddings().weight.detach().mean(0)
    torch.testing.assert_close(model.get_input_embeddings().weight[size + 2], mean_row, rtol=0, atol=1e-6)
    assert model.lm_head.weight[size + 2].abs().sum() == 0


def test_tokenizer_tokens_past_the_language_models_matrix_are_named_and_get_rows(tmp_path):
    """A Llama-2 tokenizer with a `<pad>` added but a model never resized: 501 tokens, 500 rows."""
    compose = load_script("compose_ferret_v2")
    clip, dinov2 = write_clip(tmp_path / "clip"), write_dinov2(tmp_path / "dinov2")
    folder = write_llama2_tokenizer(tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(3)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **TEXT_KWARGS))
    llm.save_pretrained(folder)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(folder)
    with pytest.warns(UserWarning, match=r"501 tokens but its embedding matrix only 500 rows.*'<pad>' = 500") as record:
        summary = compose.compose(clip, dinov2, folder, tmp_path / "out", grids=["1x2"])
    assert "special tokens among them: ['<pad>']" in str(record[0].message)
    assert summary["tokens_past_the_language_models_matrix"] == {"<pad>": 500}
    assert summary["added_tokens"] == {"<region_fea>": 501, "<image>": 502} and summary["vocab_size"] == "500 -> 503"
    model = FerretForConditionalGeneration.from_pretrained(tmp_path / "out")
    mean_row = llm.get_input_embeddings().weight.detach().mean(0)
    for row in (500, 501, 502):
        torch.testing.assert_close(model.get_input_embeddings().weight[row], mean_row, rtol=0, atol=1e-6)
        assert model.lm_head.weight[row].abs().sum() == 0
    with torch.no_grad():  # every id of the tokenizer embeds
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 500, 501, 2]])).logits).all()


def test_check_tokenizer_fits_names_ids_without_rows():
    compose = load_script("compose_ferret_v2")
    tokenizer = bpe_tokenizer(["<s>", "</s>"], bos_token="<s>", eos_token="</s>")
    compose.add_ferret_tokens(tokenizer)
    size = len(tokenizer)
    compose.check_tokenizer_fits(tokenizer, size, {"<region_fea>": size - 2, "<image>": size - 1})
    with pytest.raises(ValueError, match=rf"\({size} tokens\).*\({size - 1} rows\).*'<image>': {size - 1}"):
        compose.check_tokenizer_fits(tokenizer, size - 1, {"<image>": size - 1})
    with pytest.raises(ValueError, match=rf"'<image>': \({size - 1}, 7\)"):
        compose.check_tokenizer_fits(tokenizer, size, {"<image>": 7})


def test_context_length_report_with_vicuna_v1_3_numbers():
    """CLIP-L/14-336 + DINOv2 patch 14: 576 tokens per view; Vicuna v1.3 has 2,048 positions; the Vicuna template
    with Ferret's system prompt and a one-region question is ~243 text tokens (the issue's 2x2 prompt: 3,123)."""
    compose = load_script("compose_ferret_v2")
    paper_grids = compose.parse_grids(None)
    report, message = compose.context_length_report(paper_grids, 576, 576, 243, 2048)
    assert report == {"largest_grid": "1x6", "image_tokens": 4032, "typical_prompt_text_tokens": 243,
                      "typical_prompt_tokens": 4275, "max_position_embeddings": 2048}  # fmt: skip
    for text in ("max_position_embeddings is 2048", "(1x6, 6 tiles) gives 4032 image tokens",
                 "576 global + 6 x 576 tile tokens", "4275 with a typical prompt", "243 text tokens",
                 "fit with that prompt: 1x1, 1x2, 2x1 (pass `--grids 1x1 1x2 2x1`)"):  # fmt: skip
        assert text in message, text
    report, message = compose.context_length_report([(2, 2)], 576, 576, 243, 2048)
    assert report["typical_prompt_tokens"] == 3123 and "No grid fits: even the smallest needs 3123 positions" in message
    _, message = compose.context_length_report(paper_grids, 576, 576, 243, 4096)  # Vicuna v1.5: 4,096 positions
    assert "1x5" in message.split("fit with that prompt: ")[1] and "2x3" not in message.split("fit with that prompt")[1]
    assert compose.context_length_report([(1, 2), (2, 1)], 576, 576, 243, 2048)[1] is None  # 1971 positions fit
    assert compose.context_length_report(paper_grids, 576, 576, 243, None)[1] is None  # no limit known


def test_composition_warns_when_the_largest_grid_exceeds_the_position_embeddings(tmp_path):
    compose = load_script("compose_ferret_v2")
    clip, dinov2 = write_clip(tmp_path / "clip"), write_dinov2(tmp_path / "dinov2")
    folder = write_llama2_tokenizer(tmp_path / "llm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    compose.add_ferret_tokens(tokenizer)
    text_tokens = compose.typical_prompt_tokens(tokenizer, VICUNA_CHAT_TEMPLATE)
    max_positions = 4 + 4 + text_tokens  # exactly the 1x1 grid's prompt (4 global + 4 tile tokens)
    kwargs = {**TEXT_KWARGS, "max_position_embeddings": max_positions}
    LlamaForCausalLM(LlamaConfig(vocab_size=500, bos_token_id=1, eos_token_id=2, **kwargs)).save_pretrained(folder)
    with pytest.warns(UserWarning, match="max_position_embeddings") as record:
        summary = compose.compose(clip, dinov2, folder, tmp_path / "out", grids=["1x1", "2x2", "1x3"])
    message = str(record[0].message)
    for text in (f"max_position_embeddings is {max_positions}", "(2x2, 4 tiles) gives 20 image tokens",
                 "4 global + 4 x 4 tile tokens", f"{20 + text_tokens} with a typical prompt",
                 f"({text_tokens} text tokens", "fit with that prompt: 1x1 (pass `--grids 1x1`)"):  # fmt: skip
        assert text in message, text
    assert summary["context"]["typical_prompt_tokens"] == 20 + text_tokens
    # The estimate is the real prompt: the same question about a square image (2x2 grid) through the processor.
    processor = FerretProcessor.from_pretrained(tmp_path / "out")
    image = random_image(1000, 1000, seed=8)
    question = compose.TYPICAL_QUESTION.replace("[120, 340, 560, 780] <region_fea>", "<region>")
    prompt = processor.apply_chat_template(_conversation(image, question), add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, regions=[(120, 340, 560, 780)], add_special_tokens=False)
    assert inputs["image_grids"][0].tolist() == [2, 2]
    assert len(inputs["input_ids"][0]) == 20 + text_tokens


# ---- chat_template_for ----------------------------------------------------------------------------------------------


def test_chat_template_choice_per_model_type():
    llama3 = bpe_tokenizer(FAMILIES["llama3"][0], **FAMILIES["llama3"][1])
    assert chat_template_for("llama", llama3) == LLAMA3_CHAT_TEMPLATE
    assert chat_template_for("llama") == VICUNA_CHAT_TEMPLATE == DEFAULT_CHAT_TEMPLATE
    assert "<|im_start|>" in chat_template_for("qwen2")
    assert chat_template_for("gemma") == chat_template_for("gemma2") == GEMMA_CHAT_TEMPLATE
    with pytest.raises(ValueError, match=r"'mistral'.*llama.*qwen2.*gemma"):
        chat_template_for("mistral")


def test_a_system_message_replaces_ferret_system_text():
    tokenizer = bpe_tokenizer(FAMILIES["qwen2"][0], **FAMILIES["qwen2"][1])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(messages, chat_template=chat_template_for("qwen2"), tokenize=False)
    assert rendered == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
