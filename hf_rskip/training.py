"""Training seq2seq models with Accelerate: optimizer, schedule, label-smoothed loss and a resumable loop.

The loop (:func:`train_loop`) is what ``scripts/run_translation.py`` runs, and it is model-agnostic: any
encoder-decoder that takes ``input_ids``, ``attention_mask`` and ``decoder_input_ids`` and returns
``logits`` trains with it. It goes beyond transformers' ``run_translation_no_trainer.py`` where fairseq's
tooling is better: token-based batches, label smoothing, inverse-square-root warm-up, throughput in
tokens/s, crash-safe checkpoints and a bit-exact resume.

Exact resume (same weights as an uninterrupted run, same seed, CPU): a checkpoint holds the model,
optimizer, scheduler and every process's RNG states (Accelerate's ``save_state``) plus the loop's own
state (:class:`LoopState`: optimizer steps, epoch, micro-batches consumed in the epoch). Resuming reloads
them, sets the batch sampler to the saved epoch and skips the consumed batches with
``accelerator.skip_first_batches``. Three details make the order of random draws identical:

* checkpoints are taken right after an optimizer step, when no gradients are accumulated;
* the data loader draws its worker seed from its own ``torch.Generator``, not the global RNG, so creating a
  new iterator on resume does not shift dropout's random stream;
* evaluation runs under ``torch.random.fork_rng``, so it never moves the training RNG either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpointing import ResumableState, list_checkpoints, load_checkpoint, save_checkpoint
from .diagnostics import GradNormLogger, grad_norm_option_problem


LR_SCHEDULERS: tuple[str, ...] = ("inverse_sqrt", "linear", "cosine", "constant_with_warmup")
"""Accepted ``lr_scheduler_type`` values (transformers' schedules; ``inverse_sqrt`` is fairseq's)."""


# --------------------------------------------------------------------------------------------------
# Optimizer, schedule, loss
# --------------------------------------------------------------------------------------------------


def build_optimizer(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float = 0.0,
    adam_betas: tuple[float, float] = (0.9, 0.98),
    adam_epsilon: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (``p.ndim >= 2``).

    Biases, norm gains and a learned λ (all 1-D or scalars) are not decayed; deciding by shape rather than
    by parameter names cannot miss a new norm layer such as rSkip's extra norms.

    Args:
        model: the model whose trainable parameters are optimized.
        learning_rate: the peak learning rate.
        weight_decay: decoupled weight decay for parameters with ``ndim >= 2``.
        adam_betas: Adam's (β1, β2); (0.9, 0.98) as in Vaswani et al. and fairseq.
        adam_epsilon: Adam's ε.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate={learning_rate!r} must be > 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=tuple(adam_betas), eps=adam_epsilon)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    lr_scheduler_type: str = "inverse_sqrt",
    num_warmup_steps: int = 4000,
    num_training_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A learning-rate schedule from transformers, stepped once per optimizer step.

    Args:
        optimizer: the optimizer.
        lr_scheduler_type: ``"inverse_sqrt"`` (linear warm-up to the peak, then ∝ 1/√step, as fairseq and
            Vaswani et al.), ``"linear"``, ``"cosine"`` or ``"constant_with_warmup"``.
        num_warmup_steps: optimizer steps of linear warm-up.
        num_training_steps: total optimizer steps (needed by ``linear`` and ``cosine``).
    """
    from transformers.optimization import get_inverse_sqrt_schedule, get_scheduler

    if lr_scheduler_type not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler_type={lr_scheduler_type!r} is unknown; accepted: {list(LR_SCHEDULERS)}")
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps={num_warmup_steps!r} must be >= 0")
    if lr_scheduler_type == "inverse_sqrt":
        # timescale = warm-up: the rate peaks at the end of warm-up and decays as sqrt(warmup / step) after it.
        return get_inverse_sqrt_schedule(optimizer, num_warmup_steps=num_warmup_steps,
                                         timescale=max(1, num_warmup_steps))
    return get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps)


