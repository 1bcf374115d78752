"""torch.compile for every model family: compiled training gives eager's losses and gradients with no graph break,
and compiled decoding (static cache, compiled forward) gives eager decoding's tokens.

Tests marked ``compile`` run inductor, which compiles C++ for 20-60 s per model on a 2-core CPU (their times are in
the report of issue 12); the others trace with dynamo's ``eager`` backend and take seconds.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CompileConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache

from hf_rskip import RSkipForConditionalGeneration, RSkipResNetConfig, RSkipResNetForImageClassification
from tests.conftest import tiny_text_config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles the same model code again: start and end with dynamo's caches empty."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _t5_model():
    models = pytest.importorskip("hf_rskip.models")
    if not hasattr(models, "RSkipT5ForConditionalGeneration"):
        pytest.skip("the T5 family is not in this checkout")
    config = models.RSkipT5Config(vocab_size=61, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                  dropout_rate=0.0, residual_scheme="rskip_ln", skip_lambda=3,
                                  decoder_start_token_id=0)
    return models.RSkipT5ForConditionalGeneration(config)


def _text_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 61, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(3, 61, (2, 5), generator=generator)}


FAMILIES = ("rskip", "resnet", "t5")


def _family(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny rskip_ln model of each family (no dropout) and a batch for it."""
    torch.manual_seed(0)
    if name == "rskip":
        return RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=3)), _text_batch()
    if name == "t5":
        return _t5_model(), _text_batch()
    # Widths of at least 8: inductor lays convolutions out channels-last, and on an AVX2 CPU with one thread torch
    # 2.13's oneDNN corrupts the heap in the backward of a 1x1 stride-2 channels-last convolution with <= 4 input
    # channels (Conv2d(4, 8, 1, stride=2) alone reproduces it; 8 or more channels, or 2 threads, do not).
    config = RSkipResNetConfig(depth=8, hidden_sizes=[8, 16, 16], num_labels=10, residual_scheme="rskip_ln",
                               skip_lambda=2, residual_norm="layer")
    generator = torch.Generator().manual_seed(0)
    images = {"pixel_values": torch.randn(4, 3, 8, 8, generator=generator), "labels": torch.tensor([1, 2, 3, 4])}
    return RSkipResNetForImageClassification(config), images


def _train(model: torch.nn.Module, call, batch: dict, steps: int = 2) -> tuple[list[float], list[torch.Tensor]]:
    """``steps`` SGD steps; the losses and the last step's gradients."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = call(**batch).loss
        loss.backward()
        losses.append(float(loss.detach()))
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        optimizer.step()
    return losses, grads


@pytest.mark.compile
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_training_matches_eager_without_graph_breaks(family):
    """fullgraph=True on the whole model: one graph, the residual modules (rskip_ln) included. Inductor: 20-60 s."""
    model, batch = _family(family)
    model.train()
    twin = copy.deepcopy(model)
    eager_losses, eager_grads = _train(model, model, batch)
    compiled_losses, compiled_grads = _train(twin, torch.compile(twin, backend="inductor", fullgraph=True), batch)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    assert len(compiled_grads) == len(eager_grads)
    for compiled, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)


def test_every_family_traces_as_one_graph():
    """dynamo alone (no code generated, seconds): no graph break anywhere in training or inference."""
    for family in FAMILIES:
        model, batch = _family(family)
        for training in (True, False):
            model.train(training)
            explanation = torch._dynamo.explain(model)(**batch)
            assert explanation.graph_break_count == 0, (family, training, explanation.break_reasons)


def test_compiled_decoding_steps_with_a_static_cache_and_no_decoder_mask():
    """A decoding loop of one's own: compiled forward, static cache, no decoder attention mask. The mask is built from
    the cache then (as Marian does, not from the cache's length: a tensor under compile)."""
    torch.manual_seed(0)
    model = RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=2)).eval()
    batch = _text_batch()
    encoder_outputs = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def decode(forward, cache) -> torch.Tensor:
        tokens, logits = torch.zeros(2, 1, dtype=torch.long), []
        with torch.no_grad():
            for _ in range(4):
                out = forward(encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"],
                              decoder_input_ids=tokens, cache=cache, use_cache=True)
                cache = out.cache
                logits.append(out.logits)
                tokens = out.logits[:, -1:].argmax(-1)
        return torch.cat(logits, 1)

    expected = decode(model, EncoderDecoderCache(DynamicCache(), DynamicCache()))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    cache = EncoderDecoderCache(StaticCache(config=model.config, max_cache_len=16),
                                StaticCache(config=model.config, max_cache_len=batch["input_ids"].shape[1]))
    got = decode(compiled, cache)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.compile
@pytest.mark.parametrize("family", ["rskip", "t5"])
def test_compiled_generation_gives_the_tokens_of_dynamic_cache_decoding(family):
    """Greedy: transformers' own path (``cache_implementation="static"`` and a ``compile_config``, which ``generate``
    uses to compile the decoding forward; ``_compile_all_devices`` lets it on a CPU). Beam search: transformers does
    not compile it, so the model's forward is compiled by hand. Inductor: about 30 s per graph (1 greedy, 2 beam)."""
    model, batch = _family(family)
    model.eval()
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                  max_new_tokens=6, min_new_tokens=6)
    config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    config._compile_all_devices = True
    greedy = model.generate(**inputs, num_beams=1)
    assert torch.equal(model.generate(**inputs, num_beams=1, cache_implementation="static", compile_config=config),
                       greedy)
    assert hasattr(model, "_compiled_call"), "generate did not compile the forward"
    beam = model.generate(**inputs, num_beams=4)
    model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)
    try:
        assert torch.equal(model.generate(**inputs, num_beams=4, cache_implementation="static"), beam)
    finally:
        del model.forward
