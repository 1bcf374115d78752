"""Training the rSkip PreAct-ResNet for image classification with Accelerate.

What ``scripts/run_image_classification.py`` runs: SGD with momentum and weight decay (He et al.'s recipe), the
step schedule of He et al. or a cosine one, the CIFAR augmentation as batched torch ops, mixed precision,
crash-safe checkpoints (:mod:`hf_rskip.checkpointing`) with an exact resume, a progress bar with images/s, accuracy
on the evaluation set, and a saved folder (model, image processor, ``results.json``, model card) that
``pipeline("image-classification")`` loads.

Exact resume (same weights as an uninterrupted run, same seed, CPU): a checkpoint holds model, optimizer, scheduler
and RNG states (Accelerate's ``save_state``) plus :class:`ImageLoopState`. The training order comes from
:class:`EpochShuffleSampler` (a permutation per epoch from ``seed + epoch``), the data loader draws its worker seed
from its own generator, augmentation draws from the restored global RNG, and evaluation runs under a forked RNG.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from .checkpointing import ResumableState, list_checkpoints, load_checkpoint, save_checkpoint
from .diagnostics import GradNormLogger, grad_norm_option_problem
from .vision_data import CifarAugment, normalize_images

logger = logging.getLogger(__name__)

LR_SCHEDULES: tuple[str, ...] = ("he", "cosine", "constant")
"""``lr_scheduler_type`` values: ``he`` divides the rate by 10 at 50% and 75% of training (He et al. 2016: at 32k
and 48k of 64k iterations), ``cosine`` decays it to 0 along a half cosine, ``constant`` keeps it."""


# --------------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------------


def build_sgd(
    model: nn.Module,
    *,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> torch.optim.SGD:
    """SGD with momentum, weight decay on conv and linear weights only (``p.ndim >= 2``).

    Norm gains and biases and a learned λ are not decayed; deciding by shape cannot miss rSkip's extra norms.

    Args:
        model: the model whose trainable parameters are optimized.
        learning_rate: the peak learning rate (0.1 for batch 128 in He et al.).
        momentum: the momentum (0.9).
        weight_decay: L2 weight decay for ``ndim >= 2`` parameters (1e-4 in He et al.).
        nesterov: Nesterov momentum.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate={learning_rate!r} must be > 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov and momentum > 0)


