"""The one training loop: Accelerate, any task.

:func:`train` knows nothing about translation or images. A task object (:class:`Task`, see
:mod:`hf_rskip.training.tasks`) says how a batch becomes a loss plus summable counts (as fairseq's criterions
do: ``(loss, counts)``, e.g. summed loss, NLL and tokens), how summed counts become the numbers a user reads
(loss, perplexity, accuracy), and how the model is evaluated. The loop does the rest, the same way for every
task: gradient accumulation, mixed precision, clipping, a stop at the first non-finite loss or gradient,
logging (progress bar with throughput, trackers), evaluation cadence, atomic checkpoints and an exact resume.

Exact resume (same weights as an uninterrupted run on a CPU, same seed): a checkpoint holds the model,
optimizer, scheduler and every process's RNG states plus :class:`LoopState` (steps, epoch, micro-batches
consumed in the epoch, the run's summed counts and training time). Resuming reloads them, sets the sampler to
the saved epoch and skips the consumed batches with ``accelerator.skip_first_batches``. Three details keep the
random draws identical: checkpoints are taken right after an optimizer step (no gradients pending); data
loaders draw their worker seed from their own ``torch.Generator``; evaluation runs under
``torch.random.fork_rng``, so it never moves the training RNG.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .checkpointing import ResumableState, list_checkpoints, load_checkpoint, save_checkpoint
from .optim import current_learning_rate


class Task(Protocol):
    """What the loop needs from a task (translation, image classification, ...).

    Attributes:
        throughput_unit: the count whose rate the loop reports (``"tokens"``, ``"images"``): ``counts`` must hold it.
        progress_keys: which :meth:`summarize` values the progress bar shows.
        eval_loss_key: the evaluation metric that metric-driven schedules (reduce-on-plateau) step with.
    """

    throughput_unit: str
    progress_keys: tuple[str, ...]
    eval_loss_key: str

    def training_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to back-propagate (a mean over the batch) and counts that add up over batches and processes."""

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        """Turns summed counts into what is logged (``loss``, ``nll``, ``ppl``, ``accuracy``, ...)."""

    def evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        """Evaluates on held-out data (every process calls it); keys start with ``eval_``."""


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; nothing after the last good checkpoint was saved."""

    def __init__(self, message: str, *, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; says where the last checkpoint is."""

    def __init__(self, *, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.last_checkpoint = last_checkpoint


@dataclass
class LoopConfig:
    """What :func:`train` does.

    Args:
        max_train_steps: stop after this many optimizer steps.
        num_train_epochs: and at the latest after this many passes over the training data.
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping; the norm is still checked).
        checkpoint_dir: where ``checkpoint-<step>`` folders go.
        checkpointing_steps: save every N optimizer steps, ``"epoch"`` at the end of every epoch, None never (the
            last step is always saved when checkpointing is on).
        keep_last_checkpoints: keep only the newest N checkpoints (None: all).
        eval_steps: evaluate every N optimizer steps, ``"epoch"`` at the end of every epoch, None never.
        logging_steps: log the training figures every N optimizer steps.
        with_tracking: send logs to the trackers of ``accelerator.init_trackers``.
        log_grad_norms_every: with tracking, log every layer's gradient norm every N steps (step 0 included).
        metric_scheduler: the schedule is stepped with ``task.eval_loss_key`` at each evaluation instead of once
            per optimizer step (``reduce_lr_on_plateau``, ``greedy``).
        show_progress: a tqdm bar on the main process.
        save_extras: called with each checkpoint folder (main process) to add files, e.g. the tokenizer.
    """

    max_train_steps: int
    num_train_epochs: int = 1
    max_grad_norm: float | None = 1.0
    checkpoint_dir: Path | None = None
    checkpointing_steps: int | str | None = None
    keep_last_checkpoints: int | None = None
    eval_steps: int | str | None = None
    logging_steps: int = 50
    with_tracking: bool = False
    log_grad_norms_every: int | None = None
    metric_scheduler: bool = False
    show_progress: bool = True
    save_extras: Callable[[Path], None] | None = None


@dataclass
class LoopState(ResumableState):
    """The loop's resumable state, saved in every checkpoint.

    Args:
        completed_steps: optimizer steps done.
        epoch: the current epoch (0-based).
        batches_in_epoch: micro-batches of ``epoch`` this process has consumed.
        train_seconds: wall time in training steps (evaluation and saving excluded), over all runs.
        totals: the task's counts summed over the whole run and all processes.
        last_log: the last logged training figures (so a resumed, already finished run still reports them).
    """

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    train_seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)
    last_log: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopResult:
    """What :func:`train` returns.

    Args:
        state: the final :class:`LoopState`.
        history: every logged record and evaluation, in order.
        resumed_from: the checkpoint resumed from, if any.
        checkpoints: the checkpoints this run wrote.
        throughput: the run's ``<unit>_per_second`` over all its training time (all processes together).
    """

    state: LoopState
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    throughput: float = 0.0

    def train_metrics(self) -> dict[str, float]:
        """The last logged training figures as ``train_<name>``."""
        return {f"train_{k}": v for k, v in self.state.last_log.items()
                if k not in ("step", "epoch", "lr") and not k.endswith("_per_second")}