def label_smoothed_loss(
    logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level cross-entropy with label smoothing, and the plain NLL beside it.

    Args:
        logits: ``(B, T, V)`` decoder outputs.
        labels: ``(B, T)`` target ids, ``ignore_index`` where padded.
        epsilon: the smoothing mass spread uniformly over the vocabulary (0 is plain cross-entropy).
        ignore_index: the label of padding positions.

    Returns:
        ``(loss, nll)``: both means over the non-ignored tokens; ``loss`` is what to back-propagate, ``nll``
        what to report (its exp is the perplexity).
    """
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label_smoothing={epsilon!r} must be in [0, 1)")
    lprobs = logits.float().log_softmax(-1).reshape(-1, logits.shape[-1])  # (B*T, V), fp32 for stability
    flat_labels = labels.reshape(-1)  # (B*T,)
    keep = flat_labels != ignore_index  # (B*T,)
    # One log-softmax serves both terms: -log p(y) and the uniform part -mean_v log p(v).
    nll = -lprobs.gather(1, flat_labels.clamp(min=0)[:, None]).squeeze(1)[keep]  # (N,)
    smooth = -lprobs.mean(-1)[keep]  # (N,)
    count = keep.sum().clamp(min=1)
    loss = ((1.0 - epsilon) * nll + epsilon * smooth).sum() / count
    return loss, nll.detach().sum() / count


def seq2seq_loss(
    model: nn.Module, batch: Mapping[str, torch.Tensor], label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the model on a collated batch and returns ``(label-smoothed loss, nll)``.

    The labels are kept away from the model (its own loss would be plain cross-entropy, computed for
    nothing); the decoder reads ``decoder_input_ids`` from the collator (labels shifted right).

    Args:
        model: a seq2seq model (possibly wrapped by Accelerate).
        batch: ``input_ids``, ``attention_mask``, ``labels`` and ``decoder_input_ids``.
        label_smoothing: see :func:`label_smoothed_loss`.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits  # (B, T, V)
    return label_smoothed_loss(logits, batch["labels"], label_smoothing)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


@dataclass
class LoopConfig:
    """What :func:`train_loop` does; every field has the default of ``scripts/run_translation.py``.

    Args:
        max_train_steps: stop after this many optimizer steps.
        num_train_epochs: and at the latest after this many passes over the training data.
        label_smoothing: ε of :func:`label_smoothed_loss`.
        max_grad_norm: clip the global gradient norm to this (None or 0: no clipping).
        checkpoint_dir: where ``checkpoint-<step>`` folders go.
        checkpointing_steps: save every N optimizer steps, ``"epoch"`` at the end of every epoch, None never.
        keep_last_checkpoints: keep only the newest N checkpoints (None: all).
        eval_steps: call ``evaluate`` every N optimizer steps, ``"epoch"`` at the end of every epoch, None never.
        logging_steps: log loss, learning rate and throughput every N optimizer steps.
        with_tracking: send the logs to the trackers of ``accelerator.init_trackers`` (TensorBoard).
        log_grad_norms_every: with tracking, log the gradient norm of every layer (and the first/last and
            max/min ratios per stack, :class:`~hf_rskip.diagnostics.GradNormLogger`) every N optimizer steps,
            step 0 included, after clipping's unscale; None: never.
        show_progress: a tqdm bar with loss, learning rate and tokens/s on the main process.
    """

    max_train_steps: int
    num_train_epochs: int = 1
    label_smoothing: float = 0.1
    max_grad_norm: float | None = 1.0
    checkpoint_dir: Path | None = None
    checkpointing_steps: int | str | None = None
    keep_last_checkpoints: int | None = None
    eval_steps: int | str | None = None
    logging_steps: int = 50
    with_tracking: bool = False
    log_grad_norms_every: int | None = None
    show_progress: bool = True


@dataclass
class LoopState(ResumableState):
    """The loop's own resumable state, saved as a checkpoint's ``extra_state``.

    Args:
        completed_steps: optimizer steps done.
        epoch: the current epoch (0-based).
        batches_in_epoch: micro-batches of ``epoch`` this process has consumed.
        tokens: non-padding source + target tokens trained on, all processes.
        target_tokens: non-padding target tokens trained on, all processes.
        train_seconds: wall time spent in training steps (evaluation and saving excluded), over all runs.
    """

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens: int = 0
    target_tokens: int = 0
    train_seconds: float = 0.0


@dataclass
class LoopResult:
    """What :func:`train_loop` returns.

    Args:
        state: the final :class:`LoopState`.
        train_loss: mean label-smoothed loss over the last logging window.
        train_nll: mean NLL over the last logging window.
        tokens_per_second: training throughput, source + target tokens, all processes together.
        target_tokens_per_second: the same, target tokens only (fairseq's ``wps``).
        history: every logged record (``step``, ``loss``, ``nll``, ``lr``, ``tokens_per_second``, evaluations).
        resumed_from: the checkpoint resumed from, if any.
        checkpoints: the checkpoints written by this run.
    """

    state: LoopState
    train_loss: float = float("nan")
    train_nll: float = float("nan")
    tokens_per_second: float = 0.0
    target_tokens_per_second: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)


def _every(spec: int | str | None, step: int) -> bool:
    return isinstance(spec, int) and not isinstance(spec, bool) and spec > 0 and step % spec == 0


def _batch_tokens(batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(source + target, target) non-padding tokens of a collated batch."""
    target = int((batch["labels"] != -100).sum())
    return int(batch["attention_mask"].sum()) + target, target


def train_loop(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    train_dataloader: Any,
    batch_sampler: Any,
    config: LoopConfig,
    *,
    resume_from: str | Path | None = None,
    evaluate: Callable[[int], Mapping[str, Any]] | None = None,
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor], float], tuple[torch.Tensor, torch.Tensor]] = seq2seq_loss,
) -> LoopResult:
    """Trains until ``max_train_steps`` or ``num_train_epochs``, with checkpoints, evaluation and logging.

    Create the ``Accelerator`` with ``step_scheduler_with_optimizer=False``: the loop steps the scheduler
    exactly once per optimizer step, so the schedule does not depend on the number of processes.

    Args:
        accelerator: the ``Accelerator`` that prepared the objects below (gradient accumulation is its
            ``gradient_accumulation_steps``, applied through ``accelerator.accumulate``).
        model: the prepared model.
        optimizer: the prepared optimizer.
        scheduler: the prepared learning-rate scheduler.
        train_dataloader: the prepared training data loader.
        batch_sampler: the batch sampler inside it (anything with ``set_epoch``); it is told the epoch.
        config: see :class:`LoopConfig`.
        resume_from: a checkpoint folder to resume from (see :func:`hf_rskip.checkpointing.resolve_checkpoint`).
        evaluate: called as ``evaluate(step)`` by every process at evaluation points; returns metrics to log.
            It runs with the training RNG forked, so it cannot change the training's random draws.
        loss_fn: ``loss_fn(model, batch, label_smoothing) -> (loss, nll)``; :func:`seq2seq_loss` by default.
    """
    from tqdm.auto import tqdm

    if config.max_train_steps < 1:
        raise ValueError(f"max_train_steps={config.max_train_steps!r} must be >= 1")
    if config.checkpointing_steps is not None and config.checkpoint_dir is None:
        raise ValueError("checkpointing_steps is set but checkpoint_dir is None")

    state = LoopState()
    result = LoopResult(state=state)
    if resume_from is not None:
        state = LoopState.from_dict(load_checkpoint(accelerator, resume_from))
        result.state, result.resumed_from = state, Path(resume_from)
        if state.batches_in_epoch >= len(train_dataloader):  # saved after the epoch's last batch
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        accelerator.print(f"resumed from {resume_from}: step {state.completed_steps}, epoch {state.epoch}, "
                          f"batch {state.batches_in_epoch}")

    progress = tqdm(total=config.max_train_steps, initial=state.completed_steps, desc="training",
                    disable=not (config.show_progress and accelerator.is_local_main_process), dynamic_ncols=True)
    window_loss = torch.zeros((), device=accelerator.device)
    window_nll = torch.zeros((), device=accelerator.device)
    window_batches = 0
    window_tokens = torch.zeros(2, dtype=torch.long, device=accelerator.device)  # (all, target), this process
    window_seconds = 0.0

    def log_window() -> dict[str, Any]:
        """Reduces the window's statistics over processes (every process calls this at the same step)."""
        nonlocal window_loss, window_nll, window_batches, window_seconds  # window_tokens is changed in place
        stats = torch.stack([window_loss, window_nll, torch.tensor(float(max(window_batches, 1)),
                                                                   device=accelerator.device)])
        stats = accelerator.reduce(stats, reduction="sum")
        tokens = accelerator.reduce(window_tokens.clone(), reduction="sum")
        loss, nll = (stats[0] / stats[2]).item(), (stats[1] / stats[2]).item()
        state.tokens += int(tokens[0])
        state.target_tokens += int(tokens[1])
        record = {
            "step": state.completed_steps, "epoch": state.epoch, "loss": loss, "nll": nll,
            "ppl": math.exp(min(nll, 50.0)), "lr": scheduler.get_last_lr()[0],
            "tokens_per_second": int(tokens[0]) / max(window_seconds, 1e-9),
        }
        result.train_loss, result.train_nll = loss, nll
        window_loss, window_nll = torch.zeros_like(window_loss), torch.zeros_like(window_nll)
        window_tokens.zero_()
        window_batches, window_seconds = 0, 0.0
        return record

    def run_evaluation() -> None:
        if evaluate is None:
            return
        # A forked RNG: evaluation (which may sample, or build data loaders) leaves training's draws alone.
        with torch.random.fork_rng(devices=[]):
            metrics = dict(evaluate(state.completed_steps))
        result.history.append({"step": state.completed_steps, **metrics})
        if config.with_tracking:
            accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                            step=state.completed_steps)
        accelerator.print(f"step {state.completed_steps}: " + ", ".join(
            f"{k}={v:.2f}" for k, v in metrics.items() if isinstance(v, float)))

    def checkpoint() -> None:
        if window_batches:  # fold the window's token counts into the saved state (exact tokens/s after a resume)
            result.history.append(log_window())
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
        batch_sampler.set_epoch(state.epoch)
        if hasattr(train_dataloader, "set_epoch"):  # Accelerate's loader re-sets the sampler's epoch from its own
            train_dataloader.set_epoch(state.epoch)
        loader = train_dataloader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        started = time.perf_counter()
        for batch in loader:
            with accelerator.accumulate(model):
                loss, nll = loss_fn(model, batch, config.label_smoothing)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if grad_logger is not None and accelerator.sync_gradients:
                    grad_logger(accelerator, model, state.completed_steps)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            window_loss += loss.detach()
            window_nll += nll.detach()
            window_batches += 1
            tokens, target_tokens = _batch_tokens(batch)
            window_tokens[0] += tokens
            window_tokens[1] += target_tokens
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
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                     tok_s=f"{record['tokens_per_second']:.0f}")
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
            state.train_seconds += time.perf_counter() - started
            window_seconds += time.perf_counter() - started
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if config.checkpointing_steps == "epoch" and state.epoch < config.num_train_epochs and not done:
                checkpoint()
            if config.eval_steps == "epoch" and state.epoch < config.num_train_epochs and not done:
                run_evaluation()

    if window_batches:
        result.history.append(log_window())
    # The last step is always saved when checkpointing is on, so a finished run can be averaged or continued.
    if config.checkpointing_steps is not None and state.completed_steps > 0 and not any(
        p.name == f"checkpoint-{state.completed_steps}" for p in list_checkpoints(config.checkpoint_dir)
    ):
        checkpoint()
    progress.close()
    result.state = state
    result.tokens_per_second = state.tokens / max(state.train_seconds, 1e-9)
    result.target_tokens_per_second = state.target_tokens / max(state.train_seconds, 1e-9)
    return result


