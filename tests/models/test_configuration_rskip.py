"""RSkipConfig: Marian's fields and defaults, the residual options, and a clear ValueError for each bad value."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, MarianConfig

from hf_rskip import TEXT_PRESETS, RSkipConfig


def test_defaults_match_marian_and_paper():
    ours, marian = RSkipConfig(), MarianConfig()
    for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                 "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "dropout", "attention_dropout",
                 "activation_dropout", "activation_function", "max_position_embeddings", "scale_embedding",
                 "pad_token_id", "eos_token_id", "decoder_start_token_id", "share_encoder_decoder_embeddings"):
        assert getattr(ours, name) == getattr(marian, name), name
    assert (ours.model_type, ours.residual_scheme, ours.skip_lambda, ours.residual_norm) == ("rskip", "rskip_ln", 2, "layer")
    assert ours.learn_skip_lambda is False


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(residual_scheme="rskip"), r"residual_scheme='rskip'.*accepted: \['post_ln'"),
        (dict(residual_scheme="rskip_ln", skip_lambda=2.5), r"skip_lambda=2.5.*integer >= 1"),
        (dict(residual_scheme="rskip_ln", skip_lambda=0), r"skip_lambda=0"),
        (dict(residual_scheme="xskip", skip_lambda=-1.0), r"skip_lambda=-1.0.*> 0"),
        (dict(residual_scheme="xskip_ln", skip_lambda=0.0), r"skip_lambda=0.0"),
        (dict(skip_lambda="2"), r"skip_lambda='2' must be a number"),
        (dict(skip_lambda=True), r"skip_lambda=True"),
        (dict(skip_lambda=float("nan")), r"skip_lambda=nan"),
        (dict(residual_norm="batch"), r"residual_norm='batch'.*accepted: \['layer', 'rms'\]"),
        (dict(learn_skip_lambda=True), r"learn_skip_lambda=True.*rskip_ln"),
        (dict(d_model=100, encoder_attention_heads=16, decoder_attention_heads=4), r"encoder_attention_heads=16 does not divide d_model=100"),
        (dict(d_model=64, encoder_attention_heads=4, decoder_attention_heads=6), r"decoder_attention_heads=6 does not divide d_model=64"),
        (dict(encoder_layers=0), r"encoder_layers=0"),
        (dict(dropout=1.0), r"dropout=1.0.*\[0, 1\)"),
        (dict(activation_function="gleu"), r"activation_function='gleu'"),
        (dict(vocab_size=0), r"vocab_size=0"),
    ],
)
def test_bad_values_raise_value_error_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSkipConfig(**kwargs)


def test_lambda_is_normalised_per_scheme():
    assert RSkipConfig(residual_scheme="post_ln").skip_lambda == 1
    assert RSkipConfig(residual_scheme="pre_ln", skip_lambda=1).skip_lambda == 1
    assert RSkipConfig(residual_scheme="rskip_ln", skip_lambda=3.0).skip_lambda == 3
    assert isinstance(RSkipConfig(residual_scheme="rskip_ln", skip_lambda=3.0).skip_lambda, int)
    assert RSkipConfig(residual_scheme="xskip", skip_lambda=0.5).skip_lambda == 0.5


def test_edited_config_is_rechecked_on_save(tmp_path):
    config = RSkipConfig(d_model=64, encoder_attention_heads=4, decoder_attention_heads=4)
    config.residual_scheme = "bogus"
    with pytest.raises(Exception, match="residual_scheme='bogus'"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_round_trip_and_auto_config(tmp_path):
    config = RSkipConfig(residual_scheme="xskip_ln", skip_lambda=1.5, residual_norm="rms", d_model=64,
                         encoder_attention_heads=4, decoder_attention_heads=4)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is RSkipConfig
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())


@pytest.mark.parametrize("name", sorted(TEXT_PRESETS))
def test_presets(name):
    config = RSkipConfig.from_preset(name, residual_scheme="post_ln")
    assert config.d_model == TEXT_PRESETS[name]["d_model"] and config.residual_scheme == "post_ln"


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset='huge'.*accepted"):
        RSkipConfig.from_preset("huge")


@pytest.mark.parametrize("scheme,default", [("post_ln", 1), ("pre_ln", 1), ("xskip", 2), ("xskip_ln", 2), ("rskip_ln", 2)])
def test_unset_lambda_is_the_schemes_default(scheme, default):
    config = RSkipConfig(residual_scheme=scheme)
    assert config.skip_lambda == default and isinstance(config.skip_lambda, int)
    assert RSkipConfig(residual_scheme=scheme, skip_lambda=None).skip_lambda == default


@pytest.mark.parametrize("scheme", ["post_ln", "pre_ln"])
@pytest.mark.parametrize("lam", [3, 2, 0.5, 1.5])
def test_a_lambda_given_to_a_scheme_without_one_is_refused(scheme, lam):
    with pytest.raises(ValueError, match=rf"{scheme} has no λ, but skip_lambda={lam!r} was given"):
        RSkipConfig(residual_scheme=scheme, skip_lambda=lam)


@pytest.mark.parametrize("scheme", ["post_ln", "pre_ln"])
def test_saved_configs_with_lambda_1_still_load(scheme, tmp_path):
    """Configs saved before skip_lambda defaulted to None store 1 for post_ln / pre_ln."""
    import json

    RSkipConfig(residual_scheme=scheme, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4
                ).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["skip_lambda"] == 1
    assert AutoConfig.from_pretrained(tmp_path).skip_lambda == 1
    # and one whose λ was edited to a value the scheme has not is refused on save, naming the scheme
    config = RSkipConfig(residual_scheme=scheme, d_model=64, encoder_attention_heads=4, decoder_attention_heads=4)
    config.skip_lambda = 2
    with pytest.raises(Exception, match=f"{scheme} has no λ"):
        config.save_pretrained(tmp_path / "edited")