def _every(spec: int | str | None, step: int) -> bool:
    return isinstance(spec, int) and not isinstance(spec, bool) and spec > 0 and step % spec == 0


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_dataloader: Any,
    task: Task,
    config: LoopConfig,
    *,
    resume_from: str | Path | None = None,
) -> LoopResult:
    """Trains until ``max_train_steps`` or ``num_train_epochs``, with checkpoints, evaluation and logging.

    Create the ``Accelerator`` with ``step_scheduler_with_optimizer=False``: the loop steps the schedule exactly
    once per optimizer step, so the schedule does not depend on the number of processes.

    Args:
        accelerator: the ``Accelerator`` that prepared the objects below (its ``gradient_accumulation_steps`` and
            mixed precision apply).
        model: the prepared model.
        optimizer: the prepared optimizer.
        scheduler: the prepared learning-rate scheduler.
        train_dataloader: the prepared training data loader (its sampler is told the epoch).
        task: see :class:`Task`.
        config: see :class:`LoopConfig`.
        resume_from: a checkpoint folder to resume from; it must have been written by this model's config.

    Raises:
        NonFiniteLossError: at the first non-finite loss or gradient norm (nothing non-finite is saved).
        TrainingInterrupted: on Ctrl-C.
    """
    from tqdm.auto import tqdm

    from ..diagnostics import GradNormLogger

    if config.max_train_steps < 1:
        raise ValueError(f"max_train_steps={config.max_train_steps!r} must be >= 1")
    if config.checkpointing_steps is not None and config.checkpoint_dir is None:
        raise ValueError("checkpointing_steps is set but checkpoint_dir is None")

    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    state = LoopState()
    result = LoopResult(state=state)
    if resume_from is not None:
        state = LoopState.from_dict(load_checkpoint(accelerator, resume_from,
                                                    config=getattr(unwrapped, "config", None)))
        result.state, result.resumed_from = state, Path(resume_from)
        if state.batches_in_epoch >= len(train_dataloader):  # saved after the epoch's last batch
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        accelerator.print(f"resumed from {resume_from}: step {state.completed_steps}, epoch {state.epoch}, "
                          f"batch {state.batches_in_epoch}")

    unit = task.throughput_unit
    rate_key = f"{unit}_per_second"
    progress = tqdm(total=config.max_train_steps, initial=state.completed_steps, desc="training", unit="step",
                    disable=not (config.show_progress and accelerator.is_local_main_process), dynamic_ncols=True)
    window: dict[str, torch.Tensor] = {}  # this process's counts since the last log
    window_seconds = 0.0
    multi_process = accelerator.num_processes > 1
    fp16_scaler = getattr(accelerator, "scaler", None) is not None
    max_norm = config.max_grad_norm if config.max_grad_norm else float("inf")
    grad_logger = GradNormLogger(config.log_grad_norms_every) if config.log_grad_norms_every else None

    def epoch_position() -> float:
        return state.epoch + state.batches_in_epoch / max(1, len(train_dataloader))

    def flush_window() -> dict[str, Any] | None:
        """Reduces the window over processes into the run's totals and a record (every process calls it)."""
        nonlocal window_seconds
        names = sorted(window)
        if not names:
            return None
        counts = torch.stack([window[name].double() for name in names])
        if multi_process:
            counts = accelerator.reduce(counts, reduction="sum")
        totals = dict(zip(names, counts.tolist()))
        for name, value in totals.items():
            state.totals[name] = state.totals.get(name, 0.0) + value
        record = {"step": state.completed_steps, "epoch": round(epoch_position(), 4), **task.summarize(totals),
                  "lr": current_learning_rate(optimizer), rate_key: totals.get(unit, 0.0) / max(window_seconds, 1e-9)}
        state.last_log = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        window.clear()
        window_seconds = 0.0
        return record

    def log_record(record: dict[str, Any]) -> None:
        result.history.append(record)
        progress.set_postfix({k: f"{record[k]:.3g}" for k in (*task.progress_keys, "lr", rate_key) if k in record})
        if config.with_tracking:
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.completed_steps)

    def run_evaluation() -> None:
        with torch.random.fork_rng(devices=[]):  # evaluation leaves training's random draws alone
            metrics = dict(task.evaluate(model, state.completed_steps))
        if not metrics:
            return
        result.history.append({"step": state.completed_steps, **metrics})
        if config.metric_scheduler and task.eval_loss_key in metrics:
            scheduler.step(metrics[task.eval_loss_key])
        if config.with_tracking:
            accelerator.log({f"eval/{k.removeprefix('eval_')}": v for k, v in metrics.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=state.completed_steps)
        accelerator.print(f"step {state.completed_steps}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))

    def checkpoint() -> None:
        record = flush_window()  # the window's counts go into the saved totals (exact throughput after a resume)
        if record is not None:
            log_record(record)
        if not _all_finite(model):
            raise NonFiniteLossError(f"the weights hold non-finite values at step {state.completed_steps}; "
                                     "not saved", step=state.completed_steps, last_checkpoint=last_checkpoint())
        path = save_checkpoint(accelerator, config.checkpoint_dir, state.completed_steps, state.to_dict(),
                               keep_last=config.keep_last_checkpoints, save_extras=config.save_extras)
        result.checkpoints.append(path)

    def last_checkpoint() -> Path | None:
        found = list_checkpoints(config.checkpoint_dir) if config.checkpoint_dir is not None else []
        return found[-1] if found else None

    def stop_non_finite(what: str, value: float) -> None:
        last = last_checkpoint()
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
        raise NonFiniteLossError(
            f"{what} is {value} at step {state.completed_steps + 1} (learning rate "
            f"{current_learning_rate(optimizer):.3g}); training stopped and nothing after it was saved; {where}. "
            "A lower --learning_rate, more --num_warmup_steps, --max_grad_norm or another scheme may help",
            step=state.completed_steps + 1, last_checkpoint=last)

    model.train()
    done = state.completed_steps >= config.max_train_steps
    try:
        while not done and state.epoch < config.num_train_epochs:
            if hasattr(train_dataloader, "set_epoch"):  # Accelerate's loader passes it on to its sampler
                train_dataloader.set_epoch(state.epoch)
            loader = train_dataloader
            if state.batches_in_epoch:
                loader = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
            started = time.perf_counter()
            for batch in loader:
                with accelerator.accumulate(model):
                    loss, counts = task.training_step(model, batch)
                    if not torch.isfinite(loss.detach()).all():
                        stop_non_finite("the training loss", float(loss.detach().float().mean()))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                        bad = torch.zeros((), device=accelerator.device)
                        if grad_norm is not None and not fp16_scaler:  # fp16: the scaler skips overflowing steps
                            bad = (~torch.isfinite(torch.as_tensor(grad_norm, device=accelerator.device))).float()
                        if multi_process:
                            bad = accelerator.reduce(bad, reduction="sum")
                        if bad.item():
                            stop_non_finite("the gradient norm", float(grad_norm))
                        if grad_logger is not None:
                            grad_logger(accelerator, model, state.completed_steps)
                    optimizer.step()
                    if accelerator.sync_gradients and not config.metric_scheduler:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                for name, value in counts.items():
                    value = value.detach()
                    window[name] = window[name] + value if name in window else value
                if not accelerator.sync_gradients:
                    continue

                state.completed_steps += 1
                elapsed = time.perf_counter() - started
                state.train_seconds += elapsed
                window_seconds += elapsed
                progress.update(1)
                done = state.completed_steps >= config.max_train_steps
                if state.completed_steps % config.logging_steps == 0 or done:
                    log_record(flush_window())
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
                last_epoch = state.epoch >= config.num_train_epochs
                if config.checkpointing_steps == "epoch" and not last_epoch and not done:
                    checkpoint()
                if config.eval_steps == "epoch" and not last_epoch and not done:
                    run_evaluation()

        record = flush_window()
        if record is not None:
            log_record(record)
        # The last step is always saved when checkpointing is on, so a finished run can be averaged or continued.
        if config.checkpointing_steps is not None and state.completed_steps > 0 and not any(
            p.name == f"checkpoint-{state.completed_steps}" for p in list_checkpoints(config.checkpoint_dir)
        ):
            checkpoint()
    except KeyboardInterrupt:
        progress.close()
        raise TrainingInterrupted(step=state.completed_steps, last_checkpoint=last_checkpoint()) from None
    progress.close()
    result.state = state
    result.throughput = state.totals.get(unit, 0.0) / max(state.train_seconds, 1e-9)
    return result


__all__ = ["LoopConfig", "LoopResult", "LoopState", "NonFiniteLossError", "Task", "TrainingInterrupted", "train"]