# --------------------------------------------------------------------------------------------------
# The translation job (what scripts/run_translation.py runs)
# --------------------------------------------------------------------------------------------------

#: Defaults for the built-in task (no data arguments): a tiny model that learns the invented language
#: in about 3 minutes on 2 CPU cores. Keys are ``run_translation.py`` argument names.
BUILTIN_HPARAMS: dict[str, Any] = dict(
    preset="tiny", vocab_size=1000, max_tokens=2048, learning_rate=5e-3, num_warmup_steps=100,
    max_train_steps=600, dropout=0.1, label_smoothing=0.1, weight_decay=1e-4, num_beams=4,
    checkpointing_steps=200, eval_steps=300, logging_steps=50, max_source_length=64, max_target_length=64,
)

# DATASET_RECIPES["..."]["hparams"] key -> run_translation.py argument.
_RECIPE_KEYS = {
    "preset": "preset", "max_tokens": "max_tokens", "learning_rate": "learning_rate",
    "lr_scheduler": "lr_scheduler_type", "warmup_steps": "num_warmup_steps", "weight_decay": "weight_decay",
    "label_smoothing": "label_smoothing", "dropout": "dropout", "max_epochs": "num_train_epochs",
    "max_steps": "max_train_steps", "num_beams": "num_beams", "length_penalty": "length_penalty",
    "bleu_tokenize": "bleu_tokenize", "vocab_size": "vocab_size", "max_source_length": "max_source_length",
    "max_target_length": "max_target_length",
}


