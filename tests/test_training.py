"""Tests for hf_rskip.training: optimizer groups, schedule, label-smoothed loss, the loop and its resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.checkpointing import list_checkpoints
from hf_rskip.data import TokenBatchSampler
from hf_rskip.training import (
    LoopConfig,
    build_optimizer,
    build_scheduler,
    label_smoothed_loss,
    train_loop,
)
from tests.conftest import tiny_text_config


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own Accelerator (gradient accumulation differs between tests)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_weight_decay_only_on_matrices_including_rskip_norms_excluded() -> None:
    model = RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=3))
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.01)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    # The recursive norms of rskip_ln (norms.1, norms.2) are found by shape, with no name list.
    assert "model.encoder.layers.0.final_layer_norm.norms.2.weight" in no_decay_names
    trainable = [p for p in model.parameters() if p.requires_grad]  # the sinusoidal positions are frozen
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    with pytest.raises(ValueError, match="learning_rate"):
        build_optimizer(model, learning_rate=0.0)


def test_inverse_sqrt_schedule_warms_up_then_decays_as_one_over_sqrt_step() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    scheduler = build_scheduler(optimizer, lr_scheduler_type="inverse_sqrt", num_warmup_steps=100)
    lrs = []
    for _ in range(400):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[50] == pytest.approx(0.5)
    assert lrs[100] == pytest.approx(1.0)
    assert lrs[399] == pytest.approx(math.sqrt(100 / 399))
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        build_scheduler(optimizer, lr_scheduler_type="exotic")


def test_label_smoothed_loss_matches_its_formula_and_ignores_padding() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 3:] = -100
    eps = 0.2
    loss, nll = label_smoothed_loss(logits, labels, eps)
    logp = logits.log_softmax(-1)[labels != -100]  # (N, V)
    target = labels[labels != -100]
    expected_nll = -logp.gather(1, target[:, None]).mean()
    expected = (1 - eps) * expected_nll + eps * (-logp.mean(-1)).mean()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, expected)
    plain, plain_nll = label_smoothed_loss(logits, labels, 0.0)
    torch.testing.assert_close(plain, expected_nll)
    with pytest.raises(ValueError, match="label_smoothing"):
        label_smoothed_loss(logits, labels, 1.0)


# ------------------------------------------------------------------------------------------------
# The loop on a copy task: a tiny model, word ids, token batches.
# ------------------------------------------------------------------------------------------------

class _IdTokenizer:
    """Just enough of a tokenizer for DataCollatorForSeq2Seq: pads lists of ids."""

    pad_token_id = 0
    padding_side = "right"

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def _copy_task(n: int = 96, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 9, (1,), generator=g))
        ids = torch.randint(3, 11, (length,), generator=g).tolist() + [1]  # 8 symbols: copying is learned fast
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def _run(tmp_path: Path, *, steps: int, accumulation: int = 1, resume: Path | None = None,
         checkpointing_steps=None, max_tokens: int = 64, epochs: int = 100):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation, step_scheduler_with_optimizer=False)
    model = RSkipForConditionalGeneration(tiny_text_config(dropout=0.1))
    rows = _copy_task()
    sampler = TokenBatchSampler([len(r["input_ids"]) for r in rows], max_tokens, shuffle=True, seed=3)
    collator = DataCollatorForSeq2Seq(_IdTokenizer(), model=model, label_pad_token_id=-100)
    loader = DataLoader(rows, batch_sampler=sampler, collate_fn=collator, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, learning_rate=3e-3, weight_decay=0.01)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer, num_warmup_steps=5))
    config = LoopConfig(max_train_steps=steps, num_train_epochs=epochs, checkpoint_dir=tmp_path,
                        checkpointing_steps=checkpointing_steps, logging_steps=5, show_progress=False)
    result = train_loop(accelerator, model, optimizer, scheduler, loader, sampler, config, resume_from=resume)
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return result, weights, len(loader)


def test_loop_learns_and_counts_steps_tokens_and_epochs(tmp_path: Path) -> None:
    result, _, batches_per_epoch = _run(tmp_path, steps=60)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.state.completed_steps == 60
    assert result.state.epoch == 60 // batches_per_epoch
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.tokens_per_second > 0 and result.state.tokens > result.state.target_tokens > 0
    assert result.checkpoints == []


def test_resume_mid_epoch_with_accumulation_gives_the_same_weights(tmp_path: Path) -> None:
    # 7 steps × 2 micro-batches: the checkpoint at step 3 falls inside an epoch; dropout is on.
    full, full_weights, batches_per_epoch = _run(tmp_path / "full", steps=7, accumulation=2, max_tokens=48)
    assert batches_per_epoch % 2 == 1 or batches_per_epoch > 6  # the checkpoint is not at an epoch boundary
    _run(tmp_path / "part", steps=3, accumulation=2, max_tokens=48, checkpointing_steps=3)
    (ckpt,) = list_checkpoints(tmp_path / "part")
    resumed, resumed_weights, _ = _run(tmp_path / "part", steps=7, accumulation=2, max_tokens=48, resume=ckpt,
                                       checkpointing_steps=3)
    assert resumed.resumed_from == ckpt and resumed.state.completed_steps == 7
    assert resumed.state.epoch == full.state.epoch and resumed.state.batches_in_epoch == full.state.batches_in_epoch
    for key, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, rtol=0, atol=0, msg=key)
    # And the run without the resume differs from a different seed's run: the check has teeth.
    assert not torch.equal(full_weights["model.shared.weight"],
                           RSkipForConditionalGeneration(tiny_text_config()).state_dict()["model.shared.weight"])
    assert [p.name for p in list_checkpoints(tmp_path / "part")] == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