def lr_factor(step: int, *, schedule: str, num_training_steps: int, num_warmup_steps: int = 0) -> float:
    """The multiplier of the peak learning rate for the update after ``step`` optimizer steps.

    Args:
        step: optimizer steps done (0 for the first update).
        schedule: one of :data:`LR_SCHEDULES`.
        num_training_steps: total optimizer steps.
        num_warmup_steps: steps of linear warm-up from ``1 / num_warmup_steps`` of the peak.
    """
    if step < num_warmup_steps:
        return (step + 1) / num_warmup_steps
    if schedule == "he":
        return 0.1 ** sum(step >= int(fraction * num_training_steps) for fraction in (0.5, 0.75))
    if schedule == "cosine":
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, num_training_steps: int, num_warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor`, stepped once per optimizer step.

    Args:
        optimizer: the optimizer.
        schedule: ``"he"``, ``"cosine"`` or ``"constant"`` (see :data:`LR_SCHEDULES`).
        num_training_steps: total optimizer steps.
        num_warmup_steps: linear warm-up steps (He et al. warm ResNet-110 up for about 400 iterations).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_scheduler_type={schedule!r} is unknown; accepted: {list(LR_SCHEDULES)}")
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps={num_warmup_steps!r} must be >= 0")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, schedule=schedule, num_training_steps=num_training_steps,
                               num_warmup_steps=num_warmup_steps),
    )


# --------------------------------------------------------------------------------------------------
# Data order and evaluation
# --------------------------------------------------------------------------------------------------


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of ``range(num_samples)`` each epoch, drawn from ``seed + epoch`` only.

    The order of an epoch depends on nothing else (not on the global RNG, not on how many epochs ran in this
    process), so a resumed run sees the same batches as an uninterrupted one.

    Args:
        num_samples: dataset size.
        seed: base seed.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    dataloader: Any,
    accelerator: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    prefix: str = "eval",
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over a prepared loader of ``(uint8 images (B, C, H, W), labels (B,))``.

    Every process runs its shard; ``gather_for_metrics`` drops the samples Accelerate repeats to even out the last
    batch, so the counts are exact. The model is left in the mode it was in.

    Returns:
        ``{prefix}_accuracy`` (fraction in [0, 1]), ``{prefix}_loss``, ``{prefix}_samples``, ``{prefix}_runtime``
        (s) and ``{prefix}_samples_per_second``.
    """
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    correct = total = 0
    loss_sum = 0.0
    for images, labels in dataloader:
        logits = model(pixel_values=normalize_images(images, mean, std)).logits.float()  # (B, num_labels)
        losses = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        predictions, labels, losses = accelerator.gather_for_metrics((logits.argmax(-1), labels, losses))
        correct += int((predictions == labels).sum())
        total += int(labels.numel())
        loss_sum += float(losses.sum())
    runtime = time.perf_counter() - started
    model.train(was_training)
    return {
        f"{prefix}_accuracy": correct / max(total, 1),
        f"{prefix}_loss": loss_sum / max(total, 1),
        f"{prefix}_samples": total,
        f"{prefix}_runtime": runtime,
        f"{prefix}_samples_per_second": total / max(runtime, 1e-9),
    }


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageLoopConfig:
    """What :func:`train_image_classifier` does.

    Args:
        max_train_steps: stop after this many optimizer steps.
        num_train_epochs: and at the latest after this many passes over the training data.
        mean: per-channel normalization mean (on the [0, 1] scale).
        std: per-channel normalization std.
        random_crop_padding: pixels of zero padding for the random crop (0: no crop).
        horizontal_flip: random horizontal flips.
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping, as He et al.).
        checkpoint_dir: where ``checkpoint-<step>`` folders go.
        checkpointing_steps: save every N optimizer steps, ``"epoch"`` at every epoch's end, None never.
        keep_last_checkpoints: keep only the newest N checkpoints (None: all).
        eval_steps: evaluate every N optimizer steps, ``"epoch"`` at every epoch's end, None never (the caller
            evaluates the final model anyway).
        logging_steps: log loss, accuracy, learning rate and images/s every N optimizer steps.
        with_tracking: send the logs to the trackers of ``accelerator.init_trackers``.
        log_grad_norms_every: with tracking, log the gradient norm of every layer (and the first/last and
            max/min ratios per stack, :class:`~hf_rskip.diagnostics.GradNormLogger`) every N optimizer steps,
            step 0 included, after clipping's unscale; None: never.
        show_progress: a tqdm bar on the main process.
    """

    max_train_steps: int
    num_train_epochs: int = 1
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    random_crop_padding: int = 4
    horizontal_flip: bool = True
    max_grad_norm: float | None = None
    checkpoint_dir: Path | None = None
    checkpointing_steps: int | str | None = None
    keep_last_checkpoints: int | None = None
    eval_steps: int | str | None = None
    logging_steps: int = 50
    with_tracking: bool = False
    log_grad_norms_every: int | None = None
    show_progress: bool = True


@dataclass
class ImageLoopState(ResumableState):
    """The loop's resumable state, saved as a checkpoint's ``extra_state``.

    Args:
        completed_steps: optimizer steps done.
        epoch: the current epoch (0-based).
        batches_in_epoch: micro-batches of ``epoch`` this process has consumed.
        images: training images seen, all processes.
        train_seconds: wall time in training steps (evaluation and saving excluded), over all runs.
    """

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    images: int = 0
    train_seconds: float = 0.0


@dataclass
class ImageLoopResult:
    """What :func:`train_image_classifier` returns.

    Args:
        state: the final :class:`ImageLoopState`.
        train_loss: mean loss over the last logging window (augmented images).
        train_accuracy: accuracy over the last logging window (augmented images, training mode).
        images_per_second: training throughput, all processes together.
        history: every logged record and evaluation.
        resumed_from: the checkpoint resumed from, if any.
        checkpoints: the checkpoints written by this run.
    """

    state: ImageLoopState
    train_loss: float = float("nan")
    train_accuracy: float = float("nan")
    images_per_second: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)


def _every(spec: int | str | None, step: int) -> bool:
    return isinstance(spec, int) and not isinstance(spec, bool) and spec > 0 and step % spec == 0


def train_image_classifier(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_dataloader: Any,
    sampler: EpochShuffleSampler,
    config: ImageLoopConfig,
    *,
    resume_from: str | Path | None = None,
    evaluate: Callable[[int], Mapping[str, Any]] | None = None,
) -> ImageLoopResult:
    """Trains until ``max_train_steps`` or ``num_train_epochs``, with checkpoints, evaluation and logging.

    Create the ``Accelerator`` with ``step_scheduler_with_optimizer=False``: the loop steps the schedule once per
    optimizer step, whatever the number of processes.

    Args:
        accelerator: the ``Accelerator`` that prepared the objects below.
        model: the prepared image classifier (``pixel_values``, ``labels`` -> ``loss``, ``logits``).
        optimizer: the prepared optimizer.
        scheduler: the prepared learning-rate scheduler.
        train_dataloader: the prepared loader of ``(uint8 images (B, C, H, W), labels (B,))``.
        sampler: the :class:`EpochShuffleSampler` inside it; it is told the epoch.
        config: see :class:`ImageLoopConfig`.
        resume_from: a checkpoint folder to resume from.
        evaluate: called as ``evaluate(step)`` by every process at evaluation points; returns metrics to log.
    """
    from tqdm.auto import tqdm

    if config.max_train_steps < 1:
        raise ValueError(f"max_train_steps={config.max_train_steps!r} must be >= 1")
    if config.checkpointing_steps is not None and config.checkpoint_dir is None:
        raise ValueError("checkpointing_steps is set but checkpoint_dir is None")
    augment = CifarAugment(config.random_crop_padding, config.horizontal_flip)

    state = ImageLoopState()
    result = ImageLoopResult(state=state)
    if resume_from is not None:
        state = ImageLoopState.from_dict(load_checkpoint(accelerator, resume_from))
        result.state, result.resumed_from = state, Path(resume_from)
        if state.batches_in_epoch >= len(train_dataloader):  # saved after the epoch's last batch
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        accelerator.print(f"resumed from {resume_from}: step {state.completed_steps}, epoch {state.epoch}, "
                          f"batch {state.batches_in_epoch}")

    progress = tqdm(total=config.max_train_steps, initial=state.completed_steps, desc="training", unit="step",
                    disable=not (config.show_progress and accelerator.is_local_main_process), dynamic_ncols=True)
    # (loss sum, correct, images) of this process since the last log
    window = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
    window_seconds = 0.0

    def log_window() -> dict[str, Any]:
        """Reduces the window over processes (every process calls this at the same step)."""
        nonlocal window_seconds  # window is changed in place
        totals = accelerator.reduce(window.clone(), reduction="sum")
        images = int(totals[2])
        state.images += images
        record = {
            "step": state.completed_steps, "epoch": state.epoch,
            "loss": float(totals[0]) / max(images, 1), "accuracy": float(totals[1]) / max(images, 1),
            "lr": scheduler.get_last_lr()[0], "images_per_second": images / max(window_seconds, 1e-9),
        }
        result.train_loss, result.train_accuracy = record["loss"], record["accuracy"]
        window.zero_()
        window_seconds = 0.0
        return record

    def run_evaluation() -> None:
        if evaluate is None:
            return
        with torch.random.fork_rng(devices=[]):  # evaluation leaves training's random draws alone
            metrics = dict(evaluate(state.completed_steps))
        result.history.append({"step": state.completed_steps, **metrics})
        if config.with_tracking:
            accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            step=state.completed_steps)
        accelerator.print(f"step {state.completed_steps}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))

    def checkpoint() -> None:
        path = save_checkpoint(accelerator, config.checkpoint_dir, state.completed_steps, state.to_dict(),
                               keep_last=config.keep_last_checkpoints)
        result.checkpoints.append(path)

    problem = grad_norm_option_problem(config.log_grad_norms_every, config.with_tracking)
    if problem:
        raise ValueError(f"log_grad_norms_every: {problem}")
    grad_logger = GradNormLogger(config.log_grad_norms_every) if config.log_grad_norms_every else None
    model.train()
    done = state.completed_steps >= config.max_train_steps
    while not done and state.epoch < config.num_train_epochs:
        sampler.set_epoch(state.epoch)
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(state.epoch)
        loader = train_dataloader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        started = time.perf_counter()
        for images, labels in loader:
            with accelerator.accumulate(model):
                pixel_values = normalize_images(augment(images), config.mean, config.std)  # (B, C, H, W) float
                outputs = model(pixel_values=pixel_values, labels=labels)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if grad_logger is not None and accelerator.sync_gradients:
                    grad_logger(accelerator, model, state.completed_steps)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            window += torch.stack([
                outputs.loss.detach().double() * labels.numel(),
                (outputs.logits.detach().argmax(-1) == labels).sum().double(),
                torch.tensor(float(labels.numel()), dtype=torch.float64, device=window.device),
            ])
            if not accelerator.sync_gradients:
                continue

            state.completed_steps += 1
            elapsed = time.perf_counter() - started
            state.train_seconds += elapsed
            window_seconds += elapsed
            progress.update(1)
            if state.completed_steps % config.logging_steps == 0 or state.completed_steps >= config.max_train_steps:
                record = log_window()
                result.history.append(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                                     lr=f"{record['lr']:.3g}", img_s=f"{record['images_per_second']:.0f}")
                if config.with_tracking:
                    accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"},
                                    step=state.completed_steps)
            done = state.completed_steps >= config.max_train_steps
            if _every(config.checkpointing_steps, state.completed_steps) and not done:
                checkpoint()
            if _every(config.eval_steps, state.completed_steps) and not done:
                run_evaluation()
            started = time.perf_counter()
            if done:
                break
        else:
            elapsed = time.perf_counter() - started
            state.train_seconds += elapsed
            window_seconds += elapsed
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if config.checkpointing_steps == "epoch" and state.epoch < config.num_train_epochs and not done:
                checkpoint()
            if config.eval_steps == "epoch" and state.epoch < config.num_train_epochs and not done:
                run_evaluation()

    if window[2] > 0:
        result.history.append(log_window())
    # The last step is always saved when checkpointing is on, so a finished run can be continued.
    if config.checkpointing_steps is not None and state.completed_steps > 0 and not any(
        p.name == f"checkpoint-{state.completed_steps}" for p in list_checkpoints(config.checkpoint_dir)
    ):
        checkpoint()
    progress.close()
    result.state = state
    result.images_per_second = state.images / max(state.train_seconds, 1e-9)
    return result


# --------------------------------------------------------------------------------------------------
# The job (what scripts/run_image_classification.py runs)
# --------------------------------------------------------------------------------------------------


#: Defaults for the built-in task (no data arguments): scikit-learn's 8x8 digits shown at 16x16 with a 2-pixel
#: crop padding (the CIFAR values, 32x32 and 4 pixels, cost 4x the compute for nothing on these images). With
#: the other defaults, PreAct-ResNet-20 rskip_ln reaches about 96% held-out accuracy in about a minute on 2 CPU cores.
#: Keys are ``run_image_classification.py`` argument names.
BUILTIN_IMAGE_HPARAMS: dict[str, Any] = dict(image_size=16, random_crop_padding=2)

DATA_OPTIONS: tuple[str, ...] = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")
"""The options that name data; with none of them the built-in digits task runs."""


class ImageArgumentError(ValueError):
    """A bad ``run_image_classification.py`` option or combination; the message starts with the option's name."""


def _arg_error(option: str, message: str) -> ImageArgumentError:
    return ImageArgumentError(f"--{option}: {message}")


def check_image_args(args: Any) -> None:
    """Checks option values and combinations before anything is loaded or trained.

    Raises:
        ImageArgumentError: naming the option and what is accepted.
    """
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "logging_steps", "image_size"):
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise _arg_error(name, f"{value!r} must be an integer >= 1")
    for name in ("max_train_steps", "num_train_epochs", "keep_last_checkpoints", "max_train_samples",
                 "max_eval_samples"):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _arg_error(name, f"{value!r} must be an integer >= 1")
    problem = grad_norm_option_problem(args.log_grad_norms_every, args.with_tracking)
    if problem:
        raise _arg_error("log_grad_norms_every", problem)
    if args.learning_rate <= 0:
        raise _arg_error("learning_rate", f"{args.learning_rate!r} must be > 0")
    if args.weight_decay < 0:
        raise _arg_error("weight_decay", f"{args.weight_decay!r} must be >= 0")
    if not 0 <= args.momentum < 1:
        raise _arg_error("momentum", f"{args.momentum!r} must be in [0, 1)")
    if args.num_warmup_steps < 0:
        raise _arg_error("num_warmup_steps", f"{args.num_warmup_steps!r} must be >= 0")
    if args.random_crop_padding < 0:
        raise _arg_error("random_crop_padding", f"{args.random_crop_padding!r} must be >= 0")
    if args.lr_scheduler_type not in LR_SCHEDULES:
        raise _arg_error("lr_scheduler_type", f"{args.lr_scheduler_type!r}; accepted: {list(LR_SCHEDULES)}")
    for name in ("checkpointing_steps", "eval_steps"):
        value = getattr(args, name)
        if value is not None and value != "epoch" and (not isinstance(value, int) or value < 1):
            raise _arg_error(name, f"{value!r} must be an integer >= 1, 'epoch' or unset")
    for name in ("image_mean", "image_std"):
        value = getattr(args, name)
        if len(value) != 3:
            raise _arg_error(name, f"{value!r} needs 3 values (R G B)")
    if any(s <= 0 for s in args.image_std):
        raise _arg_error("image_std", f"{args.image_std!r} must be > 0")
    if not 0.0 < args.train_val_split < 1.0:
        raise _arg_error("train_val_split", f"{args.train_val_split!r} must be in (0, 1)")
    sources = [name for name in ("dataset_name", "train_dir", "train_file") if getattr(args, name)]
    if len(sources) > 1:
        raise _arg_error(sources[1], f"choose one data source; got {', '.join('--' + s for s in sources)}")
    if args.validation_dir and not args.train_dir:
        raise _arg_error("validation_dir", "needs --train_dir")
    if args.validation_file and not args.train_file:
        raise _arg_error("validation_file", "needs --train_file")
    if args.push_to_hub and not args.hub_model_id:
        raise _arg_error("hub_model_id", "--push_to_hub needs --hub_model_id (e.g. 'user/rskip-resnet20-cifar10')")
    if args.model_name_or_path is not None and not Path(args.model_name_or_path).is_dir():
        raise _arg_error("model_name_or_path",
                         f"{args.model_name_or_path!r} is not a folder (pass a saved model folder)")


def load_image_data(args: Any) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """Loads and checks the training and evaluation splits named by the arguments (before any training).

    Returns:
        Train split, evaluation split, class names, and a description of the data for results and the model card.
    """
    import numpy as np

    from .vision_data import (ImageDataError, check_label_range, load_digits_splits, load_hub_splits,
                              load_image_folder, load_npz_split, train_eval_split)

    names: list[str] | None = None
    held_out = None  # None: hold out part of train, after the labels are checked
    if args.dataset_name:
        train, held_out, names = load_hub_splits(
            args.dataset_name, dataset_config_name=args.dataset_config_name, image_column=args.image_column_name,
            label_column=args.label_column_name, image_size=args.image_size, train_val_split=args.train_val_split,
            cache_dir=args.cache_dir,
        )
        info = {"dataset": args.dataset_name, "dataset_name": args.dataset_name,
                "dataset_config": args.dataset_config_name}
    elif args.train_dir:
        train, names = load_image_folder(args.train_dir, image_size=args.image_size)
        if args.validation_dir:
            held_out, _ = load_image_folder(args.validation_dir, image_size=args.image_size, class_names=names)
        info = {"dataset": "imagefolder", "dataset_name": f"image folder {Path(args.train_dir).name}",
                "dataset_config": None}
    elif args.train_file:
        train = load_npz_split(args.train_file, args.train_image_key, args.train_label_key, image_size=args.image_size)
        if args.validation_file:
            held_out = load_npz_split(args.validation_file, args.validation_image_key, args.validation_label_key,
                                      image_size=args.image_size)
        info = {"dataset": Path(args.train_file).stem, "dataset_name": f"{Path(args.train_file).name}",
                "dataset_config": None}
    else:
        train, held_out, names = load_digits_splits(image_size=args.image_size)
        info = {"dataset": "scikit-learn digits",
                "dataset_name": f"scikit-learn digits (8x8, shown at {args.image_size}x{args.image_size})",
                "dataset_config": None}

    if args.label_names:
        given = [n.strip() for n in args.label_names.split(",")]
        if names is not None and len(given) != len(names):
            raise ImageDataError(f"--label_names: {len(given)} names but the data has {len(names)} classes {names}")
        names = given
    if names is None:
        names = [str(i) for i in range(int(train.labels.max()) + 1)]
    for split in (train, held_out):
        if split is not None:
            check_label_range(split, len(names))
    if held_out is None:
        train, held_out = train_eval_split(train, args.train_val_split, seed=0)
    if args.max_train_samples is not None and args.max_train_samples < len(train):
        order = np.random.default_rng(args.seed).permutation(len(train))[: args.max_train_samples]
        train = train.subset(np.sort(order))
    if args.max_eval_samples is not None and args.max_eval_samples < len(held_out):
        # a random subset: evaluation files may be sorted by class (the JPEG CIFAR-10 test set is)
        order = np.random.default_rng(args.seed).permutation(len(held_out))[: args.max_eval_samples]
        held_out = held_out.subset(np.sort(order))
    if train.image_size != held_out.image_size:
        raise ImageDataError(f"training images are {train.image_size} but evaluation images are {held_out.image_size}; "
                             "pass --image_size to resize both")
    info.update(train_samples=len(train), eval_samples=len(held_out), num_labels=len(names),
                image_height=train.image_size[0], image_width=train.image_size[1],
                eval_source=held_out.source, train_source=train.source)
    return train, held_out, names, info


def _build_model(args: Any, names: list[str]) -> Any:
    from .configuration_rskip_resnet import RSkipResNetConfig
    from .modeling_rskip_resnet import RSkipResNetForImageClassification

    id2label = dict(enumerate(names))
    label2id = {name: i for i, name in id2label.items()}
    if args.model_name_or_path is not None:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes, trust_remote_code=args.trust_remote_code,
        )
    config = RSkipResNetConfig(
        depth=args.depth, hidden_sizes=list(args.hidden_sizes), residual_scheme=args.residual_scheme,
        skip_lambda=args.skip_lambda,
        residual_norm=args.residual_norm, block_norm=args.block_norm, learn_skip_lambda=args.learn_skip_lambda,
        zero_init_last=args.zero_init_last, num_channels=3, id2label=id2label, label2id=label2id,
    )
    return RSkipResNetForImageClassification(config)


def _flat_hparams(args: Any) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items() if v is not None}


def run_image_classification(args: Any, command: str | None = None) -> dict[str, Any]:
    """Trains and evaluates an rSkip PreAct-ResNet as ``scripts/run_image_classification.py`` describes.

    Steps: check the options; load and check the data (before any training); build the model; train with
    :func:`train_image_classifier`; evaluate the final model; save model, image processor, ``results.json`` and a
    model card in ``output_dir``; optionally push that folder to the Hub.

    Args:
        args: the parsed ``run_image_classification.py`` namespace.
        command: the command line, recorded in the results and the model card.

    Returns:
        The results written to ``results.json`` (``eval_accuracy`` among them).
    """
    import platform

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from torch.utils.data import DataLoader, TensorDataset

    from .checkpointing import CheckpointError, resolve_checkpoint
    from .modelcard import write_model_card
    from .modeling_rskip_resnet import register_auto_classes
    from .vision_data import build_image_processor

    check_image_args(args)
    register_auto_classes()
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,
        # pre_ln's norm is not used in down-sampling blocks (see RSkipResNetBasicLayer); DDP must allow that.
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=args.residual_scheme == "pre_ln" or args.model_name_or_path is not None)],
    )
    resume = None
    if args.resume_from_checkpoint is not None:
        try:
            resume = resolve_checkpoint(args.resume_from_checkpoint, checkpoint_dir)
        except CheckpointError as err:
            raise _arg_error("resume_from_checkpoint", str(err)) from None
    elif list_checkpoints(checkpoint_dir):
        if not args.overwrite_output_dir:
            raise _arg_error("output_dir", f"{checkpoint_dir} already holds checkpoints; pass --resume_from_checkpoint "
                                           "latest to continue that run or --overwrite_output_dir to start over")
        if accelerator.is_main_process:
            import shutil

            shutil.rmtree(checkpoint_dir)
        accelerator.wait_for_everyone()
    set_seed(args.seed)

    # Data errors (counts, unreadable images, labels out of range) surface here, before any training.
    train, held_out, names, data_info = load_image_data(args)
    model = _build_model(args, names)
    mean, std = list(args.image_mean), list(args.image_std)

    train_images, train_labels = train.to_tensors()
    eval_images, eval_labels = held_out.to_tensors()
    sampler = EpochShuffleSampler(len(train), seed=args.seed)
    # Its own generator: a new iterator (each epoch, or on resume) then takes no draw from the global RNG.
    train_dataloader = DataLoader(TensorDataset(train_images, train_labels),
                                  batch_size=args.per_device_train_batch_size, sampler=sampler,
                                  generator=torch.Generator().manual_seed(args.seed))
    eval_dataloader = DataLoader(TensorDataset(eval_images, eval_labels), batch_size=args.per_device_eval_batch_size)
    optimizer = build_sgd(model, learning_rate=args.learning_rate, momentum=args.momentum,
                          weight_decay=args.weight_decay, nesterov=args.nesterov)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader)
    steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
    if args.max_train_steps is not None:
        max_train_steps = args.max_train_steps
        num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
    else:
        num_train_epochs = args.num_train_epochs
        max_train_steps = num_train_epochs * steps_per_epoch
    scheduler = accelerator.prepare(build_lr_scheduler(optimizer, schedule=args.lr_scheduler_type,
                                                       num_training_steps=max_train_steps,
                                                       num_warmup_steps=args.num_warmup_steps))
    if args.with_tracking:
        accelerator.init_trackers("runs", config=_flat_hparams(args))
    unwrapped = accelerator.unwrap_model(model)
    config = unwrapped.config
    accelerator.print(
        f"PreAct-ResNet-{config.depth} {config.residual_scheme} λ={config.skip_lambda} ({config.residual_norm} norm): "
        f"{unwrapped.num_parameters():,} parameters; {len(train)} training / {len(held_out)} evaluation images "
        f"{train.image_size}, {len(names)} classes; {len(train_dataloader)} batches/epoch/process; "
        f"{max_train_steps} steps"
    )

    def evaluate(step: int) -> dict[str, float]:
        return evaluate_classifier(model, eval_dataloader, accelerator, mean=mean, std=std)

    loop_config = ImageLoopConfig(
        max_train_steps=max_train_steps, num_train_epochs=num_train_epochs, mean=mean, std=std,
        random_crop_padding=args.random_crop_padding, horizontal_flip=not args.no_horizontal_flip,
        max_grad_norm=args.max_grad_norm, checkpoint_dir=checkpoint_dir, checkpointing_steps=args.checkpointing_steps,
        keep_last_checkpoints=args.keep_last_checkpoints, eval_steps=args.eval_steps,
        logging_steps=args.logging_steps, with_tracking=args.with_tracking,
        log_grad_norms_every=args.log_grad_norms_every,
    )
    result = train_image_classifier(accelerator, model, optimizer, scheduler, train_dataloader, sampler, loop_config,
                                     resume_from=resume, evaluate=evaluate)
    accelerator.wait_for_everyone()

    # Final evaluation with the weights that are saved.
    results: dict[str, Any] = dict(evaluate_classifier(model, eval_dataloader, accelerator, mean=mean, std=std))
    results.update(
        model_type=config.model_type, depth=config.depth, hidden_sizes=list(config.hidden_sizes),
        residual_scheme=config.residual_scheme, skip_lambda=config.skip_lambda, residual_norm=config.residual_norm,
        block_norm=config.block_norm, num_parameters=unwrapped.num_parameters(), seed=args.seed,
        train_steps=result.state.completed_steps, train_epochs=round(result.state.images / len(train), 2),
        train_loss=result.train_loss,
        train_accuracy=result.train_accuracy, train_runtime=result.state.train_seconds,
        train_images=result.state.images, train_samples_per_second=result.images_per_second,
        learning_rate=args.learning_rate, lr_scheduler_type=args.lr_scheduler_type,
        per_device_train_batch_size=args.per_device_train_batch_size, mixed_precision=args.mixed_precision,
        num_processes=accelerator.num_processes, resumed_from=str(result.resumed_from) if result.resumed_from else None,
        history=[r for r in result.history if "eval_accuracy" in r], **data_info,
    )
    results["command"] = command

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        build_image_processor(image_size=train.image_size[0], mean=mean, std=std).save_pretrained(output_dir)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        model_name = args.hub_model_id or output_dir.resolve().name
        write_model_card(
            output_dir, template_name="image_classification.md",
            card_data_kwargs=dict(
                model_name=model_name, license=args.license, library_name="transformers",
                pipeline_tag="image-classification", datasets=[args.dataset_name] if args.dataset_name else None,
                tags=["image-classification", "hf_rskip", "rskip", "preact-resnet", config.residual_scheme],
                metrics=["accuracy"],
            ),
            eval_results=[dict(
                task_type="image-classification", task_name="Image Classification",
                dataset_type=data_info["dataset"], dataset_name=data_info["dataset_name"],
                dataset_config=data_info["dataset_config"], dataset_split=Path(data_info["eval_source"]).name,
                metric_type="accuracy", metric_name="accuracy", metric_value=round(results["eval_accuracy"], 4),
            )],
            model_id=args.hub_model_id or str(output_dir.resolve()),
            depth=config.depth, hidden_sizes=list(config.hidden_sizes), residual_scheme=config.residual_scheme,
            skip_lambda=config.skip_lambda, residual_norm=config.residual_norm, block_norm=config.block_norm,
            num_parameters=f"{unwrapped.num_parameters():,}", num_labels=len(names), label_names=names,
            image_size=f"{train.image_size[0]}x{train.image_size[1]}", mean=mean, std=std,
            dataset_name=data_info["dataset_name"], train_samples=len(train), eval_samples=len(held_out),
            eval_source=data_info["eval_source"], eval_accuracy=f"{100 * results['eval_accuracy']:.2f}",
            eval_loss=f"{results['eval_loss']:.4f}", train_steps=results["train_steps"],
            train_epochs=results["train_epochs"], batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, num_processes=accelerator.num_processes,
            learning_rate=args.learning_rate, momentum=args.momentum, nesterov=args.nesterov,
            weight_decay=args.weight_decay, lr_scheduler_type=args.lr_scheduler_type,
            num_warmup_steps=args.num_warmup_steps, random_crop_padding=args.random_crop_padding,
            horizontal_flip=not args.no_horizontal_flip, mixed_precision=args.mixed_precision,
            train_runtime=f"{results['train_runtime']:.0f} s",
            images_per_second=f"{results['train_samples_per_second']:,.0f}",
            hardware=(f"{accelerator.num_processes} × {accelerator.device.type} "
                      f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
            command=command or "",
        )
        accelerator.print(f"eval_accuracy={results['eval_accuracy']:.4f} on {len(held_out)} images, "
                          f"{results['train_samples_per_second']:.0f} training images/s; saved to {output_dir}")
        if args.push_to_hub:
            from .hub import push_folder_to_hub

            url = push_folder_to_hub(output_dir, args.hub_model_id, token=args.hub_token,
                                     private=args.hub_private_repo,
                                     commit_message="Upload rSkip PreAct-ResNet trained with hf_rskip")
            accelerator.print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return results


__all__ = [
    "BUILTIN_IMAGE_HPARAMS",
    "DATA_OPTIONS",
    "LR_SCHEDULES",
    "EpochShuffleSampler",
    "ImageArgumentError",
    "ImageLoopConfig",
    "ImageLoopResult",
    "ImageLoopState",
    "build_lr_scheduler",
    "build_sgd",
    "check_image_args",
    "evaluate_classifier",
    "load_image_data",
    "lr_factor",
    "run_image_classification",
    "train_image_classifier",
]