def recipe_defaults(name: str) -> dict[str, Any]:
    """A dataset recipe's hyperparameters as ``run_translation.py`` argument defaults.

    Args:
        name: a key of :data:`hf_rskip.data.DATASET_RECIPES`, or ``"builtin"`` for :data:`BUILTIN_HPARAMS`.
    """
    if name == "builtin":
        return dict(BUILTIN_HPARAMS)
    from .data import recipe_hparams

    hparams = recipe_hparams(name)
    out = {_RECIPE_KEYS[k]: v for k, v in hparams.items() if k in _RECIPE_KEYS}
    if "adam_betas" in hparams:
        out["adam_beta1"], out["adam_beta2"] = hparams["adam_betas"]
    return out


_SIZE_FIELDS = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim")
_DATA_FIELDS = ("dataset_name", "train_file", "validation_file", "test_file")


class TranslationArgumentError(ValueError):
    """A bad ``run_translation.py`` option or combination; the message starts with the option's name."""


def _arg_error(option: str, message: str) -> TranslationArgumentError:
    return TranslationArgumentError(f"--{option}: {message}")


def check_translation_args(args: Any) -> None:
    """Checks option values and their combinations before anything is loaded or trained.

    Args:
        args: the parsed ``run_translation.py`` namespace.

    Raises:
        ValueError: naming the option (``--name: ...``) and what is accepted.
    """
    from .configuration_rskip import TEXT_PRESETS
    from .evaluation import BLEU_TOKENIZERS

    positive = ("max_tokens", "num_beams", "gradient_accumulation_steps", "logging_steps", "eval_batch_size",
                "max_source_length", "max_target_length", "average_checkpoints")
    for name in positive:
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise _arg_error(name, f"{value!r} must be an integer >= 1")
    for name in ("max_train_steps", "num_train_epochs", "keep_last_checkpoints", "vocab_size",
                 "max_train_samples", "max_eval_samples", "max_predict_samples", *_SIZE_FIELDS):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _arg_error(name, f"{value!r} must be an integer >= 1")
    if args.max_length_a < 0 or args.max_length_b < 0 or args.max_length_a == args.max_length_b == 0:
        raise _arg_error("max_length_a", f"{args.max_length_a} and --max_length_b {args.max_length_b} must be >= 0 "
                                         "and not both 0")
    problem = grad_norm_option_problem(args.log_grad_norms_every, args.with_tracking)
    if problem:
        raise _arg_error("log_grad_norms_every", problem)
    if args.learning_rate <= 0:
        raise _arg_error("learning_rate", f"{args.learning_rate!r} must be > 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise _arg_error("label_smoothing", f"{args.label_smoothing!r} must be in [0, 1)")
    if args.bleu_tokenize not in BLEU_TOKENIZERS:
        raise _arg_error("bleu_tokenize", f"{args.bleu_tokenize!r} is not a sacreBLEU tokenizer; "
                                          f"accepted: {list(BLEU_TOKENIZERS)}")
    if args.lr_scheduler_type not in LR_SCHEDULERS:
        raise _arg_error("lr_scheduler_type", f"{args.lr_scheduler_type!r}; accepted: {list(LR_SCHEDULERS)}")
    if args.preset not in TEXT_PRESETS:
        raise _arg_error("preset", f"{args.preset!r} is unknown; accepted: {sorted(TEXT_PRESETS)}")
    for name in ("checkpointing_steps", "eval_steps"):
        value = getattr(args, name)
        if value is not None and value != "epoch" and (not isinstance(value, int) or value < 1):
            raise _arg_error(name, f"{value!r} must be an integer >= 1, 'epoch' or unset")
    if args.average_checkpoints > 1 and args.checkpointing_steps is None:
        raise _arg_error("average_checkpoints",
                         f"{args.average_checkpoints} needs checkpoints: set --checkpointing_steps")
    if args.keep_last_checkpoints is not None and args.keep_last_checkpoints < args.average_checkpoints:
        raise _arg_error("keep_last_checkpoints", f"{args.keep_last_checkpoints} keeps fewer checkpoints than "
                                                  f"--average_checkpoints {args.average_checkpoints} averages")
    has_data = args.recipe is not None or any(getattr(args, f) for f in _DATA_FIELDS)
    if has_data and args.recipe is None and (not args.source_lang or not args.target_lang):
        raise _arg_error("source_lang", "--source_lang and --target_lang are required with --dataset_name or "
                                        "--train_file/--validation_file/--test_file")
    if args.push_to_hub and not args.hub_model_id:
        raise _arg_error("hub_model_id", "--push_to_hub needs --hub_model_id (e.g. 'user/rskip-en-de')")
    from huggingface_hub import constants

    for name in ("model_name_or_path", "tokenizer_name"):
        value = getattr(args, name)
        if value is not None and not Path(value).is_dir() and constants.HF_HUB_OFFLINE:
            raise _arg_error(name, f"{value!r} is not a folder, and the Hub is offline (HF_HUB_OFFLINE=1)")
    if args.model_name_or_path is not None:
        changed = [f for f in _SIZE_FIELDS if getattr(args, f) is not None]
        if changed:
            raise _arg_error(changed[0], "size arguments build a fresh model; they cannot change --model_name_or_path")
    else:  # the model's options are checked now, not after the data and the tokenizer are ready
        _fresh_config(args, dict(pad_token_id=2, eos_token_id=0, decoder_start_token_id=2, vocab_size=8))


def _load_raw_data(args: Any) -> tuple[Any, str, str, dict[str, Any]]:
    """The raw splits, the language pair and a description of the data for results and the card."""
    from .data import (BUILTIN_SOURCE_LANG, BUILTIN_TARGET_LANG, DATASET_RECIPES, builtin_translation_task,
                       load_recipe, load_translation_datasets)

    if args.recipe is not None and args.recipe != "builtin":
        recipe = DATASET_RECIPES[args.recipe]
        overrides = {k: getattr(args, k) for k in (*_DATA_FIELDS, "dataset_config_name") if getattr(args, k)}
        if args.source_lang:
            overrides.update(source_lang=args.source_lang, target_lang=args.target_lang)
        raw = load_recipe(args.recipe, cache_dir=args.cache_dir, **overrides)
        src = overrides.get("source_lang", recipe["source_lang"])
        tgt = overrides.get("target_lang", recipe["target_lang"])
        dataset_id = recipe.get("dataset_name") or args.recipe
        info = {"dataset": dataset_id, "dataset_name": args.recipe, "dataset_config": recipe.get("dataset_config_name")}
    elif any(getattr(args, f) for f in _DATA_FIELDS):
        raw = load_translation_datasets(
            source_lang=args.source_lang, target_lang=args.target_lang, dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name, train_file=args.train_file,
            validation_file=args.validation_file, test_file=args.test_file, cache_dir=args.cache_dir,
        )
        src, tgt = args.source_lang, args.target_lang
        name = args.dataset_name or Path(args.train_file or args.test_file or args.validation_file).name
        info = {"dataset": args.dataset_name or "local files", "dataset_name": name,
                "dataset_config": args.dataset_config_name}
    else:
        raw = builtin_translation_task(args.builtin_num_train, args.builtin_num_valid, args.builtin_num_test,
                                       seed=args.builtin_seed)
        src, tgt = BUILTIN_SOURCE_LANG, BUILTIN_TARGET_LANG
        info = {"dataset": "builtin", "dataset_name": "hf_rskip built-in task (generated, en→invented language)",
                "dataset_config": f"seed={args.builtin_seed}"}
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples),
                         ("test", args.max_predict_samples)):
        if limit is not None and split in raw and len(raw[split]) > limit:
            raw[split] = raw[split].select(range(limit))
    return raw, src, tgt, info


