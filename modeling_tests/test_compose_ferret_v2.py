"""conversion/compose_ferret_v2.py: a Ferret-v2 from tiny random CLIP, DINOv2 and language models of four families.

Everything is built offline in temporary folders: the parts with `save_pretrained`, byte-level BPE tokenizers with
each family's special tokens trained in memory, and the tiny SentencePiece tokenizer of the parity fixtures for
Vicuna.
"""

import importlib.util
import json
import shutil
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
from transformers_ferret.processing_ferret import DEFAULT_CHAT_TEMPLATE, FERRET_SYSTEM_PROMPT

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
}
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


def write_llm(folder: Path, family: str) -> Path:
    """A tiny causal LM of `family` with its tokenizer (and, for Llama-3, an instruct-style generation config)."""
    torch.manual_seed(3)
    if family == "vicuna":
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(PARITY / "ferret_tiny" / name, folder / name)
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
        if family == "llama3":  # stage-I projector in LLaVA's mm_projector.bin layout, through the command line
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
        self.clip = CLIPVisionModel.from_pretrained(self.clip_dir).eval()
        self.dinov2 = Dinov2Model.from_pretrained(self.dinov2_dir).eval()
        self.llm = AutoModelForCausalLM.from_pretrained(self.llm_dir).eval()
        self.llm_tokenizer = AutoTokenizer.from_pretrained(self.llm_dir)
        self.model = FerretForConditionalGeneration.from_pretrained(self.output_dir).eval()
        self.processor = FerretProcessor.from_pretrained(self.output_dir)


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


def _expected_prompt(family: str, question: str, answer: str | None) -> str:
    """The family's rendering of `[user: <image> + question, (assistant: answer)]` with Ferret's system text."""
    if family == "vicuna":
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
    if composed.family == "vicuna":  # SentencePiece: the reply's first piece carries the space after "ASSISTANT:"
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
