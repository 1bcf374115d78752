"""RSkipResNetConfig: defaults, validation with clear messages, presets, round trip."""

from __future__ import annotations

import pytest

from hf_rskip.models.configuration_rskip_resnet import RESNET_PRESETS, RSkipResNetConfig
from hf_rskip.models.residual import RESIDUAL_SCHEMES


def test_defaults_are_the_papers_cifar_model() -> None:
    config = RSkipResNetConfig()
    assert config.model_type == "rskip_resnet"
    assert (config.depth, config.hidden_sizes, config.blocks_per_stage) == (110, [16, 32, 64], 18)
    assert (config.residual_scheme, config.skip_lambda, config.residual_norm) == ("rskip_ln", 2, "layer")
    assert config.block_norm == "batch" and config.num_channels == 3


@pytest.mark.parametrize("depth, n", [(8, 1), (20, 3), (32, 5), (44, 7), (56, 9), (110, 18), (164, 27)])
def test_depths_6n_plus_2(depth: int, n: int) -> None:
    assert RSkipResNetConfig(depth=depth).blocks_per_stage == n


@pytest.mark.parametrize("depth", [0, 2, 7, 18, 21, 50.5, 100, 111, -4, 20.0, "20", True, None])
def test_other_depths_are_rejected(depth: object) -> None:
    with pytest.raises(ValueError, match=r"depth=.*6n\+2.*\[20, 32, 44, 56, 110, 164\]"):
        RSkipResNetConfig(depth=depth)


def test_depth_follows_the_number_of_stages() -> None:
    assert RSkipResNetConfig(depth=10, hidden_sizes=[8, 16]).blocks_per_stage == 2  # 4n+2
    with pytest.raises(ValueError, match=r"depth=20 .*2 stages.*4n\+2"):
        RSkipResNetConfig(depth=20, hidden_sizes=[8, 16])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(residual_scheme="rskip"), r"residual_scheme='rskip'.*accepted"),
        (dict(residual_norm="rms"), r"residual_norm='rms'.*\['layer', 'batch'\]"),
        (dict(block_norm="group"), r"block_norm='group'.*\['layer', 'batch'\]"),
        (dict(skip_lambda=1.5), r"skip_lambda=1.5.*rskip_ln.*integer"),
        (dict(skip_lambda=0, residual_scheme="xskip"), r"skip_lambda=0"),
        (dict(skip_lambda="2"), r"skip_lambda='2'"),
        (dict(learn_skip_lambda=True), r"learn_skip_lambda=True.*'xskip'"),
        (dict(hidden_sizes=[16, 0, 64]), r"hidden_sizes=\[16, 0, 64\]"),
        (dict(hidden_sizes=[]), r"hidden_sizes=\[\]"),
        (dict(num_channels=0), r"num_channels=0"),
        (dict(zero_init_last="yes"), r"zero_init_last='yes'"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps=0.0"),
        (dict(initializer_range=-1), r"initializer_range=-1"),
    ],
)
def test_bad_options_name_option_and_value(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        RSkipResNetConfig(**kwargs)


@pytest.mark.parametrize("scheme", RESIDUAL_SCHEMES)
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_every_scheme_and_norm_is_accepted(scheme: str, norm: str) -> None:
    # post_ln and pre_ln have no λ (an unset λ is each scheme's default); rskip_ln counts norms
    config = RSkipResNetConfig(depth=20, residual_scheme=scheme, residual_norm=norm)
    assert config.skip_lambda == (1 if scheme in ("post_ln", "pre_ln") else 2)
    if scheme not in ("post_ln", "pre_ln"):
        assert RSkipResNetConfig(depth=20, residual_scheme=scheme, skip_lambda=3, residual_norm=norm).skip_lambda == 3


@pytest.mark.parametrize("scheme", ["post_ln", "pre_ln"])
def test_a_lambda_given_to_a_scheme_without_one_is_refused(scheme: str) -> None:
    with pytest.raises(ValueError, match=rf"{scheme} has no λ, but skip_lambda=3 was given"):
        RSkipResNetConfig(depth=20, residual_scheme=scheme, skip_lambda=3)
    assert RSkipResNetConfig(depth=20, residual_scheme=scheme, skip_lambda=1).skip_lambda == 1  # as saved before


def test_the_default_lambda_is_none_meaning_the_schemes() -> None:
    assert RSkipResNetConfig.__dataclass_fields__["skip_lambda"].default is None
    assert RSkipResNetConfig(depth=20, residual_scheme="xskip").skip_lambda == 2


def test_labels_round_trip(tmp_path) -> None:
    names = ["cat", "dog", "bird"]
    config = RSkipResNetConfig(
        depth=20, residual_scheme="xskip_ln", skip_lambda=0.5, learn_skip_lambda=True,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )
    assert config.num_labels == 3
    config.save_pretrained(tmp_path)
    loaded = RSkipResNetConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == {0: "cat", 1: "dog", 2: "bird"} and loaded.skip_lambda == 0.5


def test_edited_config_is_checked_again_on_save(tmp_path) -> None:
    config = RSkipResNetConfig(depth=20)
    config.depth = 21
    with pytest.raises(Exception, match=r"depth=21"):
        config.save_pretrained(tmp_path)


def test_presets() -> None:
    assert set(RESNET_PRESETS) == {f"preact-resnet-{d}" for d in (20, 32, 44, 56, 110, 164)}
    config = RSkipResNetConfig.from_preset("preact-resnet-56", residual_scheme="xskip", skip_lambda=1, num_labels=100)
    assert (config.depth, config.residual_scheme, config.num_labels) == (56, "xskip", 100)
    with pytest.raises(ValueError, match=r"preset='resnet-18'.*preact-resnet-20"):
        RSkipResNetConfig.from_preset("resnet-18")
