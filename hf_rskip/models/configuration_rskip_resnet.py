"""Configuration of the rSkip PreAct-ResNet (CIFAR-style, depth 6n+2)."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .residual import IMAGE_NORMS, check_learn_lambda, check_residual_options, normalize_skip_lambda

#: CIFAR-style depths of He et al. (2016); any 6n+2 with n >= 1 is accepted, these have preset names.
RESNET_PRESETS: dict[str, dict[str, Any]] = {
    f"preact-resnet-{depth}": {"depth": depth, "hidden_sizes": [16, 32, 64]} for depth in (20, 32, 44, 56, 110, 164)
}


def _blocks_per_stage(depth: int, num_stages: int) -> int | None:
    """n in depth = 2·n·stages + 2 (stem conv + 2 convs per basic block + head), or None if depth does not fit."""
    if (depth - 2) % (2 * num_stages) or depth - 2 < 2 * num_stages:
        return None
    return (depth - 2) // (2 * num_stages)


@strict(accept_kwargs=True)
class RSkipResNetConfig(PreTrainedConfig):
    r"""Configuration of [`RSkipResNetModel`] and [`RSkipResNetForImageClassification`]: a pre-activation ResNet
    for CIFAR (He et al., "Identity Mappings in Deep Residual Networks", 2016) whose every residual addition goes
    through the scheme named by `residual_scheme` (Liu et al., COLING 2020).

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        depth (`int`, *optional*, defaults to 110):
            Number of weighted layers, `6n + 2` for three stages (20, 32, 44, 56, 110, 164, ...): a stem conv, `n`
            basic blocks of two 3x3 convs per stage, and the classifier. 110 is the paper's CIFAR-10 model
            (about 1.7M parameters); use 20 on a CPU.
        hidden_sizes (`list[int]`, *optional*, defaults to `[16, 32, 64]`):
            Channels of each stage. The first stage keeps the stem's resolution, every later one halves it with a
            stride-2 conv and a 1x1 projection shortcut. With `k` stages, `depth` must be `2·k·n + 2`.
        residual_scheme (`str`, *optional*, defaults to `"rskip_ln"`):
            How each block joins its shortcut `x` and branch `F`: `"post_ln"` N(x + F(x)), `"pre_ln"` x + F(N(x)),
            `"xskip"` λx + F(x) (λ = 1 is He et al.'s identity shortcut), `"xskip_ln"` N(λx + F(x)), `"rskip_ln"`
            G1 = N1(x + F(x)), Gi = Ni(G(i-1) + x), y = G(λ). Where a block down-samples, x is the projected shortcut.
        skip_lambda (`int` or `float`, *optional*):
            λ. An integer >= 1 for `"rskip_ln"` (the number of recursive norms), any number > 0 for `"xskip"` and
            `"xskip_ln"`. Unset (None), the scheme's default: 2 where the scheme has a λ; `"post_ln"` and `"pre_ln"`
            have none, store 1, and refuse any other value.
        residual_norm (`str`, *optional*, defaults to `"layer"`):
            The scheme's N: `"layer"` normalizes each sample over (C, H, W) with a per-channel affine (the paper's
            LN for feature maps), `"batch"` is BatchNorm2d (the paper's ablation, reported worse).
        block_norm (`str`, *optional*, defaults to `"batch"`):
            The norms inside each block (the pre-activations) and before the head, `"batch"` as in He et al. or
            `"layer"`. Independent of the scheme: with `"xskip"` and λ = 1 the model is the plain PreAct-ResNet.
        learn_skip_lambda (`bool`, *optional*, defaults to `False`):
            An extension beyond the paper: a trained λ per block, starting at `skip_lambda` (`"xskip"`,
            `"xskip_ln"` only).
        zero_init_last (`bool`, *optional*, defaults to `False`):
            Zero the last conv of every branch at initialization, so each block starts as its shortcut (as in timm).
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every norm.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the classifier's normal initialization (convs use He's fan-out init).

    `num_labels`, `id2label` and `label2id` are those of [`~transformers.PreTrainedConfig`].

    Example:

    ```python
    >>> from hf_rskip import RSkipResNetConfig
    >>> config = RSkipResNetConfig(depth=20, residual_scheme="xskip", skip_lambda=1, num_labels=10)
    >>> config.depth, config.blocks_per_stage
    (20, 3)
    ```
    """

    model_type = "rskip_resnet"

    num_channels: Any = 3
    depth: Any = 110
    hidden_sizes: Any = (16, 32, 64)
    residual_scheme: Any = "rskip_ln"
    skip_lambda: Any = None
    residual_norm: Any = "layer"
    block_norm: Any = "batch"
    learn_skip_lambda: Any = False
    zero_init_last: Any = False
    layer_norm_eps: Any = 1e-5
    initializer_range: Any = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.hidden_sizes, tuple):
            self.hidden_sizes = list(self.hidden_sizes)
        self._check_resnet_options()
        self.skip_lambda = normalize_skip_lambda(self.residual_scheme, self.skip_lambda)
        super().__post_init__(**kwargs)

    @property
    def blocks_per_stage(self) -> int:
        """n: basic blocks in each stage."""
        return _blocks_per_stage(self.depth, len(self.hidden_sizes))

    def _check_resnet_options(self) -> None:
        """Raises `ValueError` naming the option, its value and what is accepted."""
        check_residual_options(self.residual_scheme, self.skip_lambda, self.residual_norm, IMAGE_NORMS)
        check_learn_lambda(self.residual_scheme, self.learn_skip_lambda)
        if self.block_norm not in IMAGE_NORMS:
            raise ValueError(f"block_norm={self.block_norm!r} is not supported; accepted: {list(IMAGE_NORMS)}")
        if not isinstance(self.zero_init_last, bool):
            raise ValueError(f"zero_init_last={self.zero_init_last!r} must be True or False")
        if isinstance(self.num_channels, bool) or not isinstance(self.num_channels, int) or self.num_channels < 1:
            raise ValueError(f"num_channels={self.num_channels!r} must be an integer >= 1")
        sizes = self.hidden_sizes
        if (
            not isinstance(sizes, (list, tuple))
            or not sizes
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
        ):
            raise ValueError(f"hidden_sizes={sizes!r} must be a non-empty list of integers >= 1, e.g. [16, 32, 64]")
        stages = len(sizes)
        depth = self.depth
        if isinstance(depth, bool) or not isinstance(depth, int) or _blocks_per_stage(depth, stages) is None:
            examples = [2 * stages * n + 2 for n in (3, 5, 7, 9, 18, 27)]
            form = "6n+2" if stages == 3 else f"{2 * stages}n+2"
            raise ValueError(
                f"depth={self.depth!r} is not a CIFAR-style PreAct-ResNet depth for {stages} stages: it must be "
                f"{form} with n >= 1 basic blocks per stage; accepted e.g. {examples}"
            )
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a number > 0")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RSkipResNetConfig":
        """Builds a config from a named depth in `RESNET_PRESETS` (e.g. `"preact-resnet-110"`); overrides win."""
        if name not in RESNET_PRESETS:
            raise ValueError(f"preset={name!r} is unknown; accepted: {list(RESNET_PRESETS)}")
        return cls(**{**RESNET_PRESETS[name], **overrides})

    def validate_rskip_resnet(self):
        """Part of `@strict` validation (also run by `save_pretrained`): the options may have been edited."""
        self._check_resnet_options()
        if self.skip_lambda != normalize_skip_lambda(self.residual_scheme, self.skip_lambda):
            raise ValueError(f"skip_lambda={self.skip_lambda!r} does not fit residual_scheme={self.residual_scheme!r}")


__all__ = ["RESNET_PRESETS", "RSkipResNetConfig"]
