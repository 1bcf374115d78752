"""Tests of hf_rskip.training.loop: the one loop, on a copy task: it learns, counts, resumes exactly, stops on a
non-finite loss without saving it, and says where the last checkpoint is when interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.data import TokenBatchSampler
from hf_rskip.training import LoopConfig, NonFiniteLossError, TrainingInterrupted, TranslationTask, train
from hf_rskip.training.checkpointing import list_checkpoints
from hf_rskip.training.optim import build_optimizer, build_scheduler
from tests.conftest import tiny_text_config


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own Accelerator (gradient accumulation differs between tests)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


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
         checkpointing_steps=None, max_tokens: int = 64, epochs: int = 100, learning_rate: float = 3e-3,
         task=None):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation, step_scheduler_with_optimizer=False)
    model = RSkipForConditionalGeneration(tiny_text_config(dropout=0.1))
    rows = _copy_task()
    sampler = TokenBatchSampler([len(r["input_ids"]) for r in rows], max_tokens, shuffle=True, seed=3)
    collator = DataCollatorForSeq2Seq(_IdTokenizer(), model=model, label_pad_token_id=-100)
    loader = DataLoader(rows, batch_sampler=sampler, collate_fn=collator, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, learning_rate=learning_rate, weight_decay=0.01)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer, lr_scheduler_type="inverse_sqrt", num_warmup_steps=5,
                                                    num_training_steps=steps))
    config = LoopConfig(max_train_steps=steps, num_train_epochs=epochs, checkpoint_dir=tmp_path,
                        checkpointing_steps=checkpointing_steps, logging_steps=5, show_progress=False)
    result = train(accelerator, model, optimizer, scheduler, loader, task or TranslationTask(0.1), config,
                   resume_from=resume)
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return result, weights, len(loader)


def test_loop_learns_and_counts_steps_tokens_and_epochs(tmp_path: Path) -> None:
    result, _, batches_per_epoch = _run(tmp_path, steps=60)
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert result.state.completed_steps == 60
    assert result.state.epoch == 60 // batches_per_epoch
    assert losses[-1] < 0.7 * losses[0], losses
    totals = result.state.totals
    assert result.throughput > 0 and totals["tokens"] > totals["target_tokens"] > 0
    assert totals["sentences"] == 60 * (96 // batches_per_epoch) or totals["sentences"] > 60
    # the reported loss and NLL are token means over the window: NLL < smoothed loss, ppl = exp(NLL)
    last = result.history[-1]
    assert last["nll"] < last["loss"] and last["ppl"] == pytest.approx(torch.tensor(last["nll"]).exp().item())
    assert result.train_metrics()["train_loss"] == last["loss"] and "train_tokens_per_second" not in \
        result.train_metrics()
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


def test_throughput_counts_survive_a_resume(tmp_path: Path) -> None:
    full, _, _ = _run(tmp_path / "full", steps=10, checkpointing_steps=5)
    (first, _) = list_checkpoints(tmp_path / "full")
    resumed, _, _ = _run(tmp_path / "full", steps=10, resume=first, checkpointing_steps=5)
    # every count of the run (not only those since the resume) is in the final state
    for name in ("tokens", "target_tokens", "sentences", "loss", "nll"):
        assert resumed.state.totals[name] == pytest.approx(full.state.totals[name]), name


class _PoisonedTask(TranslationTask):
    """The loss turns NaN at the given training step (counting micro-batches from 1)."""

    def __init__(self, at: int) -> None:
        super().__init__(0.1)
        self.calls, self.at = 0, at

    def training_step(self, model, batch):
        self.calls += 1
        loss, counts = super().training_step(model, batch)
        return (loss * float("nan") if self.calls >= self.at else loss), counts


def test_a_non_finite_loss_stops_training_and_saves_nothing_after_it(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as error:
        _run(tmp_path, steps=12, checkpointing_steps=2, task=_PoisonedTask(at=6))
    message = str(error.value)
    assert "the training loss is nan at step 6" in message, message
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-4'}" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert error.value.step == 6


class _InterruptingTask(TranslationTask):
    def __init__(self, at: int) -> None:
        super().__init__(0.1)
        self.calls, self.at = 0, at

    def training_step(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().training_step(model, batch)


def test_ctrl_c_names_the_last_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingInterrupted) as error:
        _run(tmp_path, steps=20, checkpointing_steps=3, task=_InterruptingTask(at=8))
    assert error.value.step == 7 and error.value.last_checkpoint == tmp_path / "checkpoint-6"


class _InfiniteGradientTask(TranslationTask):
    """A finite loss whose gradient is infinite (d√x/dx at 0) from the given step on."""

    def __init__(self, at: int) -> None:
        super().__init__(0.1)
        self.calls, self.at = 0, at

    def training_step(self, model, batch):
        self.calls += 1
        loss, counts = super().training_step(model, batch)
        if self.calls >= self.at:
            weight = next(model.parameters())
            loss = loss + torch.sqrt((weight - weight.detach()).abs()).sum()  # adds 0, gradient inf
        return loss, counts


def test_a_non_finite_gradient_stops_training_too(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"the gradient norm is (inf|nan) at step 3 .*no checkpoint was saved"):
        _run(tmp_path, steps=12, task=_InfiniteGradientTask(at=3))