def _load_or_train_tokenizer(
    args: Any, raw: Any, src: str, tgt: str, accelerator: Any, resuming: bool
) -> tuple[Any, str]:
    """The tokenizer: ``--tokenizer_name``, the model's own, the run's saved one (on resume) or a new one."""
    from transformers import AutoTokenizer

    from .data import train_tokenizer

    output_dir = Path(args.output_dir)
    for option in ("tokenizer_name", "model_name_or_path"):
        source = getattr(args, option)
        if source is None or (option == "model_name_or_path" and Path(source).is_dir()
                              and not (Path(source) / "tokenizer_config.json").is_file()):
            continue  # a model folder without a tokenizer: train one below
        try:
            return AutoTokenizer.from_pretrained(source), f"loaded from {source}"
        except (OSError, ValueError) as err:
            raise _arg_error(option, f"no tokenizer could be loaded from {source!r}: {err}") from None
    saved = (output_dir / "tokenizer_config.json").is_file()
    # The main process trains and saves; the others (and a resumed run) read that file, so all agree exactly.
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (resuming and saved):
            if "train" not in raw:
                raise _arg_error("tokenizer_name", "there is no training data to train a tokenizer on")
            texts = (pair[lang] for pair in raw["train"]["translation"] for lang in (src, tgt))
            tokenizer = train_tokenizer(texts, args.vocab_size)
            output_dir.mkdir(parents=True, exist_ok=True)
            tokenizer.save_pretrained(output_dir)
        tokenizer = AutoTokenizer.from_pretrained(output_dir)
    return tokenizer, f"BPE trained on the training data (tokenizers library), {len(tokenizer)} tokens"


