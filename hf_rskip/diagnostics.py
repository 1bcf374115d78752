"""Gradient norm per layer: the measurement behind the paper's gradient analysis.

Liu et al. (COLING 2020) argue that a scaled skip ``λ·x + F(x)`` distorts the gradient more as λ and depth grow,
and that normalization (and its recursion, rSkip) repairs it. What that predicts can be measured: the norm of the
gradient that reaches each layer of a deep stack, at initialization and early in training. Two views are given,
both per layer in depth order:

* ``"param"``: the L2 norm of the gradient of the loss over all parameters of the layer (the quantity Xiong et al.
  2020 plot for Pre-LN / Post-LN), and
* ``"output"``: the L2 norm of the gradient of the loss with respect to the layer's output hidden states (the
  signal the skip connections carry backwards; captured with tensor hooks).

A "layer" is any element of an ``nn.ModuleList`` attribute named ``layers``: the encoder and decoder layers of
:class:`~hf_rskip.RSkipForConditionalGeneration` (and of ``MarianMTModel``), and the basic blocks of every stage
of the PreAct-ResNet. So the helpers below work on any of these models unchanged.

Inside a training loop, after ``accelerator.backward(loss)`` and before ``optimizer.zero_grad()``::

    grad_logger = GradNormLogger(every=100)
    ...
    grad_logger(accelerator, model, step)   # logs grad_norm/<layer> through accelerator.log
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

GRAD_KINDS: tuple[str, ...] = ("param", "output")
"""The two views of a layer's gradient: over its parameters, or with respect to its output."""

# Wrappers whose names only add a prefix (HF heads, Accelerate / DDP / torch.compile) are stripped from layer names.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "resnet.")


def _short_name(name: str) -> str:
    """``model.encoder.layers.3`` -> ``encoder.layers.3``; ``resnet.stages.1.layers.0`` -> ``stages.1.layers.0``."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / ``torch.compile`` wrappers (Accelerate's ``unwrap_model`` without Accelerate)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of a model in depth order, by short name.

    Args:
        model: an :class:`~hf_rskip.RSkipForConditionalGeneration`, ``MarianMTModel``, an rSkip PreAct-ResNet, or
            any module whose stacks are ``nn.ModuleList`` attributes called ``layers``.

    Returns:
        ``{"encoder.layers.0": layer, ..., "decoder.layers.0": ...}`` for translation models,
        ``{"stages.0.layers.0": block, ...}`` for ResNets, in the order ``named_modules`` visits them (input to
        output within each stack).

    Raises:
        ValueError: the model has no ``layers`` list.
    """
    model = _unwrap(model)
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
            for index, layer in enumerate(module):
                found[_short_name(f"{name}.{index}")] = layer
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList named 'layers'; nothing to measure")
    return found


def stack_of(layer_name: str) -> str:
    """The stack a layer belongs to, for grouping and plotting: ``encoder``, ``decoder`` or ``blocks`` (ResNet)."""
    head = layer_name.split(".", 1)[0]
    return head if head in ("encoder", "decoder") else "blocks"


def _l2(tensors: Iterable[torch.Tensor]) -> float:
    """L2 norm of several tensors taken together, accumulated in float32 (bf16 grads would lose precision)."""
    total = torch.zeros((), dtype=torch.float64)
    for tensor in tensors:
        total += tensor.detach().float().pow(2).sum().double().cpu()
    return math.sqrt(float(total))


def param_grad_norms(model: nn.Module) -> dict[str, float]:
    """Per layer, the L2 norm of the gradient over all its parameters, from the ``.grad`` already there.

    Call it after ``backward`` (and before ``zero_grad``). Parameters without a gradient are skipped; a layer
    with none at all gets ``0.0``.

    Args:
        model: see :func:`layer_modules`.

    Returns:
        ``{layer_name: norm}`` in depth order.
    """
    return {
        name: _l2(p.grad for p in layer.parameters() if p.grad is not None)
        for name, layer in layer_modules(model).items()
    }


