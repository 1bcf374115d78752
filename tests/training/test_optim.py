"""Tests of hf_rskip.training.optim: decay by shape, every transformers schedule, torch's multistep."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import SchedulerType

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.models import RSkipResNetConfig, RSkipResNetForImageClassification
from hf_rskip.training.optim import LR_SCHEDULERS, build_optimizer, build_scheduler, check_scheduler_options
from tests.conftest import tiny_text_config


def _rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_adamw_decays_matrices_only_and_finds_rskip_norms_by_shape() -> None:
    model = RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=3))
    optimizer = build_optimizer(model, optimizer="adamw", learning_rate=1e-3, weight_decay=0.01)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.98)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert "model.encoder.layers.0.final_layer_norm.norms.2.weight" in {names[id(p)] for p in no_decay["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]  # the sinusoidal positions are frozen
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


def test_adafactor_is_t5s_with_the_schedules_rate_and_decays_matrices_only() -> None:
    from transformers.optimization import Adafactor

    from hf_rskip import RSkipT5Config, RSkipT5ForConditionalGeneration

    torch.manual_seed(0)
    model = RSkipT5ForConditionalGeneration(RSkipT5Config.from_preset("tiny", vocab_size=50, residual_scheme="rskip_ln"))
    optimizer = build_optimizer(model, optimizer="adafactor", learning_rate=5e-2, weight_decay=0.01)
    assert isinstance(optimizer, Adafactor)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert (decay["lr"], decay["scale_parameter"], decay["relative_step"]) == (5e-2, True, False)
    # the schedule drives it (relative_step=False), and a step moves a weight by about lr x its RMS
    scheduler = build_scheduler(optimizer, lr_scheduler_type="linear", num_warmup_steps=0, num_training_steps=10)
    ids = torch.randint(3, 50, (2, 6))
    embedding = model.shared.weight.detach().clone()
    query = model.encoder.block[0].layer[0].SelfAttention.q.weight  # T5 initialises it ~30x smaller than embeddings
    query_before = query.detach().clone()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    moved = (model.shared.weight.detach() - embedding).pow(2).mean().sqrt().item()
    rms = embedding.pow(2).mean().sqrt().item()
    assert 0.1 * 5e-2 * rms < moved < 5e-2 * rms * 1.01 and optimizer.param_groups[0]["lr"] == pytest.approx(4.5e-2)
    # only the RMS scaling keeps the small weight's step small (without it, this step would be ~lr, 30x larger)
    query_moved = (query.detach() - query_before).pow(2).mean().sqrt().item()
    query_rms = query_before.pow(2).mean().sqrt().item()
    assert query_rms < rms / 10 and 0.1 * 5e-2 * query_rms < query_moved < 5e-2 * query_rms * 1.01


def test_sgd_decays_conv_and_linear_weights_only() -> None:
    model = RSkipResNetForImageClassification(RSkipResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3))
    optimizer = build_optimizer(model, optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0 and decayed["momentum"] == 0.9
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 4 or names[id(p)] == "classifier.weight" for p in decayed["params"])
    assert any("residual.norms" in names[id(p)] for p in plain["params"])  # rSkip's norms are not decayed
    with pytest.raises(ValueError, match="optimizer='lion' is unknown"):
        build_optimizer(model, optimizer="lion", learning_rate=0.1)


def test_inverse_sqrt_peaks_after_warmup_then_falls_as_one_over_sqrt_step() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    rates = _rates(build_scheduler(optimizer, lr_scheduler_type="inverse_sqrt", num_warmup_steps=100,
                                   num_training_steps=400), optimizer, 400)
    assert rates[0] == 0.0 and rates[50] == pytest.approx(0.5) and rates[100] == pytest.approx(1.0)
    assert rates[399] == pytest.approx(math.sqrt(100 / 399))


def test_multistep_is_he_et_al_step_schedule_after_warmup() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    rates = _rates(build_scheduler(optimizer, lr_scheduler_type="multistep", num_warmup_steps=4,
                                   num_training_steps=100), optimizer, 100)
    assert rates[:5] == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1])
    assert rates[49] == pytest.approx(0.1) and rates[50] == pytest.approx(0.01) and rates[75] == pytest.approx(0.001)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    rates = _rates(build_scheduler(optimizer, lr_scheduler_type="multistep", num_warmup_steps=0,
                                   num_training_steps=10, lr_scheduler_kwargs={"milestones": [0.3], "gamma": 0.5}),
                   optimizer, 10)
    assert rates == pytest.approx([1.0] * 3 + [0.5] * 7)


@pytest.mark.parametrize("name", [s.value for s in SchedulerType])
def test_every_transformers_schedule_builds_or_names_its_missing_option(name: str) -> None:
    kwargs = {"cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
              "warmup_stable_decay": {"num_decay_steps": 3}}.get(name)
    assert name in LR_SCHEDULERS
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, lr_scheduler_type=name, num_warmup_steps=2, num_training_steps=10,
                                lr_scheduler_kwargs=kwargs)
    assert scheduler is not None
    if kwargs:  # without its own option, the check names the schedule and what is missing, before any data
        with pytest.raises(ValueError, match=name):
            check_scheduler_options(name, None, 2)


def test_unknown_schedule_is_named() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="lr_scheduler_type='exotic' is unknown"):
        build_scheduler(optimizer, lr_scheduler_type="exotic", num_warmup_steps=0, num_training_steps=5)