def _build_model(args: Any, tokenizer: Any) -> Any:
    """A saved RSkip model, a converted Marian model, or a fresh one from a preset and size arguments."""
    from transformers import AutoConfig

    from . import RSkipForConditionalGeneration

    scheme_overrides = {k: getattr(args, k) for k in ("residual_scheme", "skip_lambda", "residual_norm")
                        if getattr(args, k) is not None}
    dropout_overrides = {k: getattr(args, k) for k in ("dropout", "attention_dropout", "activation_dropout")
                         if getattr(args, k) is not None}
    if args.model_name_or_path is not None:
        try:
            model_type = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=True).model_type
        except (OSError, ValueError) as err:
            raise _arg_error("model_name_or_path", f"no model config in {args.model_name_or_path!r}: {err}") from None
        if model_type == "marian":
            model = RSkipForConditionalGeneration.from_marian(args.model_name_or_path, **scheme_overrides,
                                                              **dropout_overrides)
        elif model_type == "rskip":
            model = RSkipForConditionalGeneration.from_pretrained(args.model_name_or_path, **dropout_overrides)
            if scheme_overrides and any(getattr(model.config, k) != v for k, v in scheme_overrides.items()):
                raise _arg_error("residual_scheme", f"{args.model_name_or_path} was trained with "
                                 f"{model.config.residual_scheme} λ={model.config.skip_lambda}; a saved RSkip model "
                                 "keeps its scheme (convert a Marian model to change it)")
        else:
            raise _arg_error("model_name_or_path", f"{args.model_name_or_path} holds a {model_type!r} model; "
                             "accepted: an RSkip model or a Marian model (converted with from_marian)")
        if model.config.vocab_size < len(tokenizer):
            raise _arg_error("tokenizer_name", f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                             f"has {model.config.vocab_size}")
        return model
    from .data import special_token_ids

    return RSkipForConditionalGeneration(_fresh_config(args, special_token_ids(tokenizer)))


def _fresh_config(args: Any, special_ids: Mapping[str, int]) -> Any:
    """The config of a fresh model: the preset, the size/scheme/dropout options, the tokenizer's ids.

    Raises:
        TranslationArgumentError: naming the option when the config rejects a value.
    """
    from . import RSkipConfig

    options = {k: getattr(args, k) for k in (*_SIZE_FIELDS, "residual_scheme", "skip_lambda", "residual_norm",
                                             "dropout", "attention_dropout", "activation_dropout")
               if getattr(args, k) is not None}
    try:
        return RSkipConfig.from_preset(
            args.preset, **{"residual_scheme": "rskip_ln", "skip_lambda": 2, **options}, **special_ids,
            # Embeddings scaled by sqrt(d_model), as in Vaswani et al. and Marian's released models.
            scale_embedding=True, max_position_embeddings=max(512, args.max_source_length, args.max_target_length),
        )
    except ValueError as err:  # RSkipConfig names the bad field first; the options carry the same names
        raise TranslationArgumentError(f"--{str(err).split('=')[0]}: {err}") from None


def _set_generation_config(model: Any, args: Any) -> None:
    """What `generate` and the pipeline use by default for this model: the run's decoding settings."""
    gen = model.generation_config
    gen.num_beams = args.num_beams
    gen.length_penalty = args.length_penalty
    gen.early_stopping = args.num_beams > 1
    gen.pad_token_id = model.config.pad_token_id
    gen.eos_token_id = model.config.eos_token_id
    gen.decoder_start_token_id = model.config.decoder_start_token_id
    gen.forced_eos_token_id = model.config.eos_token_id
    # The decoder starts from <pad> (Marian's convention); it must never emit it afterwards.
    gen.bad_words_ids = [[model.config.pad_token_id]]


def _flat_hparams(args: Any) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items() if v is not None}


