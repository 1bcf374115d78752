"""hf_rskip: the residual schemes of Liu et al. (COLING 2020) as Hugging Face Transformers models.

The package is layered: ``hf_rskip.models`` (the scheme module and the model families), ``hf_rskip.data``
(corpora, recipes, samplers), ``hf_rskip.training`` (one Accelerate loop driven by task objects, checkpoints,
typed arguments), and beside them ``evaluation``, ``diagnostics``, ``pipeline``, ``modelcard`` and ``hub``.

Importing the package registers its configs and models with the transformers Auto classes (and for
``save_pretrained``, with ``register_for_auto_class``, so saved folders load with ``trust_remote_code=True``
where this package is not installed) and the ``"rskip-translation"`` pipeline task.
"""

from .models import (
    RESIDUAL_SCHEMES,
    RESNET_PRESETS,
    TEXT_PRESETS,
    RSkipConfig,
    RSkipForConditionalGeneration,
    RSkipModel,
    RSkipPreTrainedModel,
    RSkipResNetConfig,
    RSkipResNetForImageClassification,
    RSkipResNetModel,
    RSkipResNetPreTrainedModel,
    RSkipT5Config,
    RSkipT5EncoderModel,
    RSkipT5ForConditionalGeneration,
    RSkipT5Model,
    RSkipT5PreTrainedModel,
    T5_PRESETS,
    build_final_norm,
    build_residual,
    convert_to_rskip,
    register_auto_classes,
)
from .pipeline import RSkipTranslationPipeline

__version__ = "0.2.0"

register_auto_classes()

__all__ = [
    "RESIDUAL_SCHEMES",
    "TEXT_PRESETS",
    "RSkipConfig",
    "RSkipModel",
    "RSkipPreTrainedModel",
    "RSkipForConditionalGeneration",
    "RSkipTranslationPipeline",
    "T5_PRESETS",
    "RSkipT5Config",
    "RSkipT5Model",
    "RSkipT5PreTrainedModel",
    "RSkipT5ForConditionalGeneration",
    "RSkipT5EncoderModel",
    "convert_to_rskip",
    "RESNET_PRESETS",
    "RSkipResNetConfig",
    "RSkipResNetModel",
    "RSkipResNetPreTrainedModel",
    "RSkipResNetForImageClassification",
    "build_residual",
    "build_final_norm",
    "register_auto_classes",
]
