"""Gradient norm per layer: layer discovery, both views against hand computation, training-time profiles, logging."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.diagnostics import (
    GradNormLogger,
    capture_output_grad_norms,
    grad_norms_during_training,
    layer_modules,
    measure_grad_norms,
    param_grad_norms,
    stack_of,
    summarize_norms,
)

from tests.conftest import tiny_text_config


def _text_batch(config, batch_size: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, config.vocab_size, (batch_size, length), generator=generator)
    labels = torch.randint(2, config.vocab_size, (batch_size, length - 2), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _tiny_model(**overrides) -> RSkipForConditionalGeneration:
    return RSkipForConditionalGeneration(tiny_text_config(encoder_layers=3, decoder_layers=2, **overrides)).eval()


def test_layer_modules_finds_both_stacks_in_depth_order():
    model = _tiny_model()
    names = list(layer_modules(model))
    assert names == ["encoder.layers.0", "encoder.layers.1", "encoder.layers.2", "decoder.layers.0", "decoder.layers.1"]
    assert [stack_of(n) for n in names] == ["encoder"] * 3 + ["decoder"] * 2
    assert layer_modules(model)["decoder.layers.1"] is model.model.decoder.layers[1]


def test_layer_modules_rejects_a_model_without_layers():
    with pytest.raises(ValueError, match="no nn.ModuleList named 'layers'"):
        layer_modules(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("scheme,lam", [("post_ln", 1), ("rskip_ln", 2), ("xskip", 2)])
def test_param_and_output_norms_match_hand_computation(scheme, lam):
    model = _tiny_model(residual_scheme=scheme, skip_lambda=lam)
    batch = _text_batch(model.config)
    profile = measure_grad_norms(model, batch)

    # parameters: the same norm from the grads left in place
    layer = model.model.encoder.layers[1]
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in layer.parameters()))
    assert profile.param["encoder.layers.1"] == pytest.approx(expected, rel=1e-6)
    assert param_grad_norms(model) == profile.param

    # outputs: d loss / d h from autograd.grad on the retained hidden states
    model.zero_grad(set_to_none=True)
    out = model(**batch, output_hidden_states=True)
    hidden = out.encoder_hidden_states[2]  # index 0 is the embeddings, so 2 is encoder.layers.1's output
    (grad,) = torch.autograd.grad(out.loss, hidden)
    assert profile.output["encoder.layers.1"] == pytest.approx(float(grad.norm()), rel=1e-5)
    assert list(profile.output) == list(profile.param)
    assert profile.loss == pytest.approx(float(out.loss.detach()), rel=1e-6)
    assert all(v > 0 for v in profile.param.values())


def test_capture_removes_its_hooks():
    model = _tiny_model()
    batch = _text_batch(model.config)
    with capture_output_grad_norms(model) as norms:
        model(**batch).loss.backward()
    assert len(norms) == 5
    norms.clear()
    model(**batch).loss.backward()
    assert norms == {}


def test_resnet_blocks_are_layers():
    from hf_rskip.models import RSkipResNetConfig
    from hf_rskip.models import modeling_rskip_resnet as resnet
    RSkipResNetForImageClassification = resnet.RSkipResNetForImageClassification

    model = RSkipResNetForImageClassification(
        RSkipResNetConfig(depth=6, hidden_sizes=[4, 8], residual_scheme="rskip_ln", skip_lambda=2, num_labels=3)
    )
    batch = {"pixel_values": torch.randn(2, 3, 8, 8), "labels": torch.tensor([0, 2])}
    profile = measure_grad_norms(model, batch)
    assert list(profile.param) == ["stages.0.layers.0", "stages.1.layers.0"]
    assert {stack_of(n) for n in profile.param} == {"blocks"}
    assert all(v > 0 for v in profile.output.values())


def test_profiles_during_training_measure_before_the_given_steps():
    model = _tiny_model()
    batch = _text_batch(model.config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    at_init = measure_grad_norms(model, batch).param
    profiles = grad_norms_during_training(model, [batch] * 5, optimizer, measure_at=(0, 3), probe_batch=batch)
    assert [p.step for p in profiles] == [0, 3]
    assert profiles[0].param == pytest.approx(at_init)
    assert profiles[1].param != pytest.approx(at_init)  # three steps moved the weights
    assert profiles[1].loss < profiles[0].loss


def test_profiles_without_probe_use_the_training_batch_once():
    torch.manual_seed(0)
    model_a = _tiny_model()
    model_b = _tiny_model()
    model_b.load_state_dict(model_a.state_dict())
    batches = [_text_batch(model_a.config, batch_size=2 + i) for i in range(3)]
    grad_norms_during_training(model_a, batches, torch.optim.SGD(model_a.parameters(), lr=0.1), measure_at=(0, 1, 3))
    optimizer = torch.optim.SGD(model_b.parameters(), lr=0.1)
    for batch in batches:  # the same three plain steps
        optimizer.zero_grad()
        model_b(**batch).loss.backward()
        optimizer.step()
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_summarize_norms_per_stack():
    summary = summarize_norms({"encoder.layers.0": 4.0, "encoder.layers.1": 1.0, "encoder.layers.2": 2.0,
                               "decoder.layers.0": 1.0, "decoder.layers.1": 1.0})
    assert summary == {"encoder/first_over_last": 2.0, "encoder/max_over_min": 4.0,
                       "decoder/first_over_last": 1.0, "decoder/max_over_min": 1.0}


class _RecordingTracker(GeneralTracker):
    name = "recording"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int | None, dict]] = []

    @property
    def tracker(self):
        return self.logged

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, dict(values)))


def test_logger_logs_through_accelerate_trackers_on_schedule():
    tracker = _RecordingTracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("diagnostics-test")
    model = accelerator.prepare(_tiny_model())
    logger = GradNormLogger(every=2)
    for step in range(4):
        model.zero_grad()
        accelerator.backward(model(**_text_batch(model.config)).loss)
        logger(accelerator, model, step)
    accelerator.end_training()
    assert [step for step, _ in tracker.logged] == [0, 2]
    values = tracker.logged[0][1]
    assert values["grad_norm/decoder.layers.1"] > 0
    assert "grad_norm_summary/encoder/max_over_min" in values
    with pytest.raises(ValueError, match="every=0"):
        GradNormLogger(every=0)
