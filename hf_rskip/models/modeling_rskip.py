"""The rSkip encoder-decoder: Marian's Transformer with every sublayer joined by a residual scheme.

Attention (with the transformers 5 key/value cache and every attention backend) and the sinusoidal
positions are Marian's own modules, imported unchanged. What is ours is the layer wiring: each
sublayer is wrapped by the residual module that `residual.build_residual` builds from the config, so
the layers below never branch on the scheme.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.models.marian.modeling_marian import (
    MarianAttention,
    MarianSinusoidalPositionalEmbedding,
    shift_tokens_right,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_rskip import RSkipConfig
from .pipeline_support import declaring_translation_pipeline
from .residual import Residual, build_final_norm, build_residual

logger = logging.get_logger(__name__)

# Differs from MarianEncoderLayer only in how the two sublayers join their skip: through
# `self_attn_layer_norm` and `final_layer_norm`, which are residual modules built from the config
# (for post_ln they hold exactly Marian's LayerNorm, as `<name>.norms.0`).
class RSkipEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: RSkipConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.embed_dim = config.d_model
        self.self_attn = MarianAttention(
            embed_dim=self.embed_dim,
            num_heads=config.encoder_attention_heads,
            dropout=config.attention_dropout,
            config=config,
            layer_idx=layer_idx,
        )
        self.self_attn_layer_norm = build_residual(config, self.embed_dim)
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.fc1 = nn.Linear(self.embed_dim, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = build_residual(config, self.embed_dim)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        hidden_states = self.fc2(hidden_states)
        return nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        """Args:
        hidden_states: `(batch, src_len, d_model)`.
        attention_mask: the additive or boolean mask built by `create_bidirectional_mask`, or None.
        """

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            out, _ = self.self_attn(h, attention_mask=attention_mask, **kwargs)
            return nn.functional.dropout(out, p=self.dropout, training=self.training)

        hidden_states = self.self_attn_layer_norm(hidden_states, self_attention)
        hidden_states = self.final_layer_norm(hidden_states, self._feed_forward)

        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states


# Differs from MarianDecoderLayer as the encoder layer does: self-attention, cross-attention and the
# feed-forward block each join their skip through a residual module built from the config.
class RSkipDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: RSkipConfig, layer_idx: int | None = None) -> None:
        super().__init__()
        self.embed_dim = config.d_model
        self.self_attn = MarianAttention(
            embed_dim=self.embed_dim,
            num_heads=config.decoder_attention_heads,
            dropout=config.attention_dropout,
            is_decoder=True,
            is_causal=True,
            config=config,
            layer_idx=layer_idx,
        )
        self.dropout = config.dropout
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        self.self_attn_layer_norm = build_residual(config, self.embed_dim)
        self.encoder_attn = MarianAttention(
            self.embed_dim,
            config.decoder_attention_heads,
            dropout=config.attention_dropout,
            is_decoder=True,
            config=config,
            layer_idx=layer_idx,
        )
        self.encoder_attn_layer_norm = build_residual(config, self.embed_dim)
        self.fc1 = nn.Linear(self.embed_dim, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, self.embed_dim)
        self.final_layer_norm = build_residual(config, self.embed_dim)

    _feed_forward = RSkipEncoderLayer._feed_forward

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """Args:
        hidden_states: `(batch, tgt_len, d_model)`; tgt_len is 1 per step when decoding with a cache.
        attention_mask: the causal mask from `create_causal_mask`, or None.
        encoder_hidden_states: `(batch, src_len, d_model)`.
        encoder_attention_mask: the mask over source positions, or None.
        cache: an `EncoderDecoderCache`, updated in place.
        """

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            out, _ = self.self_attn(h, cache=cache, attention_mask=attention_mask, **kwargs)
            return nn.functional.dropout(out, p=self.dropout, training=self.training)

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            out, _ = self.encoder_attn(
                h, key_value_states=encoder_hidden_states, attention_mask=encoder_attention_mask, cache=cache, **kwargs
            )
            return nn.functional.dropout(out, p=self.dropout, training=self.training)

        hidden_states = self.self_attn_layer_norm(hidden_states, self_attention)
        if encoder_hidden_states is not None:
            hidden_states = self.encoder_attn_layer_norm(hidden_states, cross_attention)
        return self.final_layer_norm(hidden_states, self._feed_forward)


class RSkipPreTrainedModel(PreTrainedModel):
    config: RSkipConfig
    config_class = RSkipConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RSkipEncoderLayer", "RSkipDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MarianSinusoidalPositionalEmbedding):
            init.copy_(module.weight, module.create_weight())
        elif isinstance(module, RSkipForConditionalGeneration):
            init.zeros_(module.final_logits_bias)
        elif isinstance(module, Residual) and isinstance(module.skip_lambda, nn.Parameter):
            init.constant_(module.skip_lambda, float(self.config.skip_lambda))

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`, with an `auto_map` that names both Auto classes.

        transformers writes only the saved class's own Auto entry; naming both lets `AutoModel` and
        `AutoModelForSeq2SeqLM` load the folder with `trust_remote_code=True` where this package is absent.
        """
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_rskip.RSkipModel",
                "AutoModelForSeq2SeqLM": "modeling_rskip.RSkipForConditionalGeneration",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        pad = self.config.pad_token_id
        input_ids = torch.tensor([[0, 6, 10, 4, 2], [0, 8, 12, 2, pad]], device=self.device)
        return {"attention_mask": input_ids.ne(pad), "input_ids": input_ids, "decoder_input_ids": input_ids}


