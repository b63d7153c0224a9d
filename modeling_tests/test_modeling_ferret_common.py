"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`, 5.25.0) run against Ferret.

The mixins are vendored unchanged under `transformers_common/` (see its README). As in transformers' LLaVA tests,
a tiny model tester builds a config and inputs. `FerretModelTest` runs every common test on image + text inputs;
`FerretModelWithRegionsTest` runs them again with region tokens, `region_points` and `region_counts` (samples with
2, 1 and 0 regions), so the forward passes, batch slicing, save/load, training, ... of the common tests also go
through the region sampler. Both also run the generation tests at the end of `FerretModelTest`, written here
because transformers' `GenerationTesterMixin` (tests/generation/test_utils.py) is not in the 5.25.0 source
distribution and cannot be vendored unchanged.

Skips and expected failures are only those of transformers' own LLaVA / LLaVA-NeXT model tests, with their reasons
quoted (taken from those files at v5.15.0, the newest version readable offline: the 5.25.0 sdist ships no model
tests).
"""

import contextlib
import copy
import unittest
import warnings
from unittest import mock

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig
from transformers.models.auto import modeling_auto
from transformers.testing_utils import torch_device

from transformers_ferret import FerretConfig, FerretForConditionalGeneration, FerretModel

with warnings.catch_warnings():
    # transformers registers its custom marks (flash_attn_test, torch_compile_test, ...) in its own conftest
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    from transformers_common.tests.generation.test_utils import GenerationTesterMixin
    from transformers_common.tests.test_configuration_common import ConfigTester
    from transformers_common.tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


class FerretModelTester:
    """Tiny Ferret config and inputs: every sample has one image (its `(image_size / patch_size)^2` patch tokens
    first, CLS dropped). With `use_regions`, sample `b` also has `region_counts[b]` region tokens in its text, and slot
    `r` of `region_points[b]` (`[batch, max_regions, num_points, 2]` in [0, 1)) belongs to its `r`-th one."""

    def __init__(
        self,
        parent,
        batch_size=3,
        text_length=10,
        image_size=28,
        patch_size=14,
        num_channels=3,
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        image_token_index=3,
        region_token_index=5,
        pad_token_id=1,
        region_counts=(2, 1, 0),
        region_positions=(3, 6),  # within the text, away from its last two tokens
        num_points=16,
        use_regions=False,
        is_training=True,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        # small ids, like LLaVA's tester, so they survive `test_resize_tokens_embeddings` clamping ids to a smaller
        # vocab; the region id is above the ids [0, 5) some common tests draw for extra rows of text-only input
        self.image_token_index = image_token_index
        self.region_token_index = region_token_index
        self.pad_token_id = pad_token_id
        self.use_regions = use_regions
        self.vision_feature_layer = -2  # Ferret's: the second-to-last layer
        self.region_counts = list(region_counts)[:batch_size] if use_regions else [0] * batch_size
        self.region_positions = region_positions
        self.num_points = num_points
        self.is_training = is_training
        self.num_image_tokens = (image_size // patch_size) ** 2
        self.seq_length = self.num_image_tokens + text_length
        self.encoder_seq_length = self.seq_length

    def get_config(self):
        vision_config = CLIPVisionConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            projection_dim=16,
        )
        text_config = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            max_position_embeddings=512,
            pad_token_id=self.pad_token_id,
            bos_token_id=0,
            eos_token_id=2,
        )
        return FerretConfig(
            vision_config=vision_config.to_dict(),
            text_config=text_config.to_dict(),
            image_token_index=self.image_token_index,
            region_token_index=self.region_token_index,
            vision_feature_layer=self.vision_feature_layer,
            sampler_num_init_points=self.num_points,
            sampler_num_sub_points=[8, 4],
            sampler_num_neighbors=[4, 4],
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        first_text_id = max(self.image_token_index, self.region_token_index, self.pad_token_id) + 1
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - first_text_id) + first_text_id
        input_ids[:, : self.num_image_tokens] = self.image_token_index
        inputs_dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
        }
        if self.use_regions:
            max_regions = max(max(self.region_counts), 1)
            for row, count in enumerate(self.region_counts):
                for position in self.region_positions[:count]:
                    input_ids[row, self.num_image_tokens + position] = self.region_token_index
            corner = floats_tensor([self.batch_size, max_regions, 1, 2], scale=0.5)
            size = 0.1 + floats_tensor([self.batch_size, max_regions, 1, 2], scale=0.4)
            inputs_dict["region_points"] = corner + size * floats_tensor(
                [self.batch_size, max_regions, self.num_points, 2]
            )
            inputs_dict["region_counts"] = torch.tensor(self.region_counts, dtype=torch.long, device=torch_device)
        return config, inputs_dict


class FerretModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (FerretModel, FerretForConditionalGeneration)
    _is_composite = True

    def setUp(self):
        # transformers' common tests tell base models from models with a head (which get `labels`, train, ...) by
        # the class names in its static Auto mappings; Ferret registers its classes at import instead, so list them
        # there as LLaVA is listed, for the duration of each test
        for mapping, name in (
            (modeling_auto.MODEL_MAPPING_NAMES, "FerretModel"),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "FerretForConditionalGeneration"),
        ):
            patcher = mock.patch.dict(mapping, {FerretConfig.model_type: name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = FerretModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=FerretConfig,
            has_text_modality=False,
            common_properties=["image_token_index", "region_token_index", "vision_feature_layer"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    # ---- skips and expected failures taken from transformers' LLaVA / LLaVA-NeXT tests ------------------------

    # Upstream LLaVA marks these xfail ("This architecture seems to not compute gradients for some layer."). What
    # gets no gradient here is exactly what Ferret never reads: with vision_feature_layer=-2 the vision tower's last
    # layer, and always CLIP's post-layernorm (it only feeds the pooled output). The checks run on a config that reads
    # the last layer, with the post-layernorm frozen (the upstream check skips frozen parameters), and must pass.
    @contextlib.contextmanager
    def _every_read_layer_trains(self):
        self.model_tester.vision_feature_layer = -1
        original_post_init = FerretModel.post_init

        def post_init(model):
            original_post_init(model)
            if isinstance(model, FerretModel):
                model.vision_tower.post_layernorm.requires_grad_(False)

        with mock.patch.object(FerretModel, "post_init", post_init):
            yield

    def test_training_gradient_checkpointing(self):
        with self._every_read_layer_trains():
            super().test_training_gradient_checkpointing()

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        with self._every_read_layer_trains():
            super().test_training_gradient_checkpointing_use_reentrant_false()

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        with self._every_read_layer_trains():
            super().test_training_gradient_checkpointing_use_reentrant_true()

    @unittest.skip(
        "VLMs need lots of steps to prepare images/mask correctly to get pad-free inputs. "
        "Can be tested as part of LLM test"
    )
    def test_flash_attention_2_padding_matches_padding_free_with_position_ids(self):
        pass

    # ---- generation (in place of transformers' GenerationTesterMixin) -----------------------------------------

    max_new_tokens = 3

    def _generation_model_and_inputs(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        model = FerretForConditionalGeneration(config).to(torch_device).eval()
        # no early stop, and never generate the image / region placeholders (as transformers' generation tests do)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = self.model_tester.pad_token_id
        bad_words = [[self.model_tester.image_token_index], [self.model_tester.region_token_index]]
        return model, inputs_dict, {"bad_words_ids": bad_words, "max_new_tokens": self.max_new_tokens}

    def test_greedy_generate_matches_step_by_step_argmax(self):
        model, inputs, kwargs = self._generation_model_and_inputs()
        with torch.no_grad():
            generated = model.generate(**inputs, do_sample=False, **kwargs)
            sequence = inputs["input_ids"]
            mask = inputs["attention_mask"]
            banned = [self.model_tester.image_token_index, self.model_tester.region_token_index]
            for _ in range(self.max_new_tokens):
                step_inputs = {**inputs, "input_ids": sequence, "attention_mask": mask}
                logits = model(**step_inputs).logits[:, -1]
                logits[:, banned] = -float("inf")
                sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=-1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        self.assertTrue(torch.equal(generated, sequence))

    def test_generate_with_and_without_cache_match(self):
        model, inputs, kwargs = self._generation_model_and_inputs()
        with torch.no_grad():
            with_cache = model.generate(**inputs, do_sample=False, use_cache=True, **kwargs)
            without_cache = model.generate(**inputs, do_sample=False, use_cache=False, **kwargs)
        self.assertTrue(torch.equal(with_cache, without_cache))

    def test_sample_generate_is_seeded(self):
        model, inputs, kwargs = self._generation_model_and_inputs()
        outputs = []
        for _ in range(2):
            torch.manual_seed(0)
            with torch.no_grad():
                outputs.append(model.generate(**inputs, do_sample=True, top_k=10, num_return_sequences=2, **kwargs))
        batch_size, prompt_length = inputs["input_ids"].shape
        self.assertEqual(tuple(outputs[0].shape), (2 * batch_size, prompt_length + self.max_new_tokens))
        self.assertTrue(torch.equal(outputs[0], outputs[1]))

    def test_beam_search_generate_with_num_return_sequences(self):
        model, inputs, kwargs = self._generation_model_and_inputs()
        with torch.no_grad():
            output = model.generate(
                **inputs, do_sample=False, num_beams=2, num_return_sequences=2, return_dict_in_generate=True,
                output_scores=True, **kwargs,
            )  # fmt: skip
        batch_size, prompt_length = inputs["input_ids"].shape
        self.assertEqual(tuple(output.sequences.shape), (2 * batch_size, prompt_length + self.max_new_tokens))
        self.assertEqual(tuple(output.sequences_scores.shape), (2 * batch_size,))
        self.assertTrue(torch.equal(output.sequences[:, :prompt_length], inputs["input_ids"].repeat_interleave(2, 0)))

    def test_left_padding_compatibility(self):
        """Next-token logits do not change when the prompts are left-padded (with the padding masked)."""
        model, inputs, _ = self._generation_model_and_inputs()
        pad_length = 4
        padded = copy.copy(inputs)
        padding = torch.full_like(inputs["input_ids"][:, :pad_length], self.model_tester.pad_token_id)
        padded["input_ids"] = torch.cat([padding, inputs["input_ids"]], dim=-1)
        padded["attention_mask"] = torch.cat([torch.zeros_like(padding), inputs["attention_mask"]], dim=-1)
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1]
            padded_logits = model(**padded).logits[:, -1]
        torch.testing.assert_close(padded_logits, logits, rtol=1e-5, atol=1e-5)

    def test_generate_from_inputs_embeds(self):
        """Generating from `inputs_embeds` (regions found by comparing embeddings) equals generating from ids."""
        model, inputs, kwargs = self._generation_model_and_inputs()
        embeds_inputs = {key: value for key, value in inputs.items() if key != "input_ids"}
        embeds_inputs["inputs_embeds"] = model.get_input_embeddings()(inputs["input_ids"])
        with torch.no_grad():
            from_ids = model.generate(**inputs, do_sample=False, **kwargs)
            from_embeds = model.generate(**embeds_inputs, do_sample=False, **kwargs)
        self.assertTrue(torch.equal(from_embeds, from_ids[:, inputs["input_ids"].shape[1] :]))


class FerretModelWithRegionsTest(FerretModelTest):
    """The same common and generation tests with region inputs: samples with 2, 1 and 0 regions, so every forward
    pass (and every batch slice the common tests take) also runs the region sampler and its input checks.

    Not repeated here: `test_config`, `test_get_image_features_*` (they pass `pixel_values` only), and the common
    tests that replace the tester's inputs with text-only ids of their own (`test_eager_matches_sdpa_inference_*`,
    `test_model_rope_scaling_from_config_*`), which would only repeat what `FerretModelTest` runs.
    """

    def setUp(self):
        super().setUp()
        self.model_tester = FerretModelTester(self, use_regions=True)

    def test_region_inputs_reach_the_model(self):
        """The tester's region inputs are consumed: region features replace the region-token embeddings."""
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = FerretModel(config).to(torch_device).eval()
        with torch.no_grad():
            outputs = model(**inputs_dict)
        expected_shape = (*inputs_dict["region_points"].shape[:2], config.text_config.hidden_size)
        self.assertEqual(tuple(outputs.region_hidden_states.shape), expected_shape)


for _name in dir(FerretModelWithRegionsTest):
    if _name.startswith(
        ("test_config", "test_get_image_features", "test_eager_matches_sdpa_inference", "test_model_rope_scaling")
    ):
        setattr(FerretModelWithRegionsTest, _name, None)  # not collected: see the class docstring
