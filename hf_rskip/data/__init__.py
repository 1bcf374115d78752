"""The data layer: translation corpora, named recipes, the built-in task, image sets and batch samplers.

Nothing here imports the models or the training code; every problem with data raises :class:`DataError` (images:
its subclass :class:`ImageDataError`) naming the file, line, key or option at fault.
"""

from .builtin import BUILTIN_SOURCE_LANG, BUILTIN_TARGET_LANG, builtin_translation_task, reference_translate
from .errors import DataError
from .images import (
    CIFAR10_LABELS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarAugment,
    ImageDataError,
    ImageSplit,
    build_image_processor,
    normalize_images,
)
from .recipes import DATASET_RECIPES, load_recipe, recipe_hparams, shared_data_dir
from .samplers import TokenBatchSampler
from .translation import (
    SPLITS,
    clean_pairs,
    load_parallel_file,
    load_translation_datasets,
    special_token_ids,
    token_lengths,
    tokenize_pairs,
    train_tokenizer,
)

__all__ = [
    "BUILTIN_SOURCE_LANG",
    "BUILTIN_TARGET_LANG",
    "CIFAR10_LABELS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarAugment",
    "DATASET_RECIPES",
    "DataError",
    "ImageDataError",
    "ImageSplit",
    "SPLITS",
    "TokenBatchSampler",
    "build_image_processor",
    "builtin_translation_task",
    "clean_pairs",
    "load_parallel_file",
    "load_recipe",
    "load_translation_datasets",
    "normalize_images",
    "recipe_hparams",
    "reference_translate",
    "shared_data_dir",
    "special_token_ids",
    "token_lengths",
    "tokenize_pairs",
    "train_tokenizer",
]
