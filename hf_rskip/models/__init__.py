"""The models: the residual schemes (``residual``), the Marian-style encoder-decoder (``*_rskip``) and the
PreAct-ResNet (``*_rskip_resnet``).

Each family is a ``configuration_*`` / ``modeling_*`` pair that imports only ``residual`` and transformers, so
``save_pretrained`` can copy a family's files (same-folder imports only) into a folder that loads with
``trust_remote_code=True`` where this package is absent. The families never import each other.
"""

from .configuration_rskip import TEXT_PRESETS, RSkipConfig
from .configuration_rskip_resnet import RESNET_PRESETS, RSkipResNetConfig
from .modeling_rskip import RSkipForConditionalGeneration, RSkipModel, RSkipPreTrainedModel
from .modeling_rskip_resnet import (
    RSkipResNetForImageClassification,
    RSkipResNetModel,
    RSkipResNetPreTrainedModel,
)
from .residual import RESIDUAL_SCHEMES, build_final_norm, build_residual


def register_auto_classes() -> None:
    """Registers every config and model with the Auto classes, and for ``save_pretrained``'s ``auto_map``."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForSeq2SeqLM

    AutoConfig.register(RSkipConfig.model_type, RSkipConfig, exist_ok=True)
    AutoModel.register(RSkipConfig, RSkipModel, exist_ok=True)
    AutoModelForSeq2SeqLM.register(RSkipConfig, RSkipForConditionalGeneration, exist_ok=True)
    RSkipConfig.register_for_auto_class()
    RSkipModel.register_for_auto_class("AutoModel")
    RSkipForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

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
    "build_final_norm",
    "build_residual",
    "register_auto_classes",
]