@contextlib.contextmanager
def capture_output_grad_norms(model: nn.Module) -> Iterator[dict[str, float]]:
    """While active, records the norm of ``d loss / d (layer output)`` for every layer during ``backward``.

    Usage::

        with capture_output_grad_norms(model) as norms:
            model(**batch).loss.backward()
        norms   # {"encoder.layers.0": 0.12, ...}

    A layer run several times in one forward (not the case here) keeps the norm of its last backward.

    Args:
        model: see :func:`layer_modules`.

    Yields:
        The dict that ``backward`` fills, in depth order once filled.
    """
    layers = layer_modules(model)
    norms: dict[str, float] = {}

    def forward_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(lambda grad: norms.__setitem__(name, _l2([grad])))

        return hook

    handles = [layer.register_forward_hook(forward_hook(name)) for name, layer in layers.items()]
    try:
        yield norms
    finally:
        for handle in handles:
            handle.remove()
        # backward visits layers output-to-input; hand the caller depth order
        ordered = {name: norms[name] for name in layers if name in norms}
        norms.clear()
        norms.update(ordered)


def default_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The loss the HF model computes from ``batch`` (which must hold ``labels``)."""
    return model(**batch).loss


@dataclass
class GradNormProfile:
    """Gradient norms per layer at one training step.

    Attributes:
        step: optimizer steps taken before this measurement (0 = at initialization).
        param: ``{layer_name: ||d loss / d θ_layer||}``.
        output: ``{layer_name: ||d loss / d h_layer||}``.
        loss: the loss of the measured batch.
    """

    step: int
    param: dict[str, float] = field(default_factory=dict)
    output: dict[str, float] = field(default_factory=dict)
    loss: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"step": self.step, "loss": self.loss, "param": dict(self.param), "output": dict(self.output)}


def measure_grad_norms(
    model: nn.Module,
    batch: Mapping[str, Any],
    *,
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] = default_loss,
    step: int = 0,
) -> GradNormProfile:
    """One forward and backward on ``batch``; returns both gradient views per layer and leaves the grads in place.

    Existing gradients are cleared first, so the result is this batch's gradient alone. The model's train/eval
    mode is left as it is (use ``model.eval()`` to measure without dropout).

    Args:
        model: see :func:`layer_modules`.
        batch: the model's keyword inputs, e.g. ``input_ids``, ``attention_mask``, ``labels``.
        loss_fn: ``loss_fn(model, batch) -> scalar``; by default the model's own loss.
        step: recorded in the profile (optimizer steps taken so far).
    """
    model.zero_grad(set_to_none=True)
    with capture_output_grad_norms(model) as output_norms:
        loss = loss_fn(model, batch)
        loss.backward()
    return GradNormProfile(step=step, param=param_grad_norms(model), output=dict(output_norms), loss=float(loss.detach()))


def grad_norms_during_training(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    optimizer: torch.optim.Optimizer,
    *,
    measure_at: Iterable[int] = (0,),
    loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] = default_loss,
    probe_batch: Mapping[str, Any] | None = None,
    scheduler: Any | None = None,
    max_grad_norm: float | None = None,
) -> list[GradNormProfile]:
    """Trains on ``batches`` and measures the per-layer gradient norms before the given optimizer steps.

    With ``probe_batch`` the measurement is a separate forward/backward on that fixed batch (so profiles at
    different steps see the same data); without it the training batch of that step is measured, at no extra cost.

    Args:
        model: see :func:`layer_modules`, in the mode to train in.
        batches: training batches; one optimizer step per batch, until ``max(measure_at)`` steps are taken.
        optimizer: the optimizer over ``model``'s parameters.
        measure_at: optimizer-step counts at which to measure (0 = at initialization).
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        probe_batch: a fixed batch to measure on, or None for the current training batch.
        scheduler: an LR scheduler stepped after every optimizer step, or None.
        max_grad_norm: clip the global gradient norm before each step (after measuring), or None.

    Returns:
        One :class:`GradNormProfile` per entry of ``measure_at`` that was reached, in step order.
    """
    wanted = sorted(set(int(s) for s in measure_at))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"measure_at={list(measure_at)!r} must name step counts >= 0")
    profiles: list[GradNormProfile] = []
    step = 0
    for batch in batches:
        if step in wanted:
            if probe_batch is not None:
                profiles.append(measure_grad_norms(model, probe_batch, loss_fn=loss_fn, step=step))
            else:
                profiles.append(measure_grad_norms(model, batch, loss_fn=loss_fn, step=step))
        if step >= wanted[-1]:
            break
        if probe_batch is not None or step not in wanted:  # the measured batch already left its gradient
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
    return profiles


def summarize_norms(norms: Mapping[str, float]) -> dict[str, float]:
    """How unevenly the gradient reaches the layers of each stack.

    Per stack (``encoder``, ``decoder``, ``blocks``): ``<stack>/first_over_last`` (the norm at the input end over
    the norm at the output end: > 1 means gradients grow towards the input, as with Post-LN's distortion), and
    ``<stack>/max_over_min``. Both are 1.0 for perfectly even gradients.

    Args:
        norms: ``{layer_name: norm}`` in depth order, e.g. ``GradNormProfile.param``.
    """
    stacks: dict[str, list[float]] = {}
    for name, value in norms.items():
        stacks.setdefault(stack_of(name), []).append(value)
    summary: dict[str, float] = {}
    for stack, values in stacks.items():
        low = min(values)
        summary[f"{stack}/first_over_last"] = values[0] / values[-1] if values[-1] > 0 else float("inf")
        summary[f"{stack}/max_over_min"] = max(values) / low if low > 0 else float("inf")
    return summary


class GradNormLogger:
    """Logs per-layer gradient norms through ``accelerator.log`` every ``every`` steps.

    Call it between ``accelerator.backward(loss)`` and ``optimizer.zero_grad()``. It reads the gradients already
    computed (no extra forward or backward), unwraps the prepared model, and logs
    ``{prefix}/{layer_name}`` for every layer plus the :func:`summarize_norms` figures under
    ``{prefix}_summary/...``. With mixed precision through a GradScaler the logged norms are the scaled ones;
    call it after ``accelerator.unscale_gradients()`` (or ``clip_grad_norm_``) for true norms.

    Args:
        every: log at steps divisible by ``every`` (step 0 included).
        prefix: the key prefix of the logged values.
    """

    def __init__(self, every: int = 100, *, prefix: str = "grad_norm") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be an integer >= 1")
        self.every = every
        self.prefix = prefix

    def values(self, model: nn.Module) -> dict[str, float]:
        """The dict that would be logged for ``model``'s current gradients."""
        norms = param_grad_norms(model)
        logged = {f"{self.prefix}/{name}": value for name, value in norms.items()}
        logged.update({f"{self.prefix}_summary/{key}": value for key, value in summarize_norms(norms).items()})
        return logged

    def __call__(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float] | None:
        """Logs at steps divisible by ``every``.

        Args:
            accelerator: an ``accelerate.Accelerator`` (anything with ``log(values, step=...)``).
            model: the (possibly prepared) model whose gradients to read.
            step: the global step, used for the schedule and as the logged step.

        Returns:
            The logged values, or None when this step is skipped.
        """
        if step % self.every:
            return None
        unwrap = getattr(accelerator, "unwrap_model", None)
        values = self.values(unwrap(model) if callable(unwrap) else model)
        accelerator.log(values, step=step)
        return values


def grad_norm_option_problem(every: Any, with_tracking: bool) -> str | None:
    """What is wrong with a loop's ``log_grad_norms_every`` option (None: nothing, or the option is unset)."""
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        return f"{every!r} must be an integer >= 1"
    if not with_tracking:
        return "needs --with_tracking (the norms are logged to its trackers)"
    return None


__all__ = [
    "GRAD_KINDS",
    "GradNormLogger",
    "GradNormProfile",
    "capture_output_grad_norms",
    "default_loss",
    "grad_norm_option_problem",
    "grad_norms_during_training",
    "layer_modules",
    "measure_grad_norms",
    "param_grad_norms",
    "stack_of",
    "summarize_norms",
]
