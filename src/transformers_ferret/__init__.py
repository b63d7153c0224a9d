"""transformers-native Ferret: refer (points, boxes, free-form regions) and ground (boxes in text).

Importing this package registers every Ferret class with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
)

from .configuration_ferret import FerretConfig
from .modeling_ferret import FerretForConditionalGeneration, FerretModel, FerretPreTrainedModel
from .modeling_ferret_sampler import FerretRegionSampler

AutoConfig.register(FerretConfig.model_type, FerretConfig, exist_ok=True)
AutoModel.register(FerretConfig, FerretModel, exist_ok=True)
AutoModelForImageTextToText.register(FerretConfig, FerretForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(FerretConfig, FerretForConditionalGeneration, exist_ok=True)

__all__ = [
    "FerretConfig",
    "FerretForConditionalGeneration",
    "FerretModel",
    "FerretPreTrainedModel",
    "FerretRegionSampler",
]
