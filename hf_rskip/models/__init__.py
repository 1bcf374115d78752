"""The models: the residual schemes (``residual``), the Marian-style encoder-decoder (``*_rskip``), the T5-style
encoder-decoder (``*_rskip_t5``), the PreAct-ResNet (``*_rskip_resnet``) and ``convert_to_rskip`` (``conversion``).

Each family is a ``configuration_*`` / ``modeling_*`` pair that imports only ``residual`` and transformers, so
``save_pretrained`` can copy a family's files (same-folder imports only) into a folder that loads with
``trust_remote_code=True`` where this package is absent. The families never import each other; ``conversion`` sits
above them and imports both text families.
"""

from .configuration_rskip import TEXT_PRESETS, RSkipConfig
from .configuration_rskip_resnet import RESNET_PRESETS, RSkipResNetConfig
from .configuration_rskip_t5 import T5_PRESETS, RSkipT5Config
from .conversion import convert_to_rskip
from .modeling_rskip import RSkipForConditionalGeneration, RSkipModel, RSkipPreTrainedModel
from .modeling_rskip_resnet import (
    RSkipResNetForImageClassification,
    RSkipResNetModel,
    RSkipResNetPreTrainedModel,
)
from .modeling_rskip_t5 import (
    RSkipT5EncoderModel,
    RSkipT5ForConditionalGeneration,
    RSkipT5Model,
    RSkipT5PreTrainedModel,
)
from .residual import RESIDUAL_SCHEMES, build_final_norm, build_residual


def register_auto_classes() -> None:
    """Registers every config and model with the Auto classes, and for ``save_pretrained``'s ``auto_map``."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSeq2SeqLM,
        AutoModelForTextEncoding,
    )

    AutoConfig.register(RSkipConfig.model_type, RSkipConfig, exist_ok=True)
    AutoModel.register(RSkipConfig, RSkipModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(RSkipConfig, RSkipForConditionalGeneration, exist_ok=True)
    RSkipConfig.register_for_auto_class()
    RSkipModel.register_for_auto_class("AutoModel")
    RSkipForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

    AutoConfig.register(RSkipT5Config.model_type, RSkipT5Config, exist_ok=True)
    AutoModel.register(RSkipT5Config, RSkipT5Model, exist_ok=True)
    AutoModelForSeq2SeqLM.register(RSkipT5Config, RSkipT5ForConditionalGeneration, exist_ok=True)
    AutoModelForTextEncoding.register(RSkipT5Config, RSkipT5EncoderModel, exist_ok=True)
    RSkipT5Config.register_for_auto_class()
    RSkipT5Model.register_for_auto_class("AutoModel")
    RSkipT5ForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
    RSkipT5EncoderModel.register_for_auto_class("AutoModelForTextEncoding")

    AutoConfig.register(RSkipResNetConfig.model_type, RSkipResNetConfig, exist_ok=True)
    AutoModel.register(RSkipResNetConfig, RSkipResNetModel, exist_ok=True)
    AutoModelForImageClassification.register(RSkipResNetConfig, RSkipResNetForImageClassification, exist_ok=True)
    RSkipResNetConfig.register_for_auto_class("AutoConfig")
    RSkipResNetModel.register_for_auto_class("AutoModel")
    RSkipResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")


__all__ = [
    "RESIDUAL_SCHEMES",
    "RESNET_PRESETS",
    "TEXT_PRESETS",
    "RSkipConfig",
    "RSkipForConditionalGeneration",
    "RSkipModel",
    "RSkipPreTrainedModel",
    "RSkipResNetConfig",
    "RSkipResNetForImageClassification",
    "RSkipResNetModel",
    "RSkipResNetPreTrainedModel",
    "RSkipT5Config",
    "RSkipT5EncoderModel",
    "RSkipT5ForConditionalGeneration",
    "RSkipT5Model",
    "RSkipT5PreTrainedModel",
    "T5_PRESETS",
    "build_final_norm",
    "build_residual",
    "convert_to_rskip",
    "register_auto_classes",
]
