"""transformers-native Ferret: refer (points, boxes, free-form regions) and ground (boxes in text).

Importing this package registers every Ferret class with transformers' Auto classes.
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
# package is not installed (see FerretPreTrainedModel.save_pretrained).
FerretConfig.register_for_auto_class()
FerretForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
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