# Differs from MarianEncoder by the residual-scheme layers and `layer_norm`, the stack's final norm:
# a LayerNorm for schemes that need one (pre_ln), nn.Identity (no weights) for the others.
class RSkipEncoder(RSkipPreTrainedModel):
    _can_record_outputs = {"hidden_states": RSkipEncoderLayer, "attentions": MarianAttention}

    def __init__(self, config: RSkipConfig) -> None:
        super().__init__(config)
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, self.padding_idx)
        self.embed_positions = MarianSinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(RSkipEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = build_final_norm(config, config.d_model)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """Args:
        input_ids: `(batch, src_len)` token ids (or `inputs_embeds`: `(batch, src_len, d_model)`).
        attention_mask: `(batch, src_len)`, 1 for real tokens and 0 for padding.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        hidden_states = inputs_embeds + self.embed_positions(inputs_embeds.shape[:-1])
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
        )
        for encoder_layer in self.layers:
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue  # LayerDrop (Fan et al. 2019)
            hidden_states = encoder_layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layer_norm(hidden_states))


# Differs from MarianDecoder as RSkipEncoder differs from MarianEncoder.
class RSkipDecoder(RSkipPreTrainedModel):
    _can_record_outputs = {
        "hidden_states": RSkipDecoderLayer,
        "attentions": OutputRecorder(MarianAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MarianAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: RSkipConfig) -> None:
        super().__init__(config)
        self.dropout = config.dropout
        self.layerdrop = config.decoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.decoder_vocab_size, config.d_model, self.padding_idx)
        self.embed_positions = MarianSinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList(RSkipDecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers))
        self.layer_norm = build_final_norm(config, config.d_model)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """Args:
        input_ids: `(batch, tgt_len)` decoder ids, only the new ones when `cache` holds the past.
        attention_mask: `(batch, past_len + tgt_len)` decoder padding mask, or None.
        encoder_hidden_states: `(batch, src_len, d_model)`.
        encoder_attention_mask: `(batch, src_len)` source padding mask.
        cache: an `EncoderDecoderCache`; created here when `use_cache` and none is given.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of decoder input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        inputs_embeds = inputs_embeds * self.embed_scale  # Marian scales user-given embeddings too

        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))

        batch_size, seq_length = inputs_embeds.shape[:-1]
        past_length = cache.get_seq_length() if cache is not None else 0
        position_ids = torch.arange(seq_length, device=inputs_embeds.device) + past_length
        if attention_mask is None and not is_torchdynamo_compiling():
            # as Marian: under torch.compile a static cache's length is a tensor, so the mask comes from the cache
            attention_mask = torch.ones(batch_size, past_length + seq_length, device=inputs_embeds.device)

        self_attn_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        causal_mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=self_attn_cache
        )
        encoder_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )

        positions = self.embed_positions((batch_size, seq_length), past_length, position_ids=position_ids)
        hidden_states = nn.functional.dropout(inputs_embeds + positions, p=self.dropout, training=self.training)
        for decoder_layer in self.layers:
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            hidden_states = decoder_layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,  # positional, for gradient checkpointing
                encoder_attention_mask=encoder_attention_mask,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self.layer_norm(hidden_states), cache=cache)


