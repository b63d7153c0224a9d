# Copyright 2026 The transformers-ferret authors.
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
"""transformers-native Ferret: refer (points, boxes, free-form regions) and ground (boxes in text).

Importing this package registers every Ferret class with transformers' Auto classes and loads the model core only:
configuration, modeling (with the region sampler and Ferret-v2's tile packing), image processing, processing, chat
templates and the coordinate grid. Training (`transformers_ferret.training`), evaluation
(`transformers_ferret.evaluation`), the synthetic data (`transformers_ferret.synthetic_shapes`), the drawing helpers
(`transformers_ferret.visualization`) and the converters' helpers (`transformers_ferret.conversion`) are imported
where they are used.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .configuration_ferret import FerretConfig
from .modeling_ferret import FerretForConditionalGeneration, FerretModel, FerretPreTrainedModel
from .image_processing_ferret import FerretImageProcessorPil
from .modeling_ferret_sampler import FerretRegionSampler
from .processing_ferret import FerretProcessor

AutoConfig.register(FerretConfig.model_type, FerretConfig, exist_ok=True)
AutoModel.register(FerretConfig, FerretModel, exist_ok=True)
AutoModelForImageTextToText.register(FerretConfig, FerretForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(FerretConfig, FerretForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(FerretConfig, image_processor_classes={"pil": FerretImageProcessorPil}, exist_ok=True)
AutoProcessor.register(FerretConfig, FerretProcessor, exist_ok=True)

# Saved folders carry their code and a complete auto_map, so they load with `trust_remote_code=True` where this
# package is not installed. The model classes register themselves only while they save (see
# FerretPreTrainedModel.save_pretrained): a registered model class counts as remote code at every generation step.
FerretConfig.register_for_auto_class()
FerretImageProcessorPil.register_for_auto_class("AutoImageProcessor")
FerretProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "FerretConfig",
    "FerretForConditionalGeneration",
    "FerretImageProcessorPil",
    "FerretModel",
    "FerretPreTrainedModel",
    "FerretProcessor",
    "FerretRegionSampler",
]
