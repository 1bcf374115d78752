"""convert_to_rskip: T5 parity at pre_ln + rms (object and folder, v1.0 and v1.1), other schemes carry what keeps its
role and say so, our own models change scheme or λ, Marian goes through from_marian, the tokenizer comes along."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BertConfig,
    MarianConfig,
    MarianMTModel,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)

import hf_rskip.models.conversion as conversion
from hf_rskip import RSkipForConditionalGeneration, RSkipT5ForConditionalGeneration, convert_to_rskip
from tests.conftest import tiny_text_config

#: v1.0: ReLU, tied and scaled head; v1.1: gated GELU, untied head, no scaling; "v5": what transformers 5 builds
#: from a v1.1 config (it always ties, so the head is the embedding, unscaled).
T5_KINDS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "v5": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
# transformers' T5 cannot generate with more decoder than encoder layers (its cache is sized by num_layers), so
# the reference models here have equal stacks; ours handle unequal ones (test_modeling_rskip_t5.py).
ENCODER_LAYERS, DECODER_LAYERS = 2, 2
SUBLAYERS = 2 * ENCODER_LAYERS + 3 * DECODER_LAYERS


def random_t5(kind: str = "v1.0", **overrides) -> T5ForConditionalGeneration:
    kwargs = dict(vocab_size=61, d_model=32, d_kv=8, d_ff=48, num_layers=ENCODER_LAYERS,
                  num_decoder_layers=DECODER_LAYERS, num_heads=4, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                  decoder_start_token_id=0, **T5_KINDS[kind])
    kwargs.update(overrides)
    t5 = T5ForConditionalGeneration(T5Config(**kwargs)).eval()
    with torch.no_grad():  # norms away from 1, so a norm that is lost or misplaced shows
        for name, p in t5.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    if kind == "v1.1":  # a head of its own, as a v1.1 checkpoint loads
        t5.lm_head.weight = torch.nn.Parameter(torch.randn(kwargs["vocab_size"], 32) * 0.5)
    return t5


def batch(seed: int = 0, vocab: int = 61, pad: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = pad
    labels = torch.randint(3, vocab, (3, 7), generator=g)
    labels[2, 5:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def assert_same_translation(ours, theirs, inputs):
    diff = (ours(**inputs).logits - theirs(**inputs).logits).abs().max().item()
    assert diff <= 1e-5, diff
    gen = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=12)
    assert torch.equal(ours.generate(num_beams=4, **gen), theirs.generate(num_beams=4, **gen))
    assert torch.equal(ours.generate(num_beams=1, **gen), theirs.generate(num_beams=1, **gen))
    return diff


@pytest.mark.parametrize("kind", sorted(T5_KINDS))
def test_pre_ln_rms_reproduces_t5_from_an_object_and_a_folder(kind, tmp_path):
    t5 = random_t5(kind)
    t5.save_pretrained(tmp_path)
    for source in (t5, str(tmp_path)):
        ours, info = convert_to_rskip(source, output_loading_info=True)
        assert type(ours) is RSkipT5ForConditionalGeneration and not ours.training
        assert (ours.config.residual_scheme, ours.config.residual_norm) == ("pre_ln", "rms")
        assert ours.config.tie_word_embeddings is (kind != "v1.1")
        assert ours.config.scale_decoder_outputs is (kind == "v1.0")
        assert info["initialized"] == [] and info["dropped"] == []
        assert info["carried"] == len({p.data_ptr() for p in t5.parameters()})
        assert_same_translation(ours, t5, batch())


@pytest.mark.parametrize("kind", sorted(T5_KINDS))
def test_pre_ln_t5_trains_as_t5_does_with_dropout_and_padding(kind):
    """Training mode (dropout on, same seed), padded sources and labels: the same loss and the same gradient for
    every tensor, so what T5 learns from a batch, the converted model learns."""
    t5 = random_t5(kind, dropout_rate=0.2)
    ours = convert_to_rskip(t5)
    t5.train(), ours.train()
    inputs = batch()
    torch.manual_seed(3)
    theirs_loss = t5(**inputs).loss
    torch.manual_seed(3)
    ours_loss = ours(**inputs).loss
    torch.testing.assert_close(ours_loss, theirs_loss, rtol=0, atol=1e-5)
    theirs_loss.backward(), ours_loss.backward()
    theirs = {k.replace(".layer_norm.weight", ".layer_norm.norms.0.weight") if ".layer." in k else k: p.grad
              for k, p in t5.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def test_t5_names_map_one_to_one():
    t5 = random_t5("v1.1")
    ours = convert_to_rskip(t5)
    theirs = {k.replace(".layer_norm.weight", ".layer_norm.norms.0.weight") if ".layer." in k else k
              for k in t5.state_dict()}
    assert theirs == set(ours.state_dict())


@pytest.mark.parametrize("kind", ["v1.0", "v1.1"])
def test_another_scheme_carries_every_shared_weight_and_logs_the_counts(kind, monkeypatch):
    warnings: list[str] = []  # transformers' logger may not propagate to caplog, depending on earlier tests
    monkeypatch.setattr(conversion.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    t5 = random_t5(kind)
    ours, info = convert_to_rskip(t5, residual_scheme="rskip_ln", skip_lambda=2, output_loading_info=True)
    assert (ours.config.residual_scheme, ours.config.skip_lambda) == ("rskip_ln", 2)
    # T5's tensors: the embedding (+ the head when untied); per encoder block q k v o, 2 norms and the feed-forward
    # (2 matrices for ReLU, 3 gated); per decoder block 8 attention matrices, 3 norms and the feed-forward; one
    # relative bias and one final norm per stack.
    ffn = 2 if kind == "v1.0" else 3
    total = (1 if kind == "v1.0" else 2) + ENCODER_LAYERS * (6 + ffn) + DECODER_LAYERS * (11 + ffn) + 4
    t5_norms = SUBLAYERS + 2  # T5's norms sit before the branch: none keeps its role after the sum
    assert info["carried"] == total - t5_norms
    assert len(info["initialized"]) == 2 * SUBLAYERS  # two RMSNorms per sublayer, fresh
    assert len(info["dropped"]) == t5_norms and "decoder.final_layer_norm.weight" in info["dropped"]
    assert len(warnings) == 1
    assert (f"{total - t5_norms} tensors carried over; {2 * SUBLAYERS} new tensors start freshly initialised"
            in warnings[0]), warnings[0]
    assert f"{t5_norms} source tensors dropped" in warnings[0]
    assert f"decoder.block.*.layer.*.layer_norm.norms.1.weight (x{3 * DECODER_LAYERS})" in warnings[0]
    sd, tsd = ours.state_dict(), t5.state_dict()
    for key in ("shared.weight", "lm_head.weight", "encoder.block.1.layer.1.DenseReluDense.wo.weight",
                "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "decoder.block.1.layer.1.EncDecAttention.q.weight"):
        assert torch.equal(sd[key], tsd[key]), key
    assert torch.equal(sd["encoder.block.0.layer.0.layer_norm.norms.1.weight"], torch.ones(32))
    assert (ours.lm_head.weight is ours.shared.weight) is (kind == "v1.0")


def test_layer_norm_is_new_even_at_pre_ln():
    t5 = random_t5()
    ours, info = convert_to_rskip(t5, residual_norm="layer", output_loading_info=True)
    assert len(info["initialized"]) == 2 * (SUBLAYERS + 2)  # weight and bias of every LayerNorm
    assert len(info["dropped"]) == SUBLAYERS + 2


@pytest.fixture(scope="module")
def task_and_tokenizer():
    from hf_rskip.data import builtin_translation_task, train_tokenizer

    task = builtin_translation_task(256, 16, 0, seed=7)
    texts = [r["translation"][lang] for r in task["train"] for lang in ("en", "xx")]
    return task, train_tokenizer(texts, 200)


def t5_for(tokenizer, kind: str = "v1.1") -> T5ForConditionalGeneration:
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               decoder_start_token_id=tokenizer.pad_token_id)
    return random_t5(kind, d_model=32, **ids)


@pytest.mark.parametrize("lam", [2, 3])
def test_a_converted_rskip_model_trains_and_round_trips(lam, task_and_tokenizer, tmp_path):
    task, tokenizer = task_and_tokenizer
    torch.manual_seed(lam)
    model = convert_to_rskip(t5_for(tokenizer), residual_scheme="rskip_ln", skip_lambda=lam).train()
    pairs = [(r["translation"]["en"], r["translation"]["xx"]) for r in task["train"]]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        chunk = pairs[(step * 16) % len(pairs):][:16]
        enc = tokenizer([s for s, _ in chunk], text_target=[t for _, t in chunk], padding=True, return_tensors="pt")
        enc["labels"][enc["labels"] == tokenizer.pad_token_id] = -100
        loss = model(**enc).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.config.skip_lambda == lam
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    inputs = batch(vocab=len(tokenizer), pad=tokenizer.pad_token_id)
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_our_own_model_changes_lambda_and_scheme(monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(conversion.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    three = convert_to_rskip(random_t5("v1.1"), residual_scheme="rskip_ln", skip_lambda=3)
    warnings.clear()
    same, info = convert_to_rskip(three, output_loading_info=True)  # no change: the same model
    assert info["initialized"] == info["dropped"] == [] and not warnings
    inputs = batch()
    torch.testing.assert_close(same(**inputs).logits, three(**inputs).logits, rtol=0, atol=0)
    two, info = convert_to_rskip(three, skip_lambda=2, output_loading_info=True)
    assert (two.config.residual_scheme, two.config.skip_lambda) == ("rskip_ln", 2)
    assert info["initialized"] == []  # norms 1 and 2 keep their values, norm 3 goes
    assert len(info["dropped"]) == SUBLAYERS and all(k.endswith("norms.2.weight") for k in info["dropped"])
    assert f"{info['carried']} tensors carried over; 0 new tensors" in warnings[-1]
    key = "decoder.block.1.layer.2.layer_norm.norms.1.weight"
    assert torch.equal(two.state_dict()[key], three.state_dict()[key])
    # a scheme without λ: the source's λ is not carried into it; pre_ln's norms sit elsewhere, so all are new
    pre, info = convert_to_rskip(three, residual_scheme="pre_ln", output_loading_info=True)
    assert pre.config.skip_lambda == 1 and len(info["initialized"]) == SUBLAYERS + 2
    xskip = convert_to_rskip(pre, residual_scheme="xskip_ln")
    assert xskip.config.skip_lambda == 2  # the scheme's default


def test_marian_goes_through_from_marian(tmp_path):
    marian = MarianMTModel(MarianConfig(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                        decoder_ffn_dim=48, max_position_embeddings=64, pad_token_id=0,
                                        eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1)).eval()
    marian.save_pretrained(tmp_path)
    for source in (marian, str(tmp_path)):
        ours, info = convert_to_rskip(source, output_loading_info=True)
        assert type(ours) is RSkipForConditionalGeneration and ours.config.residual_scheme == "post_ln"
        assert info["initialized"] == [] and info["dropped"] == []
        assert_same_translation(ours, marian, batch())
    deep, info = convert_to_rskip(marian, residual_scheme="rskip_ln", skip_lambda=3, output_loading_info=True)
    assert len(info["initialized"]) == 10 * 2 * 2  # norms 2 and 3 (weight + bias) of 10 sublayers


def test_our_marian_family_model_changes_lambda():
    model = RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=3)).eval()
    two, info = convert_to_rskip(model, skip_lambda=2, output_loading_info=True)
    assert type(two) is RSkipForConditionalGeneration and two.config.skip_lambda == 2
    assert info["initialized"] == [] and len(info["dropped"]) == 10 * 2  # weight and bias of every third norm
    key = "model.encoder.layers.1.final_layer_norm.norms.1.bias"
    assert torch.equal(two.state_dict()[key], model.state_dict()[key])


def test_a_converted_folder_is_complete_with_the_tokenizer(task_and_tokenizer, tmp_path):
    from transformers import pipeline

    task, tokenizer = task_and_tokenizer
    source, out = tmp_path / "t5", tmp_path / "rskip"
    t5_for(tokenizer, "v1.0").save_pretrained(source)
    tokenizer.save_pretrained(source)
    model = convert_to_rskip(str(source), save_directory=out, residual_scheme="rskip_ln", skip_lambda=2)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json",
            "modeling_rskip_t5.py"} <= set(os.listdir(out))
    assert AutoTokenizer.from_pretrained(out)("a dog .").input_ids == tokenizer("a dog .").input_ids
    loaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert torch.equal(loaded.shared.weight, model.shared.weight)
    translator = pipeline("rskip-translation", model=str(out))
    assert isinstance(translator(task["validation"][0]["translation"]["en"], max_new_tokens=4)[0]["translation_text"],
                      str)
    # an object source has no folder: the tokenizer is passed, or none is saved
    convert_to_rskip(loaded, save_directory=tmp_path / "again", tokenizer=tokenizer)
    assert (tmp_path / "again" / "tokenizer_config.json").is_file()
    convert_to_rskip(loaded, save_directory=tmp_path / "bare")
    assert not (tmp_path / "bare" / "tokenizer_config.json").exists()


def test_what_cannot_be_converted_is_refused(tmp_path):
    with pytest.raises(TypeError, match="expects a MarianMTModel, a T5ForConditionalGeneration"):
        convert_to_rskip(T5EncoderModel(T5Config(d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)))
    BertConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type='bert'.*accepted: \\['marian', 't5', 'rskip', 'rskip_t5'\\]"):
        convert_to_rskip(str(tmp_path))
    with pytest.raises(ValueError, match="save_directory"):
        convert_to_rskip(random_t5(), tokenizer="some/tokenizer")
    with pytest.raises(ValueError, match="pre_ln has no λ"):
        convert_to_rskip(random_t5(), skip_lambda=2)  # T5's own scheme has no λ
