"""The image-classification job that ``scripts/run_image_classification.py`` runs: the rSkip PreAct-ResNet.

SGD with momentum and weight decay (He et al.'s recipe), He et al.'s step schedule (``multistep``) or cosine, the
CIFAR augmentation as batched torch ops, and a saved folder (model, image processor, ``results.json``, model card)
that ``pipeline("image-classification")`` loads. The loop, checkpoints and publication are the shared
:class:`~hf_rskip.training.job.TrainingJob`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .arguments import ImageDataArguments, ImageModelArguments, ImageTrainingArguments, parse_arguments
from .job import TrainingJob

#: Defaults for the built-in task (no data options): scikit-learn's 8x8 digits shown at 16x16 with a 2-pixel crop
#: padding (32x32 and 4 pixels, the CIFAR values, cost 4x the compute for nothing on these images).
BUILTIN_DEFAULTS: dict[str, Any] = dict(image_size=16, random_crop_padding=2)


def option_defaults(given: dict[str, Any]) -> dict[str, Any]:
    from .arguments import IMAGE_DATA_OPTIONS

    return {} if any(given.get(name) for name in IMAGE_DATA_OPTIONS) else dict(BUILTIN_DEFAULTS)


def parse_image_args(argv: list[str] | None = None) -> tuple[ImageModelArguments, ImageDataArguments,
                                                            ImageTrainingArguments]:
    """Parses ``run_image_classification.py`` options (or one JSON / YAML file of them)."""
    return parse_arguments(
        (ImageModelArguments, ImageDataArguments, ImageTrainingArguments), argv, defaults=option_defaults,
        prog="run_image_classification.py",
        description="Train an rSkip PreAct-ResNet for image classification and report accuracy. Options may also "
                    "be given as one .json or .yaml file. Without data options, scikit-learn's bundled digits are "
                    "used (and --image_size 16 --random_crop_padding 2 become the defaults).",
    )


def check_labels(labels: np.ndarray, num_labels: int, source: str, *, named: bool) -> None:
    """Labels must be class indices 0..K-1; when K comes from the labels themselves, every class must occur.

    Raises:
        ImageDataError: naming the source, what was found and what to do.
    """
    from ..data.images import ImageDataError

    found = np.unique(labels)
    if found.size and (found[0] < 0 or found[-1] >= num_labels):
        raise ImageDataError(f"{source}: labels range over {int(found[0])}..{int(found[-1])}, but there are "
                             f"{num_labels} classes (labels must be 0..{num_labels - 1})")
    if not named:
        missing = sorted(set(range(num_labels)) - set(found.tolist()))
        if missing:
            shown = ", ".join(str(int(v)) for v in found[:12]) + (", ..." if found.size > 12 else "")
            raise ImageDataError(
                f"{source}: the labels ({found.size} distinct values: {shown}) would make {num_labels} classes, "
                f"{len(missing)} of them without a single training image (a mistyped label?); labels must be "
                "0..K-1 with every class present, or pass --label_names to fix the classes")


class ImageClassificationJob(TrainingJob):
    """Trains and evaluates an rSkip PreAct-ResNet as ``run_image_classification.py`` describes."""

    script = "run_image_classification.py"
    task_name = "image-classification"

    model_args: ImageModelArguments
    data_args: ImageDataArguments
    args: ImageTrainingArguments

    def accelerator_kwargs(self) -> dict[str, Any]:
        from accelerate.utils import DistributedDataParallelKwargs

        # this package's models use every parameter (a pre_ln folder saved by 0.2 loads without its unused norms);
        # code shipped with a folder (--trust_remote_code) may not: a 0.2 pre_ln folder's own code builds them
        margs = self.model_args
        return {"kwargs_handlers": [DistributedDataParallelKwargs(
            find_unused_parameters=margs.model_name_or_path is not None and margs.trust_remote_code)]}

    def load_data(self) -> None:
        from ..data.images import (ImageDataError, load_digits_splits, load_hub_splits, load_image_folder,
                                   load_npz_split, train_eval_split)

        data = self.data_args
        names: list[str] | None = None
        held_out = None  # None: hold out part of train, after the labels are checked
        if data.dataset_name:
            train, held_out, names = load_hub_splits(
                data.dataset_name, dataset_config_name=data.dataset_config_name, image_column=data.image_column_name,
                label_column=data.label_column_name, image_size=data.image_size,
                train_val_split=data.train_val_split, cache_dir=data.cache_dir)
            info = {"dataset": data.dataset_name, "dataset_name": data.dataset_name,
                    "dataset_config": data.dataset_config_name}
        elif data.train_dir:
            train, names = load_image_folder(data.train_dir, image_size=data.image_size)
            if data.validation_dir:
                held_out, _ = load_image_folder(data.validation_dir, image_size=data.image_size, class_names=names)
            info = {"dataset": "imagefolder", "dataset_name": Path(data.train_dir).resolve().name,
                    "dataset_config": None}
        elif data.train_file:
            train = load_npz_split(data.train_file, data.train_image_key, data.train_label_key,
                                   image_size=data.image_size)
            if data.validation_file:
                held_out = load_npz_split(data.validation_file, data.validation_image_key, data.validation_label_key,
                                          image_size=data.image_size)
            info = {"dataset": Path(data.train_file).stem, "dataset_name": Path(data.train_file).stem,
                    "dataset_config": None}
        else:
            train, held_out, names = load_digits_splits(image_size=data.image_size)
            info = {"dataset": "scikit-learn digits",
                    "dataset_name": f"scikit-learn digits (8x8, shown at {data.image_size}x{data.image_size})",
                    "dataset_config": None}
        named = names is not None
        if data.label_names:
            given = [n.strip() for n in data.label_names.split(",")]
            if names is not None and len(given) != len(names):
                raise ImageDataError(f"--label_names: {len(given)} names but the data has {len(names)} classes {names}")
            names, named = given, True
        if names is None:
            names = [str(i) for i in range(int(train.labels.max()) + 1)]
        check_labels(train.labels, len(names), train.source, named=named)
        if held_out is not None:
            check_labels(held_out.labels, len(names), held_out.source, named=True)
        if held_out is None:
            train, held_out = train_eval_split(train, data.train_val_split, seed=0)
        if data.max_train_samples is not None and data.max_train_samples < len(train):
            order = np.random.default_rng(self.args.seed).permutation(len(train))[: data.max_train_samples]
            train = train.subset(np.sort(order))
        if data.max_eval_samples is not None and data.max_eval_samples < len(held_out):
            # a random subset: evaluation files may be sorted by class (the JPEG CIFAR-10 test set is)
            order = np.random.default_rng(self.args.seed).permutation(len(held_out))[: data.max_eval_samples]
            held_out = held_out.subset(np.sort(order))
        if train.image_size != held_out.image_size:
            raise ImageDataError(f"training images are {train.image_size} but evaluation images are "
                                 f"{held_out.image_size}; pass --image_size to resize both")
        info.update(train_samples=len(train), eval_samples=len(held_out), num_labels=len(names),
                    image_height=train.image_size[0], image_width=train.image_size[1],
                    eval_source=held_out.source, train_source=train.source)
        self.train_split, self.eval_split, self.names, self.data_info = train, held_out, names, info

    def build_model(self) -> nn.Module:
        from ..models import RSkipResNetForImageClassification

        margs = self.model_args
        id2label = dict(enumerate(self.names))
        label2id = {name: i for i, name in id2label.items()}
        if margs.model_name_or_path is not None:
            from transformers import AutoModelForImageClassification

            from safetensors import SafetensorError

            from .arguments import ArgumentError
            from .checkpointing import pretrained_load_problem

            try:
                model = AutoModelForImageClassification.from_pretrained(
                    margs.model_name_or_path, id2label=id2label, label2id=label2id,
                    ignore_mismatched_sizes=margs.ignore_mismatched_sizes, trust_remote_code=margs.trust_remote_code)
            except (OSError, ValueError, SafetensorError) as err:
                raise ArgumentError(f"--model_name_or_path {margs.model_name_or_path!r}: "
                                    f"{pretrained_load_problem(margs.model_name_or_path, err)}") from None
            return model.to(memory_format=torch.channels_last) if self.args.channels_last else model
        model = RSkipResNetForImageClassification(margs.fresh_config(id2label=id2label, label2id=label2id))
        return model.to(memory_format=torch.channels_last) if self.args.channels_last else model

    def describe(self, model: nn.Module) -> str:
        config = model.config
        return (f"PreAct-ResNet-{config.depth} {config.residual_scheme} λ={config.skip_lambda} "
                f"({config.residual_norm} norm): {model.num_parameters():,} parameters; {len(self.train_split)} "
                f"training / {len(self.eval_split)} evaluation images {self.train_split.image_size}, "
                f"{len(self.names)} classes")

    def frozen_options(self) -> dict[str, Any]:
        return {"label_names": self.names, "image_size": self.data_args.image_size}

    def save_artifacts(self, folder: Path) -> None:
        from ..data.images import build_image_processor

        build_image_processor(image_size=self.train_split.image_size[0], mean=self.args.image_mean,
                              std=self.args.image_std).save_pretrained(folder)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from .optim import build_optimizer

        args = self.args
        return build_optimizer(model, optimizer="sgd", learning_rate=args.learning_rate,
                               weight_decay=args.weight_decay, momentum=args.momentum, nesterov=args.nesterov)

    def train_dataloader(self, model: nn.Module) -> Any:
        from torch.utils.data import DataLoader, RandomSampler, TensorDataset

        images, labels = self.train_split.to_tensors()
        dataset = TensorDataset(images, labels)
        # Accelerate makes the RandomSampler seedable (seed + epoch); its own generator keeps the global RNG alone.
        generator = torch.Generator().manual_seed(self.args.seed)
        return DataLoader(dataset, batch_size=self.args.per_device_train_batch_size,
                          sampler=RandomSampler(dataset, generator=generator), generator=generator)

    def _eval_loader(self) -> Any:
        from torch.utils.data import DataLoader, TensorDataset

        images, labels = self.eval_split.to_tensors()
        return self.accelerator.prepare(DataLoader(TensorDataset(images, labels),
                                                   batch_size=self.args.per_device_eval_batch_size))

    def build_task(self, model: nn.Module) -> Any:
        from .tasks import ImageClassificationTask

        args = self.args
        self.eval_loader = self._eval_loader()
        return ImageClassificationTask(mean=args.image_mean, std=args.image_std,
                                       random_crop_padding=args.random_crop_padding,
                                       horizontal_flip=args.horizontal_flip, eval_dataloader=self.eval_loader,
                                       accelerator=self.accelerator, channels_last=args.channels_last)

    def final_evaluation(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        from .tasks import evaluate_classifier

        loader = getattr(self, "eval_loader", None) or self._eval_loader()
        results = dict(evaluate_classifier(model, loader, self.accelerator, mean=self.args.image_mean,
                                           std=self.args.image_std, channels_last=self.args.channels_last))
        config = self.accelerator.unwrap_model(model, keep_torch_compile=False).config
        results.update(depth=config.depth, hidden_sizes=list(config.hidden_sizes), block_norm=config.block_norm,
                       learning_rate=self.args.learning_rate, lr_scheduler_type=self.args.lr_scheduler_type,
                       per_device_train_batch_size=self.args.per_device_train_batch_size,
                       label_names=self.names, **self.data_info)
        self.log(f"eval_accuracy={results['eval_accuracy']:.4f} on {len(self.eval_split)} images")
        return results

    def write_model_card(self, folder: Path, results: dict[str, Any]) -> None:
        from ..modelcard import image_classification_card

        image_classification_card(folder, results, job=self)


def run_image_classification(argv: list[str] | None = None, *, command: str = "") -> dict[str, Any]:
    """Parses the options and runs the job (what ``scripts/run_image_classification.py`` does)."""
    model_args, data_args, training_args = parse_image_args(argv)
    return ImageClassificationJob(model_args, data_args, training_args, command=command).run()


__all__ = ["BUILTIN_DEFAULTS", "ImageClassificationJob", "check_labels", "option_defaults", "parse_image_args",
           "run_image_classification"]
