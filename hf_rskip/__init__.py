"""hf_rskip: the residual schemes of Liu et al. (COLING 2020) as Hugging Face Transformers models.

Importing the package registers its configs and models with the transformers Auto classes (and for
`save_pretrained`, with `register_for_auto_class`, so saved folders load with `trust_remote_code=True`
where this package is not installed) and the `"rskip-translation"` pipeline task.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_rskip import TEXT_PRESETS, RSkipConfig
from .configuration_rskip_resnet import RESNET_PRESETS, RSkipResNetConfig
from .modeling_rskip import RSkipForConditionalGeneration, RSkipModel, RSkipPreTrainedModel
from .modeling_rskip_resnet import (
    RSkipResNetForImageClassification,
    RSkipResNetModel,
    RSkipResNetPreTrainedModel,
)
from .modeling_rskip_resnet import register_auto_classes as _register_resnet
from .pipeline import RSkipTranslationPipeline
from .residual import RESIDUAL_SCHEMES, build_final_norm, build_residual

__version__ = "0.1.0"

AutoConfig.register(RSkipConfig.model_type, RSkipConfig, exist_ok=True)
AutoModel.register(RSkipConfig, RSkipModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RSkipConfig, RSkipForConditionalGeneration, exist_ok=True)
RSkipConfig.register_for_auto_class()
RSkipModel.register_for_auto_class("AutoModel")
RSkipForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
_register_resnet()  # AutoConfig / AutoModel / AutoModelForImageClassification, and auto_map for remote code

__all__ = [
    "RESIDUAL_SCHEMES",
    "TEXT_PRESETS",
    "RSkipConfig",
    "RSkipModel",
    "RSkipPreTrainedModel",
    "RSkipForConditionalGeneration",
    "RSkipTranslationPipeline",
    "RESNET_PRESETS",
    "RSkipResNetConfig",
    "RSkipResNetModel",
    "RSkipResNetPreTrainedModel",
    "RSkipResNetForImageClassification",
    "build_residual",
    "build_final_norm",
]
