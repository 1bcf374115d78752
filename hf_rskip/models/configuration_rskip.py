"""Configuration of the rSkip encoder-decoder."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.models.marian.configuration_marian import MarianConfig

from .pipeline_support import drop_registered_pipelines
from .residual import TEXT_NORMS, check_learn_lambda, check_residual_options, normalize_skip_lambda


#: Named sizes (transformer fields only); `RSkipConfig.from_preset(name, **overrides)` builds one.
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # For tests and the built-in demo task.
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256),
    # Multi30k-sized runs on a CPU.
    "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    # fairseq's transformer_iwslt_de_en, the usual IWSLT'14/'15 size.
    "iwslt": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, dropout=0.3),
    # Vaswani et al. base and big, the WMT'14 EN-DE sizes.
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, dropout=0.1),
    "big": dict(d_model=1024, encoder_layers=6, decoder_layers=6, encoder_attention_heads=16,
                decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, dropout=0.3),
}


# Differs from MarianConfig only by the residual options below (and their validation); every Marian
# field keeps its name and default, so a Marian config converts field by field.
@strict(accept_kwargs=True)
class RSkipConfig(MarianConfig):
    r"""Configuration of [`RSkipModel`] and [`RSkipForConditionalGeneration`].

    Every field of [`~transformers.MarianConfig`] is kept with its name and default (`vocab_size=58101`,
    `d_model=1024`, `encoder_layers=12`, `decoder_layers=12`, `encoder_attention_heads=16`,
    `decoder_attention_heads=16`, `encoder_ffn_dim=4096`, `decoder_ffn_dim=4096`, `dropout=0.1`,
    `attention_dropout=0.0`, `activation_dropout=0.0`, `activation_function="gelu"`,
    `max_position_embeddings=1024`, `scale_embedding=False`, `pad_token_id=58100`, `eos_token_id=0`,
    `decoder_start_token_id=58100`, `share_encoder_decoder_embeddings=True`, `init_std=0.02`, ...).

    Args:
        residual_scheme (`str`, *optional*, defaults to `"rskip_ln"`):
            How every sublayer (self-attention, cross-attention, feed-forward) joins its skip:
            `"post_ln"` N(x + F(x)), `"pre_ln"` x + F(N(x)) with a final N per stack, `"xskip"` λx + F(x),
            `"xskip_ln"` N(λx + F(x)), `"rskip_ln"` G1 = N1(x + F(x)), Gi = Ni(G(i-1) + x), y = G(λ).
        skip_lambda (`int` or `float`, *optional*):
            λ. For `"rskip_ln"` an integer >= 1 (the number of recursive norms; 1 equals `"post_ln"`);
            for `"xskip"` / `"xskip_ln"` any number > 0. Unset (None), the scheme's default: 2 for `"xskip"`,
            `"xskip_ln"` and `"rskip_ln"`; `"post_ln"` and `"pre_ln"` have no λ, store 1, and refuse any other value.
        residual_norm (`str`, *optional*, defaults to `"layer"`):
            The normalization N: `"layer"` (LayerNorm, as in the paper and Marian) or `"rms"` (RMSNorm).
        learn_skip_lambda (`bool`, *optional*, defaults to `False`):
            An extension beyond the paper: make λ a trained parameter (one per sublayer), starting at
            `skip_lambda`. Only for `"xskip"` and `"xskip_ln"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every norm (Marian's LayerNorm default).

    Example:

    ```python
    >>> from hf_rskip import RSkipConfig
    >>> config = RSkipConfig(d_model=256, encoder_layers=6, decoder_layers=6, residual_scheme="rskip_ln", skip_lambda=3)
    >>> config.skip_lambda
    3
    ```
    """

    model_type = "rskip"

    residual_scheme: Any = "rskip_ln"
    skip_lambda: Any = None
    residual_norm: Any = "layer"
    learn_skip_lambda: Any = False
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        self._check_rskip_options()
        self.skip_lambda = normalize_skip_lambda(self.residual_scheme, self.skip_lambda)
        super().__post_init__(**kwargs)
        drop_registered_pipelines(self)

    def _check_rskip_options(self) -> None:
        """Raises `ValueError` naming the option, its value and what is accepted."""
        check_residual_options(self.residual_scheme, self.skip_lambda, self.residual_norm, TEXT_NORMS)
        check_learn_lambda(self.residual_scheme, self.learn_skip_lambda)
        for name in ("vocab_size", "d_model", "encoder_attention_heads", "decoder_attention_heads",
                     "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name in ("encoder_layers", "decoder_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if self.d_model % heads:
                raise ValueError(
                    f"{name}={heads} does not divide d_model={self.d_model}; accepted: a divisor of d_model "
                    f"(e.g. {[h for h in (1, 2, 4, 8, 16) if self.d_model % h == 0]})"
                )
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be a probability in [0, 1)")
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function={self.activation_function!r} is unknown; accepted: e.g. 'gelu', 'relu', "
                "'swish' (any key of transformers.activations.ACT2FN)"
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} must be a number > 0")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "RSkipConfig":
        """Builds a config from a named size in `TEXT_PRESETS` (ReLU FFN as in Vaswani et al.); overrides win."""
        if name not in TEXT_PRESETS:
            raise ValueError(f"preset={name!r} is unknown; accepted: {sorted(TEXT_PRESETS)}")
        return cls(**{**TEXT_PRESETS[name], "activation_function": "relu", **overrides})

    def validate_rskip(self):
        """Part of `@strict` validation (also run by `save_pretrained`): the options may have been edited."""
        self._check_rskip_options()
        if self.residual_scheme in ("post_ln", "pre_ln", "rskip_ln") and self.skip_lambda != normalize_skip_lambda(
            self.residual_scheme, self.skip_lambda
        ):
            raise ValueError(f"skip_lambda={self.skip_lambda!r} does not fit residual_scheme={self.residual_scheme!r}")


__all__ = ["RSkipConfig", "TEXT_PRESETS"]
