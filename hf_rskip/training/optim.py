"""Optimizers and learning-rate schedules for both tasks, from torch and transformers.

Weight decay is decided by shape (``p.ndim >= 2``: matrices and conv kernels), never by parameter names, so a new
norm layer (rSkip's extra norms, a learned λ) cannot be decayed by mistake. Schedules are transformers'
``get_scheduler`` (every :class:`~transformers.SchedulerType`), plus ``multistep``: torch's ``MultiStepLR``
(He et al.'s ÷10 at 50% and 75% of training) after a linear warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import SchedulerType

LR_SCHEDULERS: tuple[str, ...] = (*(s.value for s in SchedulerType), "multistep")
"""Accepted ``lr_scheduler_type`` values: transformers' schedules and torch's ``multistep``."""

METRIC_SCHEDULERS: tuple[str, ...] = (SchedulerType.REDUCE_ON_PLATEAU.value, SchedulerType.GREEDY.value)
"""Schedules stepped with a metric (the validation loss, at every evaluation) instead of once per step."""

OPTIMIZERS: tuple[str, ...] = ("adamw", "adafactor", "sgd")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: parameters with ``ndim >= 2`` decayed, the rest (biases, norm gains, λ) not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    optimizer: str = "adamw",
    learning_rate: float,
    weight_decay: float = 0.0,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.98,
    adam_epsilon: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """AdamW (translation; β = (0.9, 0.98) as Vaswani et al. and fairseq), Adafactor (T5's) or SGD with momentum.

    Adafactor is transformers' implementation with the schedule's rate (``relative_step=False``) and T5's update
    scaling by each parameter's RMS (``scale_parameter=True``), so the rate is relative to the weights' size: T5's
    initialisation (embeddings of RMS 1, queries of RMS ~0.03) is made for it. No momentum (T5's setting).

    Args:
        model: its trainable parameters are optimized.
        optimizer: ``"adamw"``, ``"adafactor"`` or ``"sgd"``.
        learning_rate: the peak learning rate.
        weight_decay: for parameters with ``ndim >= 2`` only (decoupled for AdamW and Adafactor, L2 for SGD).
        adam_beta1, adam_beta2, adam_epsilon: AdamW's β1, β2 and ε.
        momentum, nesterov: SGD's momentum and whether it is Nesterov's.
    """
    groups = parameter_groups(model, weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate, betas=(adam_beta1, adam_beta2), eps=adam_epsilon)
    if optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=learning_rate, scale_parameter=True, relative_step=False, warmup_init=False)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=nesterov and momentum > 0)
    raise ValueError(f"optimizer={optimizer!r} is unknown; accepted: {list(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    lr_scheduler_type: str,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_scheduler_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """A schedule stepped once per optimizer step (metric-driven ones: once per evaluation, with the metric).

    Args:
        optimizer: the optimizer.
        lr_scheduler_type: one of :data:`LR_SCHEDULERS`.
        num_warmup_steps: optimizer steps of linear warm-up.
        num_training_steps: total optimizer steps.
        lr_scheduler_kwargs: the schedule's own options (transformers' ``scheduler_specific_kwargs``, e.g.
            ``{"min_lr_rate": 0.1}`` for ``cosine_with_min_lr``); for ``inverse_sqrt`` the ``timescale``
            defaults to the warm-up, so the rate peaks at the end of warm-up and then falls as
            ``sqrt(warmup / step)`` (fairseq's schedule); for ``multistep``, ``milestones`` (fractions of
            training, default ``[0.5, 0.75]``) and ``gamma`` (0.1).
    """
    from transformers import get_scheduler

    kwargs = dict(lr_scheduler_kwargs or {})
    if lr_scheduler_type == "multistep":
        milestones = kwargs.pop("milestones", [0.5, 0.75])
        gamma = kwargs.pop("gamma", 0.1)
        if kwargs:
            raise ValueError(f"lr_scheduler_kwargs={dict(lr_scheduler_kwargs)!r}: 'multistep' takes only "
                             "'milestones' (fractions of training) and 'gamma'")
        steps = sorted({max(1, int(round(float(f) * num_training_steps))) for f in milestones})
        decay = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)
        if not num_warmup_steps:
            return decay
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / num_warmup_steps,
                                                   total_iters=num_warmup_steps)
        return torch.optim.lr_scheduler.ChainedScheduler([warmup, decay], optimizer=optimizer)
    if lr_scheduler_type not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler_type={lr_scheduler_type!r} is unknown; accepted: {list(LR_SCHEDULERS)}")
    if lr_scheduler_type == SchedulerType.INVERSE_SQRT.value:
        kwargs.setdefault("timescale", max(1, num_warmup_steps))
    return get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps, scheduler_specific_kwargs=kwargs)


def is_metric_scheduler(lr_scheduler_type: str) -> bool:
    """Whether the schedule is stepped with a metric at evaluations (not once per optimizer step)."""
    return lr_scheduler_type in METRIC_SCHEDULERS


def check_scheduler_options(lr_scheduler_type: str, lr_scheduler_kwargs: Mapping[str, Any] | None,
                            num_warmup_steps: int) -> None:
    """Builds the schedule on a throw-away parameter, so a bad type or option fails before any data is read.

    Raises:
        ValueError: naming the schedule and what transformers or torch said.
    """
    dummy = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        build_scheduler(dummy, lr_scheduler_type=lr_scheduler_type, num_warmup_steps=num_warmup_steps,
                        num_training_steps=max(10, num_warmup_steps + 1), lr_scheduler_kwargs=lr_scheduler_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{lr_scheduler_type!r} with lr_scheduler_kwargs={dict(lr_scheduler_kwargs or {})}: "
                         f"{err}") from None


def current_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first parameter group (what a schedule set last)."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


__all__ = [
    "LR_SCHEDULERS",
    "METRIC_SCHEDULERS",
    "OPTIMIZERS",
    "build_optimizer",
    "build_scheduler",
    "check_scheduler_options",
    "current_learning_rate",
    "is_metric_scheduler",
    "parameter_groups",
]
