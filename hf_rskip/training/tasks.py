"""The tasks the loop trains: how a batch becomes a loss and summable counts, and how a model is evaluated.

Everything that differs between translation and image classification inside the training loop lives here; the
loop (:func:`hf_rskip.training.loop.train`) is the same for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def token_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross-entropy (to back-propagate) and summed NLL (to report), over non-padding tokens.

    Label smoothing is PyTorch's (``F.cross_entropy(label_smoothing=ε)``: ``(1 - ε)·NLL + ε·mean_v(-log p_v)``, as
    fairseq's criterion); the NLL beside it is computed without gradients.

    Args:
        logits: ``(B, T, V)`` decoder outputs.
        labels: ``(B, T)`` target ids, ``-100`` where padded.
        label_smoothing: ε in [0, 1).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    if flat_logits.dtype != torch.float32:
        flat_logits = flat_logits.float()  # the softmax in float32, as autocast would
    flat_labels = labels.reshape(-1)  # (B*T,)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, label_smoothing=label_smoothing,
                           reduction="sum")
    if label_smoothing == 0.0:
        return loss, loss.detach()
    with torch.no_grad():
        nll = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
    return loss, nll


class TranslationTask:
    """Seq2seq training with label smoothing; counts are summed loss, NLL and tokens.

    The labels are kept away from the model (its own loss would be plain cross-entropy, computed for nothing);
    the decoder reads ``decoder_input_ids`` from the collator (labels shifted right).

    Args:
        label_smoothing: ε of the smoothed loss.
        eval_dataloader: a prepared loader of collated validation batches; each evaluation reports its NLL
            (teacher-forced, no smoothing) as ``eval_nll`` and ``eval_ppl``.
        generate_eval: called as ``generate_eval(model)`` at evaluations for generation metrics (BLEU, chrF);
            None: none.
        accelerator: gathers the validation counts of all processes.
    """

    throughput_unit = "tokens"
    progress_keys = ("loss", "nll")
    eval_loss_key = "eval_nll"

    def __init__(self, label_smoothing: float = 0.1, *, eval_dataloader: Any = None,
                 generate_eval: Callable[[nn.Module], Mapping[str, Any]] | None = None,
                 accelerator: Any = None) -> None:
        self.label_smoothing = label_smoothing
        self.eval_dataloader = eval_dataloader
        self.generate_eval = generate_eval
        self.accelerator = accelerator

    def training_step(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits  # (B, T, V)
        labels = batch["labels"]
        loss_sum, nll_sum = token_losses(logits, labels, self.label_smoothing)
        target_tokens = (labels != -100).sum()
        counts = {"loss": loss_sum.detach(), "nll": nll_sum, "target_tokens": target_tokens,
                  "tokens": batch["attention_mask"].sum() + target_tokens, "sentences": labels.new_tensor(len(labels))}
        return loss_sum / target_tokens.clamp(min=1), counts

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        target = max(totals.get("target_tokens", 0.0), 1.0)
        nll = totals.get("nll", math.nan) / target
        return {"loss": totals.get("loss", math.nan) / target, "nll": nll, "ppl": math.exp(min(nll, 50.0))}

    @torch.no_grad()
    def validation_nll(self, model: nn.Module) -> dict[str, float]:
        """Mean token NLL and perplexity over the validation loader (all processes' batches)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in self.eval_dataloader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            _, nll = token_losses(model(**inputs).logits, batch["labels"], 0.0)
            sums += torch.stack([nll.double(), (batch["labels"] != -100).sum().double()])
        model.train(was_training)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        nll = float(sums[0] / sums[1].clamp(min=1))
        return {"eval_nll": nll, "eval_ppl": math.exp(min(nll, 50.0))}

    def evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if self.eval_dataloader is not None:
            metrics.update(self.validation_nll(model))
        if self.generate_eval is not None:
            metrics.update(self.generate_eval(model))
        return metrics


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    dataloader: Any,
    accelerator: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    prefix: str = "eval",
    channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over a prepared loader of ``(uint8 images (B, C, H, W), labels (B,))``.

    Every process runs its shard; ``gather_for_metrics`` drops the samples Accelerate repeats to even out the last
    batch, so the counts are exact. The model is left in the mode it was in.

    Returns:
        ``{prefix}_accuracy`` (fraction in [0, 1]), ``{prefix}_loss``, ``{prefix}_samples``, ``{prefix}_runtime``
        (s) and ``{prefix}_samples_per_second``.
    """
    from ..data.images import normalize_images

    was_training = model.training
    model.eval()
    started = time.perf_counter()
    correct = total = 0
    loss_sum = 0.0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in dataloader:
        pixel_values = normalize_images(images, mean, std).contiguous(memory_format=memory_format)
        logits = model(pixel_values=pixel_values).logits.float()  # (B, num_labels)
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


class ImageClassificationTask:
    """Classification of uint8 image batches: augmentation and normalization as batched torch ops, then the model.

    Args:
        mean, std: per-channel normalization (on the [0, 1] scale).
        random_crop_padding: pixels of zero padding for the random crop (0: none).
        horizontal_flip: random horizontal flips.
        eval_dataloader: a prepared loader of ``(images, labels)`` scored at evaluations; None: no evaluation.
        accelerator: gathers evaluation predictions over processes.
        channels_last: hand the model NHWC batches (with a channels-last model: 1.4x faster convolutions on a CPU
            with AVX-512, 2.4x together with bf16 autocast).
    """

    throughput_unit = "images"
    progress_keys = ("loss", "accuracy")
    eval_loss_key = "eval_loss"

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], random_crop_padding: int = 4,
                 horizontal_flip: bool = True, eval_dataloader: Any = None, accelerator: Any = None,
                 channels_last: bool = False) -> None:
        from ..data.images import CifarAugment

        self.mean, self.std = list(mean), list(std)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.augment = CifarAugment(random_crop_padding, horizontal_flip)
        self.eval_dataloader = eval_dataloader
        self.accelerator = accelerator

    def training_step(self, model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        from ..data.images import normalize_images

        images, labels = batch
        pixel_values = normalize_images(self.augment(images), self.mean, self.std)  # (B, C, H, W) float
        pixel_values = pixel_values.contiguous(memory_format=self.memory_format)
        outputs = model(pixel_values=pixel_values, labels=labels)
        count = labels.new_tensor(labels.numel())
        counts = {"loss": outputs.loss.detach() * count, "correct": (outputs.logits.detach().argmax(-1) == labels).sum(),
                  "images": count}
        return outputs.loss, counts

    def summarize(self, totals: Mapping[str, float]) -> dict[str, float]:
        images = max(totals.get("images", 0.0), 1.0)
        return {"loss": totals.get("loss", math.nan) / images, "accuracy": totals.get("correct", 0.0) / images}

    def evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        if self.eval_dataloader is None:
            return {}
        return evaluate_classifier(model, self.eval_dataloader, self.accelerator, mean=self.mean, std=self.std,
                                   channels_last=self.channels_last)


__all__ = ["ImageClassificationTask", "TranslationTask", "evaluate_classifier", "token_losses"]
