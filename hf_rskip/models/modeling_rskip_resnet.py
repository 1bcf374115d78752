"""PreAct-ResNet for CIFAR (He et al., 2016) whose residual additions follow Liu et al. (COLING 2020).

Layout (depth = 6n + 2 for three stages)::

    stem conv3x3 -> stage 1 (n blocks) -> stage 2 (n blocks, /2) -> stage 3 (n blocks, /2) -> N -> ReLU -> pool -> fc

Every block is ``y = residual(x, F)`` with ``residual = build_residual(config, C_out, kind="image")``; the block
never looks at the scheme. ``F`` is the pre-activation branch ``conv3x3(ReLU(N(conv3x3(ReLU(N(·))))))``.

Imports are absolute to installed packages or relative to this package's own files, because
``save_pretrained`` copies this file and its relative imports for ``trust_remote_code`` loading.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_rskip_resnet import RSkipResNetConfig
from .residual import Residual, build_final_norm, build_norm, build_residual


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (a norm always follows or the sum absorbs it)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class RSkipResNetBasicLayer(nn.Module):
    """One pre-activation basic block joined to its shortcut by the configured residual scheme.

    Without a shape change (``stride == 1`` and ``C_in == C_out``) the block is ``residual(x, F)`` with
    ``F(h) = conv2(ReLU(norm2(conv1(ReLU(norm1(h))))))``: F receives the scheme's choice of input (``h = x`` for
    every scheme but ``pre_ln``, whose ``h = N(x)``).

    Where the block down-samples or widens, He et al. project the *pre-activated* input: with
    ``x_preact = ReLU(norm1(x_in))`` the skip is ``s = shortcut(x_preact)`` (1x1 conv, stride 2) and the branch is
    ``F = conv2(ReLU(norm2(conv1(x_preact))))``, computed once from the block input. The scheme then combines
    ``x = s`` with that F (e.g. ``rskip_ln`` λ=2: ``N2(N1(s + F) + s)``). The branch input the scheme offers has
    the shape of ``s``, not of ``x_in``, so it is not used there (``build_residual(..., branch_input=False)``);
    for ``pre_ln``, whose only norm is on that input, such a block is ``s + F`` and has no residual norm.

    Args:
        config: the model config (norms, scheme, λ).
        in_channels: C_in of the input ``(B, C_in, H, W)``.
        out_channels: C_out of the output ``(B, C_out, H / stride, W / stride)``.
        stride: 1, or 2 where the stage down-samples.
    """

    def __init__(self, config: RSkipResNetConfig, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        eps = config.layer_norm_eps
        self.norm1 = build_norm(config.block_norm, in_channels, kind="image", eps=eps)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.norm2 = build_norm(config.block_norm, out_channels, kind="image", eps=eps)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.conv2.zero_init_last = config.zero_init_last  # read by `_init_weights`, which sees one module at a time
        self.act = nn.ReLU()
        self.projects_shortcut = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
            if self.projects_shortcut
            else nn.Identity()
        )
        self.residual = build_residual(config, out_channels, kind="image", branch_input=not self.projects_shortcut)

    def _convs(self, x_preact: torch.Tensor) -> torch.Tensor:
        """The branch after its pre-activation: ``(B, C_in, H, W)`` -> ``(B, C_out, H/s, W/s)``."""
        return self.conv2(self.act(self.norm2(self.conv1(x_preact))))

    def branch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """F: the full pre-activation branch, ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return self._convs(self.act(self.norm1(hidden_states)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H / stride, W / stride)``."""
        if not self.projects_shortcut:
            return self.residual(hidden_states, self.branch)
        x_preact = self.act(self.norm1(hidden_states))
        # shortcut: projection of the pre-activated input; residual branch: F from the same x_preact
        shortcut = self.shortcut(x_preact)
        branch_output = self._convs(x_preact)
        return self.residual(shortcut, lambda _: branch_output)


class RSkipResNetStage(nn.Module):
    """``n`` basic blocks; the first one may down-sample (``stride``) and widen (``C_in -> C_out``).

    Args:
        config: the model config.
        in_channels: C_in of the stage input.
        out_channels: C_out of every block.
        stride: stride of the first block.
    """

    def __init__(self, config: RSkipResNetConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            RSkipResNetBasicLayer(config, out_channels if i else in_channels, out_channels, 1 if i else stride)
            for i in range(config.blocks_per_stage)
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class RSkipResNetPreTrainedModel(PreTrainedModel):
    """Weight init (He's fan-out normal for convs, as in the paper) and the HF plumbing shared by both heads."""

    config: RSkipResNetConfig
    config_class = RSkipResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["RSkipResNetBasicLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # norms: weight 1, bias 0, fresh running statistics
        if isinstance(module, nn.Conv2d) and getattr(module, "zero_init_last", False):
            init.zeros_(module.weight)  # the last conv of a branch: each block starts as its skip
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, Residual) and isinstance(module.skip_lambda, nn.Parameter):
            init.constant_(module.skip_lambda, float(self.config.skip_lambda))


class RSkipResNetModel(RSkipResNetPreTrainedModel):
    """The PreAct-ResNet trunk: ``pixel_values (B, C, H, W)`` -> features ``(B, C_last, H/4, W/4)`` and their
    global average ``(B, C_last)``."""

    def __init__(self, config: RSkipResNetConfig) -> None:
        super().__init__(config)
        sizes = config.hidden_sizes
        self.embedder = conv3x3(config.num_channels, sizes[0])
        self.stages = nn.ModuleList(
            RSkipResNetStage(config, sizes[max(i - 1, 0)], size, stride=2 if i else 1)
            for i, size in enumerate(sizes)
        )
        # pre_ln needs a norm at the end of the stack (Identity otherwise); the final pre-activation follows
        self.final_residual_norm = build_final_norm(config, sizes[-1], kind="image")
        self.norm = build_norm(config.block_norm, sizes[-1], kind="image", eps=config.layer_norm_eps)
        self.act = nn.ReLU()
        self.pooler = nn.AdaptiveAvgPool2d(1)
        if config.residual_scheme == "pre_ln":
            # hf_rskip 0.2 built a pre_ln norm at the down-sampling blocks and never used its output: folders saved
            # by it hold these weights, which have no place now
            self._keys_to_ignore_on_load_unexpected = [r"stages\.\d+\.layers\.0\.residual\.norms\.0\."]
        self.post_init()

    def forward_features(
        self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Stem and stages, then the final pre-activation.

        Args:
            pixel_values: ``(B, num_channels, H, W)`` normalized images.
            output_hidden_states: also return the stem output and each stage output.

        Returns:
            ``ReLU(N(stages(stem(x))))`` of shape ``(B, C_last, H / 2^(stages-1), W / 2^(stages-1))``, and the hidden
            states ``(stem, stage 1, ..., stage k)`` or None.
        """
        hidden_states = self.embedder(pixel_values)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
        features = self.act(self.norm(self.final_residual_norm(hidden_states)))
        return features, all_hidden_states

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """Args:
            pixel_values: ``(B, num_channels, H, W)`` normalized images (see the saved image processor).
            output_hidden_states: return the stem output and each stage output, each ``(B, C_i, H_i, W_i)``.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        features, hidden_states = self.forward_features(pixel_values, output_hidden_states=bool(output_hidden_states))
        pooled = self.pooler(features).flatten(1)  # (B, C_last, 1, 1) -> (B, C_last)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=features, pooler_output=pooled, hidden_states=hidden_states
        )


class RSkipResNetForImageClassification(RSkipResNetPreTrainedModel):
    """The trunk with a linear classifier on the pooled features; cross-entropy loss from ``labels``."""

    def __init__(self, config: RSkipResNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = RSkipResNetModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, num_channels, H, W)`` -> final pre-activated features ``(B, C_last, H', W')``."""
        return self.resnet.forward_features(pixel_values)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool and classifier: ``(B, C_last, H', W')`` -> logits ``(B, num_labels)``."""
        return self.classifier(self.resnet.pooler(features).flatten(1))

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutputWithNoAttention:
        """Args:
            pixel_values: ``(B, num_channels, H, W)`` normalized images.
            labels: ``(B,)`` class indices in ``[0, num_labels)``; gives the cross-entropy ``loss``.
            output_hidden_states: return the stem output and each stage output.
        """
        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "RSkipResNetForImageClassification",
    "RSkipResNetModel",
    "RSkipResNetPreTrainedModel",
]
