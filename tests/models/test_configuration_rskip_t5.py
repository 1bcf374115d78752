"""RSkipT5Config: T5's fields and defaults, the residual options, a tie_word_embeddings that is honoured, and a
ValueError naming the option for every bad value."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, T5Config

from hf_rskip import T5_PRESETS, RSkipT5Config


def test_defaults_match_t5_and_pre_ln_is_t5():
    ours, t5 = RSkipT5Config(), T5Config()
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                 "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "dense_act_fn", "is_gated_act",
                 "pad_token_id", "eos_token_id", "is_encoder_decoder", "use_cache", "scale_decoder_outputs"):
        assert getattr(ours, name) == getattr(t5, name), name
    assert (ours.model_type, ours.residual_scheme, ours.skip_lambda, ours.residual_norm) == ("rskip_t5", "rskip_ln", 2,
                                                                                             "rms")
    assert ours.learn_skip_lambda is False and ours.tie_word_embeddings is True
    assert ours.decoder_start_token_id == ours.pad_token_id == 0  # the T5 decoder starts from pad
    assert ours.layer_norm_eps == ours.layer_norm_epsilon == 1e-6  # the alias the residual module reads
    assert (ours.hidden_size, ours.num_attention_heads) == (512, 8)  # T5's own aliases still work


def test_tie_word_embeddings_is_honoured_and_sets_the_scaling_by_default():
    v11 = RSkipT5Config(tie_word_embeddings=False, feed_forward_proj="gated-gelu")
    assert v11.tie_word_embeddings is False and v11.scale_decoder_outputs is False
    assert (v11.dense_act_fn, v11.is_gated_act) == ("gelu_new", True)
    assert RSkipT5Config(tie_word_embeddings=True).scale_decoder_outputs is True
    odd = RSkipT5Config(tie_word_embeddings=True, scale_decoder_outputs=False)  # what a T5 built in v5 can be
    assert odd.tie_word_embeddings is True and odd.scale_decoder_outputs is False


def test_decoder_start_follows_pad_unless_given():
    assert RSkipT5Config(pad_token_id=2).decoder_start_token_id == 2
    assert RSkipT5Config(pad_token_id=2, decoder_start_token_id=5).decoder_start_token_id == 5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(residual_scheme="rskip"), r"residual_scheme='rskip'.*accepted: \['post_ln'"),
        (dict(residual_scheme="rskip_ln", skip_lambda=2.5), r"skip_lambda=2.5.*integer >= 1"),
        (dict(residual_scheme="rskip_ln", skip_lambda=0), r"skip_lambda=0"),
        (dict(residual_scheme="xskip", skip_lambda=-1.0), r"skip_lambda=-1.0.*> 0"),
        (dict(residual_scheme="xskip_ln", skip_lambda=0.0), r"skip_lambda=0.0"),
        (dict(residual_scheme="pre_ln", skip_lambda=2), r"pre_ln has no λ, but skip_lambda=2"),
        (dict(skip_lambda="2"), r"skip_lambda='2' must be a number"),
        (dict(skip_lambda=True), r"skip_lambda=True"),
        (dict(skip_lambda=float("nan")), r"skip_lambda=nan"),
        (dict(residual_norm="batch"), r"residual_norm='batch'.*accepted: \['layer', 'rms'\]"),
        (dict(learn_skip_lambda=True), r"learn_skip_lambda=True.*rskip_ln"),
        (dict(learn_skip_lambda="yes", residual_scheme="xskip"), r"learn_skip_lambda='yes' must be True or False"),
        (dict(tie_word_embeddings="no"), r"tie_word_embeddings='no' must be True or False"),
        (dict(scale_decoder_outputs=1), r"scale_decoder_outputs=1 must be True or False"),
        (dict(vocab_size=0), r"vocab_size=0 must be an integer >= 1"),
        (dict(d_model=0), r"d_model=0"),
        (dict(d_kv=0), r"d_kv=0"),
        (dict(d_ff=0), r"d_ff=0"),
        (dict(num_layers=0), r"num_layers=0"),
        (dict(num_decoder_layers=0), r"num_decoder_layers=0.*or None"),
        (dict(num_heads=0), r"num_heads=0"),
        (dict(relative_attention_num_buckets=2), r"relative_attention_num_buckets=2 must be an integer >= 4"),
        (dict(relative_attention_num_buckets=32, relative_attention_max_distance=16),
         r"relative_attention_max_distance=16 must be an integer > .* = 16"),
        (dict(dropout_rate=1.0), r"dropout_rate=1.0.*\[0, 1\)"),
        (dict(classifier_dropout=-0.1), r"classifier_dropout=-0.1"),
        (dict(feed_forward_proj="gleu"), r"feed_forward_proj='gleu'.*accepted: 'relu'.*'gated-gelu'"),
        (dict(feed_forward_proj="gated-gelu-x"), r"feed_forward_proj='gated-gelu-x'"),
        (dict(feed_forward_proj="gelu-gated"), r"feed_forward_proj='gelu-gated'"),
        (dict(layer_norm_epsilon=0.0), r"layer_norm_epsilon=0.0 must be a number > 0"),
        (dict(initializer_factor=-1.0), r"initializer_factor=-1.0"),
    ],
)
def test_bad_values_raise_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSkipT5Config(**kwargs)


@pytest.mark.parametrize("scheme,lam,expected", [("post_ln", None, 1), ("pre_ln", 1, 1), ("xskip", None, 2),
                                                 ("xskip", 0.5, 0.5), ("rskip_ln", 3.0, 3), ("rskip_ln", None, 2)])
def test_lambda_is_normalised_per_scheme(scheme, lam, expected):
    config = RSkipT5Config(residual_scheme=scheme, skip_lambda=lam)
    assert config.skip_lambda == expected and type(config.skip_lambda) is type(expected)


def test_edited_config_is_rechecked_on_save(tmp_path):
    config = RSkipT5Config.from_preset("tiny")
    config.residual_norm = "batch"
    with pytest.raises(Exception, match="residual_norm='batch'"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_and_auto_config(tmp_path, tie):
    config = RSkipT5Config.from_preset("tiny", residual_scheme="xskip_ln", skip_lambda=1.5, residual_norm="layer",
                                       tie_word_embeddings=tie, feed_forward_proj="gated-gelu")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["tie_word_embeddings"] is tie and saved["model_type"] == "rskip_t5"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is RSkipT5Config
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert (loaded.tie_word_embeddings, loaded.scale_decoder_outputs) == (tie, tie)


@pytest.mark.parametrize("name", sorted(T5_PRESETS))
def test_presets(name):
    config = RSkipT5Config.from_preset(name, residual_scheme="pre_ln")
    assert config.d_model == T5_PRESETS[name]["d_model"] and config.residual_scheme == "pre_ln"
    assert config.num_decoder_layers == T5_PRESETS[name]["num_layers"]


def test_t5_small_preset_has_t5_smalls_sizes():
    config = RSkipT5Config.from_preset("t5-small")
    sizes = (config.vocab_size, config.d_model, config.d_ff, config.d_kv, config.num_layers,
             config.num_decoder_layers, config.num_heads, config.feed_forward_proj, config.tie_word_embeddings)
    assert sizes == (32128, 512, 2048, 64, 6, 6, 8, "relu", True)
    v11 = RSkipT5Config.from_preset("t5-v1_1-small")
    assert (v11.feed_forward_proj, v11.tie_word_embeddings, v11.scale_decoder_outputs) == ("gated-gelu", False, False)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='huge'.*accepted"):
        RSkipT5Config.from_preset("huge")