def run_translation(args: Any, command: str | None = None) -> dict[str, Any]:
    """Trains (or only evaluates) a translation model as ``scripts/run_translation.py`` describes.

    Steps: check the options; load and clean the data; load or train the tokenizer; build the model; train
    with :func:`train_loop` (token batches, label smoothing, inverse-sqrt warm-up, checkpoints, resume,
    validation BLEU); optionally average the last checkpoints; evaluate on validation and test; save the
    model, tokenizer, generation config, predictions, ``results.json`` and a model card in ``output_dir``;
    optionally push that folder to the Hub.

    Args:
        args: the parsed ``run_translation.py`` namespace.
        command: the command line, recorded in the results and the model card.

    Returns:
        The results written to ``results.json``.
    """
    import json
    import platform

    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForSeq2Seq

    from .checkpointing import (CheckpointError, average_checkpoints, list_checkpoints, load_averaged_weights,
                                resolve_checkpoint)
    from .data import TokenBatchSampler, clean_pairs, token_lengths, tokenize_pairs
    from .evaluation import evaluate_translation
    from .modelcard import translation_eval_results, write_model_card

    check_translation_args(args)
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    accelerator = Accelerator(
        # Without any accelerator device, a torchrun-style launch (`accelerate launch --multi_gpu`) must use
        # CPU DDP over gloo; otherwise every process would silently train alone.
        cpu=not (torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        # train_loop steps the schedule once per optimizer step, whatever the number of processes.
        step_scheduler_with_optimizer=False,
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
        if accelerator.is_main_process:  # starting over: old checkpoints must not be averaged or resumed
            import shutil

            shutil.rmtree(checkpoint_dir)
        accelerator.wait_for_everyone()
    set_seed(args.seed)

    # Data: loading errors (missing files, misaligned lines, bad UTF-8 / JSON) surface here, before training.
    raw, src, tgt, data_info = _load_raw_data(args)
    counts: dict[str, Any] = {}
    for split in list(raw):
        raw[split], dropped = clean_pairs(raw[split], src, tgt)
        counts[f"{split}_dropped_empty"] = dropped["dropped_empty"]
        counts[f"{split}_pairs"] = len(raw[split])
    do_train = "train" in raw and len(raw["train"]) > 0
    if not do_train and args.model_name_or_path is None:
        raise _arg_error("train_file", "no training data and no --model_name_or_path: nothing to train or evaluate")
    if do_train and "validation" not in raw:
        # No validation split given: hold out a small part of the training data, reproducibly.
        held_out = raw["train"].train_test_split(test_size=min(500, max(1, len(raw["train"]) // 20)), seed=args.seed)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
        counts["validation_held_out_from_train"] = len(raw["validation"])

    tokenizer, tokenizer_description = _load_or_train_tokenizer(args, raw, src, tgt, accelerator, resume is not None)
    model = _build_model(args, tokenizer)
    _set_generation_config(model, args)

    def eval_split(split: str, prefix: str, predictions_file: Path | None = None) -> dict[str, Any]:
        pairs = raw[split]["translation"]
        return evaluate_translation(
            model, tokenizer, [p[src] for p in pairs], [p[tgt] for p in pairs], prefix=prefix,
            bleu_tokenize=args.bleu_tokenize, predictions_file=predictions_file, accelerator=accelerator,
            num_beams=args.num_beams, length_penalty=args.length_penalty, max_source_length=args.max_source_length,
            batch_size=args.eval_batch_size, max_length_a=args.max_length_a, max_length_b=args.max_length_b,
        )

    result = None
    if do_train:
        with accelerator.main_process_first():
            train_set, truncated = tokenize_pairs(raw["train"], tokenizer, src, tgt, args.max_source_length,
                                                  args.max_target_length)
        counts["train_truncated"] = truncated["truncated"]
        sampler = TokenBatchSampler(token_lengths(train_set), args.max_tokens, shuffle=True, seed=args.seed)
        counts["train_oversized_batches"] = sampler.num_oversized
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                          pad_to_multiple_of=8 if args.mixed_precision != "no" else None)
        # Its own generator: a new iterator (each epoch, or on resume) then takes no draw from the global RNG.
        train_dataloader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collator,
                                      generator=torch.Generator().manual_seed(args.seed))
        optimizer = build_optimizer(model, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                                    adam_betas=(args.adam_beta1, args.adam_beta2), adam_epsilon=args.adam_epsilon)
        model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
        steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
        if args.max_train_steps is not None:
            max_train_steps = args.max_train_steps
            num_train_epochs = math.ceil(max_train_steps / steps_per_epoch)
        else:
            num_train_epochs = args.num_train_epochs or 1
            max_train_steps = num_train_epochs * steps_per_epoch
        scheduler = accelerator.prepare(build_scheduler(optimizer, lr_scheduler_type=args.lr_scheduler_type,
                                                        num_warmup_steps=args.num_warmup_steps,
                                                        num_training_steps=max_train_steps))
        if args.with_tracking:
            accelerator.init_trackers("runs", config=_flat_hparams(args))
        unwrapped = accelerator.unwrap_model(model)
        accelerator.print(
            f"{unwrapped.config.residual_scheme} λ={unwrapped.config.skip_lambda}: "
            f"{unwrapped.num_parameters():,} parameters; {len(raw['train'])} training pairs "
            f"({counts['train_dropped_empty']} empty dropped, {counts['train_truncated']} truncated); "
            f"{len(train_dataloader)} batches/epoch/process; {max_train_steps} steps"
        )
        loop_config = LoopConfig(
            max_train_steps=max_train_steps, num_train_epochs=num_train_epochs, label_smoothing=args.label_smoothing,
            max_grad_norm=args.max_grad_norm, checkpoint_dir=checkpoint_dir,
            checkpointing_steps=args.checkpointing_steps,
            keep_last_checkpoints=args.keep_last_checkpoints, eval_steps=args.eval_steps,
            logging_steps=args.logging_steps, with_tracking=args.with_tracking,
            log_grad_norms_every=args.log_grad_norms_every,
        )
        result = train_loop(accelerator, model, optimizer, scheduler, train_dataloader, sampler, loop_config,
                            resume_from=resume, evaluate=lambda step: eval_split("validation", "eval"))
        if args.average_checkpoints > 1:
            paths = list_checkpoints(checkpoint_dir)[-args.average_checkpoints:]
            load_averaged_weights(accelerator.unwrap_model(model), average_checkpoints(paths))
            accelerator.print(f"averaged {len(paths)} checkpoints: {', '.join(p.name for p in paths)}")
        accelerator.wait_for_everyone()
    else:
        model = model.to(accelerator.device)

    # Final evaluation with the weights that are saved.
    results: dict[str, Any] = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in raw:
            results.update(eval_split(split, prefix, output_dir / f"{prefix}_predictions.txt"))
            results[f"{prefix}_split_name"] = (Path(args.test_file).name if split == "test" and args.test_file
                                               else split)

    unwrapped = accelerator.unwrap_model(model)
    config = unwrapped.config
    results.update(
        residual_scheme=config.residual_scheme, skip_lambda=config.skip_lambda, residual_norm=config.residual_norm,
        num_parameters=unwrapped.num_parameters(), source_lang=src, target_lang=tgt, num_beams=args.num_beams,
        length_penalty=args.length_penalty, bleu_tokenize=args.bleu_tokenize, seed=args.seed,
        num_processes=accelerator.num_processes, **data_info, **counts,
    )
    if result is not None:
        results.update(
            train_steps=result.state.completed_steps, train_epochs=result.state.epoch,
            train_loss=result.train_loss, train_nll=result.train_nll, train_runtime=result.state.train_seconds,
            train_tokens_per_second=result.tokens_per_second,
            train_target_tokens_per_second=result.target_tokens_per_second,
            resumed_from=str(result.resumed_from) if result.resumed_from else None,
            averaged_checkpoints=args.average_checkpoints if args.average_checkpoints > 1 else None,
        )
    results["command"] = command

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    # Set only now: evaluation passes max_new_tokens per batch, and generate warns when both are set.
    unwrapped.generation_config.max_length = args.max_target_length
    unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                              save_function=accelerator.save, state_dict=accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        model_name = args.hub_model_id or output_dir.resolve().name
        example = raw["test" if "test" in raw else "validation"][0]["translation"][src]
        score_rows = [
            {"split": results[f"{p}_split_name"], "bleu": f"{results[f'{p}_bleu']:.2f}",
             "chrf": f"{results[f'{p}_chrf']:.2f}"}
            for p in ("eval", "test") if f"{p}_bleu" in results
        ]
        write_model_card(
            output_dir, template_name="translation.md",
            card_data_kwargs=dict(
                model_name=model_name, language=[src, tgt], license=args.license, library_name="transformers",
                pipeline_tag="translation",
                datasets=[data_info["dataset"]] if args.dataset_name or args.recipe else None,
                tags=["translation", "hf_rskip", "rskip", config.residual_scheme], metrics=["bleu", "chrf"],
            ),
            eval_results=translation_eval_results(results, dataset_type=data_info["dataset"],
                                                  dataset_name=data_info["dataset_name"],
                                                  dataset_config=data_info["dataset_config"],
                                                  source_lang=src, target_lang=tgt),
            model_id=args.hub_model_id or str(output_dir.resolve()),
            residual_scheme=config.residual_scheme, skip_lambda=config.skip_lambda, residual_norm=config.residual_norm,
            d_model=config.d_model, encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers,
            attention_heads=config.encoder_attention_heads, ffn_dim=config.encoder_ffn_dim,
            num_parameters=f"{unwrapped.num_parameters():,}", source_lang=src, target_lang=tgt,
            dataset_name=data_info["dataset_name"], dataset_config=data_info["dataset_config"],
            train_pairs=counts.get("train_pairs", 0), tokenizer_description=tokenizer_description,
            train_steps=results.get("train_steps", 0), train_epochs=results.get("train_epochs", 0),
            max_tokens=args.max_tokens, gradient_accumulation_steps=args.gradient_accumulation_steps,
            num_processes=accelerator.num_processes, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, num_warmup_steps=args.num_warmup_steps,
            label_smoothing=args.label_smoothing, max_grad_norm=args.max_grad_norm,
            average_checkpoints=args.average_checkpoints,
            train_runtime=f"{results.get('train_runtime', 0.0):.0f} s",
            tokens_per_second=f"{results.get('train_tokens_per_second', 0.0):,.0f}",
            hardware=(f"{accelerator.num_processes} × {accelerator.device.type} "
                      f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
            num_beams=args.num_beams, length_penalty=args.length_penalty, score_rows=score_rows,
            signatures=sorted({v for k, v in results.items() if k.endswith("_signature")}),
            example_source=example.replace('"', "'"), command=command or "",
        )
        summary = ", ".join(f"{k}={results[k]:.2f}" for k in ("eval_bleu", "eval_chrf", "test_bleu", "test_chrf")
                            if k in results)
        accelerator.print(f"{summary}\n{results.get('eval_bleu_signature', '')}\nsaved to {output_dir}")
        if args.push_to_hub:
            from .hub import push_folder_to_hub

            url = push_folder_to_hub(output_dir, args.hub_model_id, token=args.hub_token,
                                     private=args.hub_private_repo)
            accelerator.print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return results


__all__ = [
    "BUILTIN_HPARAMS",
    "LR_SCHEDULERS",
    "check_translation_args",
    "recipe_defaults",
    "run_translation",
    "LoopConfig",
    "LoopResult",
    "LoopState",
    "TranslationArgumentError",
    "build_optimizer",
    "build_scheduler",
    "label_smoothed_loss",
    "seq2seq_loss",
    "train_loop",
]
