"""hf_rskip: the residual schemes of Liu et al. (COLING 2020) as Hugging Face Transformers models."""

from .configuration_rskip import RSkipConfig
from .residual import RESIDUAL_SCHEMES

__version__ = "0.1.0"