def _require_unshared(config: RSkipConfig, method: str, instead: str) -> None:
    if config.share_encoder_decoder_embeddings:
        raise ValueError(
            f"`{method}` is for separate source and target embeddings, but this model has "
            f"share_encoder_decoder_embeddings=True (one vocabulary for both sides): use `{instead}`"
        )


class RSkipModel(RSkipPreTrainedModel):
    """The bare encoder-decoder (no head), laid out as `MarianModel`: `shared`, `encoder`, `decoder`."""

    _keys_to_ignore_on_load_missing = ["encoder.embed_positions.weight", "decoder.embed_positions.weight"]

    def __init__(self, config: RSkipConfig) -> None:
        super().__init__(config)
        if config.share_encoder_decoder_embeddings:
            self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
            self._tied_weights_keys = {
                "decoder.embed_tokens.weight": "shared.weight",
                "encoder.embed_tokens.weight": "shared.weight",
            }
        else:
            self._tied_weights_keys = None
        self.encoder = RSkipEncoder(config)
        self.decoder = RSkipDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if self.config.share_encoder_decoder_embeddings:
            self.shared = value
            self.decoder.embed_tokens = value
        self.encoder.embed_tokens = value

    def get_decoder_input_embeddings(self) -> nn.Embedding:
        """The target-side embedding (only with `share_encoder_decoder_embeddings=False`)."""
        _require_unshared(self.config, "get_decoder_input_embeddings", "get_input_embeddings")
        return self.decoder.embed_tokens

    def set_decoder_input_embeddings(self, value: nn.Embedding) -> None:
        _require_unshared(self.config, "set_decoder_input_embeddings", "set_input_embeddings")
        self.decoder.embed_tokens = value

    def resize_decoder_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resizes the target-side embedding, as `resize_token_embeddings` does the source side, and sets
        `config.decoder_vocab_size`. Only with `share_encoder_decoder_embeddings=False`."""
        _require_unshared(self.config, "resize_decoder_token_embeddings", "resize_token_embeddings")
        old = self.get_decoder_input_embeddings()
        new = self._get_resized_embeddings(old, new_num_tokens, pad_to_multiple_of, mean_resizing)
        new.requires_grad_(old.weight.requires_grad)
        self.set_decoder_input_embeddings(new)
        self.config.decoder_vocab_size = new.weight.shape[0]
        return new

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        """Args:
        input_ids: `(batch, src_len)`; attention_mask: `(batch, src_len)`.
        decoder_input_ids: `(batch, tgt_len)`, starting with `decoder_start_token_id` (the pad id, as in Marian).
        encoder_outputs: reuse a computed encoder pass (generation does).
        """
        # the inner calls return ModelOutputs whatever `config.return_dict` says; `can_return_tuple` converts the result
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


# Differs from MarianMTModel by the residual-scheme body (RSkipModel) and by `from_marian`.
class RSkipForConditionalGeneration(RSkipPreTrainedModel, GenerationMixin):
    """RSkipModel with Marian's tied language-model head (`lm_head` + `final_logits_bias`)."""

    _keys_to_ignore_on_load_missing = [
        "final_logits_bias",
        "model.encoder.embed_positions.weight",
        "model.decoder.embed_positions.weight",
    ]
    _keys_to_ignore_on_save = ["model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"]
    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}

    def __init__(self, config: RSkipConfig) -> None:
        super().__init__(config)
        self.model = RSkipModel(config)
        if config.share_encoder_decoder_embeddings:
            self._tied_weights_keys = {
                "lm_head.weight": "model.shared.weight",
                "model.decoder.embed_tokens.weight": "model.shared.weight",
                "model.encoder.embed_tokens.weight": "model.shared.weight",
            }
        target_vocab_size = config.vocab_size if config.share_encoder_decoder_embeddings else config.decoder_vocab_size
        self.final_logits_bias = nn.Buffer(torch.zeros((1, target_vocab_size)))
        self.lm_head = nn.Linear(config.d_model, target_vocab_size, bias=False)
        self.post_init()

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings
        self._resize_final_logits_bias(new_embeddings.weight.shape[0])

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`RSkipPreTrainedModel.save_pretrained`, and the folder declares the `"rskip-translation"` pipeline
        (`custom_pipelines` in its config) and carries the pipeline's code (`pipeline.py`), so that
        `pipeline("rskip-translation", model=folder, trust_remote_code=True)` works where this package is absent.
        """
        with declaring_translation_pipeline(self, save_directory, is_main_process=kwargs.get("is_main_process", True)):
            return super().save_pretrained(save_directory, *args, **kwargs)

    def get_decoder_input_embeddings(self) -> nn.Embedding:
        return self.model.get_decoder_input_embeddings()

    def set_decoder_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_decoder_input_embeddings(value)

    # The vocabulary resizes: transformers resizes the input embedding and a head of the same size; these keep the
    # target side (decoder embedding, tied `lm_head`, `final_logits_bias`) consistent, shared or not.
    def _resize_token_embeddings(
        self, new_num_tokens: int | None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        if self.config.share_encoder_decoder_embeddings:
            embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
            self.config.decoder_vocab_size = embeddings.weight.shape[0]
            self._resize_final_logits_bias(embeddings.weight.shape[0])
            return embeddings
        # separate vocabularies: only the source side changes; the head and its bias are the decoder's
        old = self.get_input_embeddings()
        new = self._get_resized_embeddings(old, new_num_tokens, pad_to_multiple_of, mean_resizing)
        new.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        return new

    def resize_decoder_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resizes the target vocabulary (with `share_encoder_decoder_embeddings=False`): the decoder embedding, the
        `lm_head` (tied to it, or resized alongside when `tie_word_embeddings=False`) and `final_logits_bias`.

        Returns:
            The new decoder embedding.
        """
        embeddings = self.model.resize_decoder_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.weight.shape[0]
        if not self.config.tie_word_embeddings:
            self.set_output_embeddings(self._get_resized_lm_head(self.lm_head, size, mean_resizing=mean_resizing))
        self.tie_weights()  # a tied head now shares the new decoder embedding
        self.lm_head.out_features = size
        self._resize_final_logits_bias(size)
        return embeddings

    def _resize_final_logits_bias(self, new_num_tokens: int) -> None:
        """Cuts or zero-pads `final_logits_bias` to `(1, new_num_tokens)`; kept entries keep their values."""
        old = self.final_logits_bias
        if new_num_tokens <= old.shape[-1]:
            new = old[:, :new_num_tokens].clone()
        else:
            extra = torch.zeros((1, new_num_tokens - old.shape[-1]), dtype=old.dtype, device=old.device)
            new = torch.cat([old, extra], dim=1)
        self.final_logits_bias = nn.Buffer(new)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        """Args:
        labels: `(batch, tgt_len)` target ids, -100 where ignored. When given and no decoder inputs are,
            the decoder reads the labels shifted right behind `decoder_start_token_id`; the loss is the
            mean token cross-entropy, or the sum over `num_items_in_batch` when given (label smoothing belongs to
            the training loop).

        Returns: `Seq2SeqLMOutput` with `logits` of shape `(batch, tgt_len, vocab_size)`.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            encoder_outputs=encoder_outputs,
            decoder_attention_mask=decoder_attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        lm_logits = self.lm_head(outputs.last_hidden_state) + self.final_logits_bias
        loss = None
        if labels is not None:
            # transformers' token cross-entropy: the mean over the targets, or their sum over `num_items_in_batch`
            # when the Trainer passes it (so gradient accumulation weighs every token alike)
            loss = ForMaskedLMLoss(lm_logits, labels, lm_logits.shape[-1], num_items_in_batch=num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=lm_logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @classmethod
    def from_marian(
        cls,
        model_or_path: Any,
        *,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ) -> "RSkipForConditionalGeneration" | tuple["RSkipForConditionalGeneration", dict[str, list[str]]]:
        """Converts a `MarianMTModel` (an object, or a folder / Hub id it was saved to).

        The default `residual_scheme="post_ln"` reproduces the Marian model exactly (same logits, same
        beam search). Any other scheme (pass `residual_scheme=..., skip_lambda=...`) keeps every
        weight whose role is unchanged (embeddings, attention, feed-forward, and the post-sum norm
        as the first norm of `xskip_ln` / `rskip_ln`), starts the other norms fresh, and logs which.

        Args:
            model_or_path: a `MarianMTModel`, or a path / Hub id for `MarianMTModel.from_pretrained`.
            output_loading_info: also return `{"initialized": [...], "dropped": [...]}`.
            **config_overrides: `RSkipConfig` fields to set (the scheme, λ, dropout, ...).
        """
        from transformers import MarianMTModel

        if isinstance(model_or_path, (str, os.PathLike)):
            marian = MarianMTModel.from_pretrained(model_or_path)
        elif isinstance(model_or_path, MarianMTModel):
            marian = model_or_path
        else:
            raise TypeError(
                f"from_marian expects a MarianMTModel or a path to one, got {type(model_or_path).__name__}"
            )
        fields = marian.config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path"):
            fields.pop(key, None)
        fields.update({"residual_scheme": "post_ln", **config_overrides})
        config = RSkipConfig(**fields)
        config._attn_implementation = marian.config._attn_implementation
        model = cls(config).to(dtype=marian.dtype, device=marian.device)

        # Only norms that sit where Marian's does (after the sum) keep Marian's weights.
        keep_norms = config.residual_scheme in ("post_ln", "xskip_ln", "rskip_ln")
        source = marian.state_dict()
        converted: dict[str, torch.Tensor] = {}
        dropped: list[str] = []
        for key, value in source.items():
            if key.endswith(("_layer_norm.weight", "_layer_norm.bias")):
                if not keep_norms:
                    dropped.append(key)
                    continue
                prefix, name = key.rsplit(".", 1)
                key = f"{prefix}.norms.0.{name}"
            converted[key] = value
        missing, unexpected = model.load_state_dict(converted, strict=False)
        if unexpected:
            raise RuntimeError(f"from_marian: weights with no place in RSkipForConditionalGeneration: {unexpected}")
        initialized = [k for k in missing if "embed_positions" not in k]
        if initialized or dropped:
            # `converted` holds exactly the Marian tensors placed in the model (dropped ones never entered it)
            parts = [f"{len(converted)} of {len(source)} Marian tensors carried over"]
            if initialized:
                parts.append(f"{len(initialized)} new tensors start freshly initialised (e.g. {initialized[:3]})")
            if dropped:
                parts.append(f"{len(dropped)} Marian norm tensors dropped (e.g. {dropped[:3]})")
            logger.warning(
                f"from_marian with residual_scheme={config.residual_scheme!r}, skip_lambda={config.skip_lambda}: "
                + "; ".join(parts) + ". Fine-tune before use."
            )
        model.tie_weights()
        model.generation_config = copy.deepcopy(marian.generation_config)
        model.eval() if not marian.training else model.train()
        if output_loading_info:
            return model, {"initialized": initialized, "dropped": dropped}
        return model


__all__ = [
    "RSkipPreTrainedModel",
    "RSkipEncoder",
    "RSkipDecoder",
    "RSkipModel",
    "RSkipForConditionalGeneration",
]
