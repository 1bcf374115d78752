"""Tests of hf_rskip.training.tasks: the translation loss is fairseq's label-smoothed criterion, counts add up."""

from __future__ import annotations

import pytest
import torch

from hf_rskip.training.tasks import ImageClassificationTask, TranslationTask, token_losses


def test_token_losses_match_the_label_smoothing_formula_and_ignore_padding() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    eps = 0.2
    loss, nll = token_losses(logits, labels, eps)
    logp = logits.log_softmax(-1)[labels != -100]  # (N, V)
    target = labels[labels != -100]
    expected_nll = -logp.gather(1, target[:, None]).sum()
    expected = (1 - eps) * expected_nll + eps * (-logp.mean(-1)).sum()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected)
    plain, plain_nll = token_losses(logits, labels, 0.0)
    torch.testing.assert_close(plain, expected_nll)
    assert plain_nll.requires_grad is False
    # half-precision logits are scored in float32
    half, _ = token_losses(logits.bfloat16(), labels, eps)
    assert half.dtype == torch.float32


def test_translation_summary_is_a_token_mean() -> None:
    task = TranslationTask(0.1)
    summary = task.summarize({"loss": 30.0, "nll": 20.0, "target_tokens": 10.0})
    assert summary == pytest.approx({"loss": 3.0, "nll": 2.0, "ppl": torch.tensor(2.0).exp().item()})


def test_image_counts_add_up_to_accuracy() -> None:
    class Model(torch.nn.Module):
        def forward(self, pixel_values, labels):
            logits = torch.zeros(len(labels), 3)
            logits[torch.arange(len(labels)), 0] = 1.0  # always class 0
            loss = torch.nn.functional.cross_entropy(logits, labels)
            return type("Out", (), {"loss": loss, "logits": logits})

    task = ImageClassificationTask(mean=[0.5] * 3, std=[0.5] * 3, random_crop_padding=0, horizontal_flip=False)
    images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    loss, counts = task.training_step(Model(), (images, torch.tensor([0, 0, 1, 2])))
    assert counts["images"] == 4 and counts["correct"] == 2
    assert task.summarize({k: float(v) for k, v in counts.items()})["accuracy"] == 0.5
    assert counts["loss"] == pytest.approx(4 * float(loss))
