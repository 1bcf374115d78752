"""Configuration of the rSkip T5 family."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.models.t5.configuration_t5 import T5Config

from .pipeline_support import drop_registered_pipelines
from .residual import TEXT_NORMS, check_learn_lambda, check_residual_options, normalize_skip_lambda

#: Named sizes (transformer fields only); `RSkipT5Config.from_preset(name, **overrides)` builds one. The `t5-*`
#: entries are the sizes of Google's checkpoints of that name (v1.0: ReLU, tied head; v1.1: gated GELU, untied).
T5_PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the built-in demo task.
    "tiny": dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4),
    "t5-small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                     num_heads=8),
    "t5-base": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                    num_heads=12),
    "t5-v1_1-small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8,
                          num_heads=6, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5-v1_1-base": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                         num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


# Differs from T5Config by the residual options below (and their validation), by a `tie_word_embeddings`
# that is honoured (transformers 5's T5Config forces it to True and keeps the v1.0/v1.1 difference only in
# `scale_decoder_outputs`), by `decoder_start_token_id` defaulting to the pad id, and by the alias
# `layer_norm_eps` -> `layer_norm_epsilon` that the residual module reads. Every T5 field keeps its name and
# default, so a T5 config converts field by field.
@strict(accept_kwargs=True)
class RSkipT5Config(T5Config):
    r"""Configuration of [`RSkipT5Model`], [`RSkipT5ForConditionalGeneration`] and [`RSkipT5EncoderModel`].

    Every field of [`~transformers.T5Config`] is kept with its name and default (the t5-small sizes:
    `vocab_size=32128`, `d_model=512`, `d_kv=64`, `d_ff=2048`, `num_layers=6`, `num_decoder_layers=None` (= num_layers),
    `num_heads=8`, `relative_attention_num_buckets=32`, `relative_attention_max_distance=128`, `dropout_rate=0.1`,
    `layer_norm_epsilon=1e-6`, `initializer_factor=1.0`, `feed_forward_proj="relu"`, `pad_token_id=0`,
    `eos_token_id=1`, ...).

    Args:
        residual_scheme (`str`, *optional*, defaults to `"rskip_ln"`):
            How every sublayer (self-attention, cross-attention, feed-forward) joins its skip:
            `"post_ln"` N(x + F(x)), `"pre_ln"` x + F(N(x)) with a final N per stack (with `residual_norm="rms"` this
            is exactly T5), `"xskip"` λx + F(x), `"xskip_ln"` N(λx + F(x)), `"rskip_ln"` G1 = N1(x + F(x)),
            Gi = Ni(G(i-1) + x), y = G(λ).
        skip_lambda (`int` or `float`, *optional*):
            λ. For `"rskip_ln"` an integer >= 1 (the number of recursive norms; 1 equals `"post_ln"`);
            for `"xskip"` / `"xskip_ln"` any number > 0. Unset (None), the scheme's default: 2 for `"xskip"`,
            `"xskip_ln"` and `"rskip_ln"`; `"post_ln"` and `"pre_ln"` have no λ, store 1, and refuse any other value.
        residual_norm (`str`, *optional*, defaults to `"rms"`):
            The normalization N: `"rms"` (RMSNorm without bias, T5's norm) or `"layer"` (LayerNorm, as in the paper).
        learn_skip_lambda (`bool`, *optional*, defaults to `False`):
            An extension beyond the paper: make λ a trained parameter (one per sublayer), starting at
            `skip_lambda`. Only for `"xskip"` and `"xskip_ln"`.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            `True`: the LM head is the shared embedding (T5 v1.0); `False`: a separate matrix (T5 v1.1, mT5).
            The encoder and decoder always share one input embedding, as in T5.
        scale_decoder_outputs (`bool`, *optional*, defaults to `None`):
            Multiply the decoder output by `d_model ** -0.5` before the LM head. `None` means "as T5 does":
            equal to `tie_word_embeddings` (v1.0 scales, v1.1 does not).
        decoder_start_token_id (`int`, *optional*, defaults to `None`):
            The first decoder token; `None` means `pad_token_id`, as in T5.

    Example:

    ```python
    >>> from hf_rskip import RSkipT5Config
    >>> config = RSkipT5Config.from_preset("t5-small", residual_scheme="rskip_ln", skip_lambda=3)
    >>> (config.d_model, config.skip_lambda, config.residual_norm)
    (512, 3, 'rms')
    ```
    """

    model_type = "rskip_t5"
    # The residual module reads `layer_norm_eps` (the Marian-family name); T5 calls it `layer_norm_epsilon`.
    attribute_map = {**T5Config.attribute_map, "layer_norm_eps": "layer_norm_epsilon"}

    residual_scheme: Any = "rskip_ln"
    skip_lambda: Any = None
    residual_norm: Any = "rms"
    learn_skip_lambda: Any = False
    tie_word_embeddings: Any = True
    scale_decoder_outputs: Any = None
    decoder_start_token_id: int | None = None

    def __post_init__(self, **kwargs):
        self._check_rskip_options()
        self.skip_lambda = normalize_skip_lambda(self.residual_scheme, self.skip_lambda)
        tie, scale = self.tie_word_embeddings, self.scale_decoder_outputs
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        super().__post_init__(**kwargs)
        # T5Config.__post_init__ overwrites both (it always ties); ours are real options.
        self.tie_word_embeddings = tie
        self.scale_decoder_outputs = tie if scale is None else scale
        drop_registered_pipelines(self)

    def _check_rskip_options(self) -> None:
        """Raises `ValueError` naming the option, its value and what is accepted."""
        check_residual_options(self.residual_scheme, self.skip_lambda, self.residual_norm, TEXT_NORMS)
        check_learn_lambda(self.residual_scheme, self.learn_skip_lambda)
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        decoder_layers = self.num_decoder_layers
        if decoder_layers is not None and (
            isinstance(decoder_layers, bool) or not isinstance(decoder_layers, int) or decoder_layers < 1
        ):
            raise ValueError(f"num_decoder_layers={decoder_layers!r} must be an integer >= 1 (or None: num_layers)")
        buckets, distance = self.relative_attention_num_buckets, self.relative_attention_max_distance
        # the encoder halves the buckets per direction and keeps half of those exact; both must stay >= 1
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 4:
            raise ValueError(f"relative_attention_num_buckets={buckets!r} must be an integer >= 4")
        if isinstance(distance, bool) or not isinstance(distance, int) or distance <= buckets // 2:
            raise ValueError(
                f"relative_attention_max_distance={distance!r} must be an integer > relative_attention_num_buckets // 2"
                f" = {buckets // 2} (the logarithmic buckets start there)"
            )
        for name in ("dropout_rate", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be a probability in [0, 1)")
        proj = self.feed_forward_proj
        parts = proj.split("-") if isinstance(proj, str) else []
        if not (len(parts) == 1 or (len(parts) == 2 and parts[0] == "gated")) or parts[-1] not in ACT2FN:
            raise ValueError(
                f"feed_forward_proj={proj!r} is not supported; accepted: 'relu' (T5 v1.0), 'gated-gelu' (T5 v1.1), "
                "or '<act>' / 'gated-<act>' with <act> a key of transformers.activations.ACT2FN"
            )
        for name in ("layer_norm_epsilon", "initializer_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a number > 0")
        for name in ("tie_word_embeddings", "scale_decoder_outputs"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "scale_decoder_outputs")):
                raise ValueError(f"{name}={value!r} must be True or False")

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> "RSkipT5Config":
        """As in `PreTrainedConfig`, but the decoder's view has the decoder's depth.

        Generation sizes its key/value cache from `get_text_config(decoder=True).num_hidden_layers`, which T5 maps to
        `num_layers`, the encoder's depth; with `num_decoder_layers > num_layers` the cache would be too short (the
        case fails in transformers' own T5).
        """
        config = super().get_text_config(decoder=decoder, encoder=encoder)
        if decoder and not encoder and config.num_decoder_layers not in (None, config.num_layers):
            config = copy.deepcopy(config) if config is self else config
            config.num_layers = config.num_decoder_layers
        return config

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RSkipT5Config":
        """Builds a config from a named size in `T5_PRESETS`; overrides win."""
        if name not in T5_PRESETS:
            raise ValueError(f"preset={name!r} is unknown; accepted: {sorted(T5_PRESETS)}")
        return cls(**{**T5_PRESETS[name], **overrides})

    def validate_rskip(self):
        """Part of `@strict` validation (also run by `save_pretrained`): the options may have been edited."""
        self._check_rskip_options()
        if self.residual_scheme in ("post_ln", "pre_ln", "rskip_ln") and self.skip_lambda != normalize_skip_lambda(
            self.residual_scheme, self.skip_lambda
        ):
            raise ValueError(f"skip_lambda={self.skip_lambda!r} does not fit residual_scheme={self.residual_scheme!r}")


__all__ = ["RSkipT5Config", "T5_PRESETS"]
