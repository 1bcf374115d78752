"""The rSkip T5 family: T5's encoder-decoder with every sublayer joined by a residual scheme.

Attention (relative position buckets, the transformers 5 key/value cache, every attention backend T5
supports) and the feed-forward blocks (ReLU `T5DenseActDense`, gated `T5DenseGatedActDense`) are T5's own
modules, imported unchanged. What is ours is the layer wiring: each sublayer is wrapped by the residual
module that `residual.build_residual` builds from the config, so the layers below never branch on the
scheme. With `residual_scheme="pre_ln"` and `residual_norm="rms"` the model is T5, weight name for weight
name (`<sublayer>.layer_norm.weight` becomes `<sublayer>.layer_norm.norms.0.weight`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
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
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense, T5DenseGatedActDense
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_rskip_t5 import RSkipT5Config
from .pipeline_support import declaring_translation_pipeline
from .residual import Residual, build_final_norm, build_residual

logger = logging.get_logger(__name__)


def _clamp_inf_fp16(hidden_states: torch.Tensor) -> torch.Tensor:
    """T5's guard for float16 training: ±inf becomes the largest finite value (other dtypes pass unchanged)."""
    if hidden_states.dtype == torch.float16:
        finfo = torch.finfo(torch.float16)
        clamp_value = torch.where(torch.isinf(hidden_states).any(), finfo.max - 1000, finfo.max)
        hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
    return hidden_states


def shift_right(input_ids: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: `(batch, tgt_len)` labels -> decoder inputs, `decoder_start_token_id` first, -100 -> pad."""
    shifted = input_ids.new_full(input_ids.shape, decoder_start_token_id)
    shifted[..., 1:] = input_ids[..., :-1]
    return shifted.masked_fill_(shifted == -100, pad_token_id)


# Differs from T5LayerSelfAttention only in how the sublayer joins its skip: `layer_norm` is the residual
# module built from the config (for pre_ln with rms it holds T5's RMSNorm, as `layer_norm.norms.0`).
class RSkipT5LayerSelfAttention(nn.Module):
    def __init__(self, config: RSkipT5Config, has_relative_attention_bias: bool = False,
                 layer_idx: int | None = None) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(
            config, has_relative_attention_bias=has_relative_attention_bias, layer_idx=layer_idx,
            is_causal=config.is_decoder,
        )
        self.layer_norm = build_residual(config, config.d_model)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Args:
        hidden_states: `(batch, seq_len, d_model)`.
        attention_mask: the mask from `create_bidirectional_mask` / `create_causal_mask`, or None.
        position_bias: `(1 or batch, heads, seq_len, key_len)`, computed by the stack's first layer and reused.

        Returns: the new hidden states, the position bias (for the next layers) and the attention weights
        `(batch, heads, seq_len, key_len)` (None for backends that do not return them).
        """
        side: dict[str, torch.Tensor | None] = {}  # the branch runs once per call in every scheme

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            out, side["position_bias"], side["weights"] = self.SelfAttention(
                h, mask=attention_mask, position_bias=position_bias, cache=cache, **kwargs
            )
            return self.dropout(out)

        hidden_states = self.layer_norm(hidden_states, self_attention)
        return hidden_states, side["position_bias"], side["weights"]


# Differs from T5LayerCrossAttention as RSkipT5LayerSelfAttention differs from T5LayerSelfAttention.
class RSkipT5LayerCrossAttention(nn.Module):
    def __init__(self, config: RSkipT5Config, layer_idx: int | None = None) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False, layer_idx=layer_idx,
                                           is_causal=False)
        self.layer_norm = build_residual(config, config.d_model)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Args:
        hidden_states: `(batch, tgt_len, d_model)` decoder states.
        key_value_states: `(batch, src_len, d_model)` encoder output.
        attention_mask: the mask over source positions, or None.
        position_bias: `(1 or batch, heads, tgt_len, src_len)`; zeros plus the mask in T5 (no relative bias here).
        """
        side: dict[str, torch.Tensor | None] = {}

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            out, side["position_bias"], side["weights"] = self.EncDecAttention(
                h, mask=attention_mask, key_value_states=key_value_states, position_bias=position_bias, cache=cache,
                **kwargs,
            )
            return self.dropout(out)

        hidden_states = self.layer_norm(hidden_states, cross_attention)
        return hidden_states, side["position_bias"], side["weights"]


# Differs from T5LayerFF as the attention sublayers do: the feed-forward block (T5's, unchanged) joins its
# skip through the residual module `layer_norm`.
class RSkipT5LayerFF(nn.Module):
    def __init__(self, config: RSkipT5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = build_residual(config, config.d_model)
        self.dropout = nn.Dropout(config.dropout_rate)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.DenseReluDense(hidden_states))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, seq_len, d_model)` -> `(batch, seq_len, d_model)`."""
        return self.layer_norm(hidden_states, self._feed_forward)


# Differs from T5Block only by its sublayers (above); the order, the shared position biases and the
# float16 clamping are T5's.
class RSkipT5Block(GradientCheckpointingLayer):
    def __init__(self, config: RSkipT5Config, has_relative_attention_bias: bool = False,
                 layer_idx: int | None = None) -> None:
        super().__init__()
        self.is_decoder = config.is_decoder
        self.layer = nn.ModuleList(
            [RSkipT5LayerSelfAttention(config, has_relative_attention_bias=has_relative_attention_bias,
                                       layer_idx=layer_idx)]
        )
        if self.is_decoder:
            self.layer.append(RSkipT5LayerCrossAttention(config, layer_idx=layer_idx))
        self.layer.append(RSkipT5LayerFF(config))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_decoder_position_bias: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Args:
        hidden_states: `(batch, seq_len, d_model)`.
        attention_mask: self-attention mask (bidirectional in the encoder, causal in the decoder), or None.
        position_bias: the self-attention bias of the stack's first block (None in the first block).
        encoder_hidden_states: `(batch, src_len, d_model)` (decoder only).
        encoder_attention_mask: the mask over source positions (decoder only).
        encoder_decoder_position_bias: the cross-attention bias of the first block (None in the first block).
        cache: an `EncoderDecoderCache` (decoder only), updated in place.

        Returns: `(hidden_states, self_attention_position_bias, cross_attention_position_bias)`.
        """
        hidden_states, self_attn_position_bias, _ = self.layer[0](
            hidden_states, attention_mask=attention_mask, position_bias=position_bias, cache=cache, **kwargs
        )
        hidden_states = _clamp_inf_fp16(hidden_states)

        cross_attn_position_bias = None
        if self.is_decoder and encoder_hidden_states is not None:
            hidden_states, cross_attn_position_bias, _ = self.layer[1](
                hidden_states,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                position_bias=encoder_decoder_position_bias,
                cache=cache,
                **kwargs,
            )
            hidden_states = _clamp_inf_fp16(hidden_states)

        hidden_states = _clamp_inf_fp16(self.layer[-1](hidden_states))
        return hidden_states, self_attn_position_bias, cross_attn_position_bias


class RSkipT5PreTrainedModel(PreTrainedModel):
    config: RSkipT5Config
    config_class = RSkipT5Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RSkipT5Block"]
    _keep_in_fp32_modules = ["wo"]  # as T5: flan-t5's feed-forward output overflows float16
    # T5's relative position bias goes through the attention mask, which flash attention cannot take.
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": OutputRecorder(RSkipT5Block, index=0),
        "attentions": OutputRecorder(RSkipT5LayerSelfAttention, index=-1),
        "cross_attentions": OutputRecorder(RSkipT5LayerCrossAttention, index=-1),
    }

    def _init_weights(self, module: nn.Module) -> None:
        """T5's initialisation (Mesh TensorFlow's), with our norms and learned λ."""
        super()._init_weights(module)
        factor = self.config.initializer_factor
        d_model, d_kv, d_ff, heads = self.config.d_model, self.config.d_kv, self.config.d_ff, self.config.num_heads
        if isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            init.constant_(module.weight, factor * 1.0)
        elif isinstance(module, (RSkipT5Model, RSkipT5ForConditionalGeneration, RSkipT5EncoderModel)):
            init.normal_(module.shared.weight, mean=0.0, std=factor * 1.0)
            if isinstance(module, RSkipT5ForConditionalGeneration) and not self.config.tie_word_embeddings:
                init.normal_(module.lm_head.weight, mean=0.0, std=factor * 1.0)
        elif isinstance(module, T5DenseActDense):
            init.normal_(module.wi.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wo.weight, mean=0.0, std=factor * d_ff**-0.5)
        elif isinstance(module, T5DenseGatedActDense):
            init.normal_(module.wi_0.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wi_1.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.wo.weight, mean=0.0, std=factor * d_ff**-0.5)
        elif isinstance(module, T5Attention):
            # the query absorbs T5's missing 1/sqrt(d_kv) attention scaling
            init.normal_(module.q.weight, mean=0.0, std=factor * (d_model * d_kv) ** -0.5)
            init.normal_(module.k.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.v.weight, mean=0.0, std=factor * d_model**-0.5)
            init.normal_(module.o.weight, mean=0.0, std=factor * (heads * d_kv) ** -0.5)
            if module.has_relative_attention_bias:
                init.normal_(module.relative_attention_bias.weight, mean=0.0, std=factor * d_model**-0.5)
        elif isinstance(module, Residual) and isinstance(module.skip_lambda, nn.Parameter):
            init.constant_(module.skip_lambda, float(self.config.skip_lambda))

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # For code outside transformers, transformers skips `_init_weights` on modules that own no parameter
        # themselves (it cannot know whether the code would overwrite loaded weights), which would skip T5's
        # per-role initialisation of T5Attention and the feed-forward blocks. `_init_weights` here changes weights
        # only through `transformers.initialization`, which leaves loaded weights alone, so it is safe to run.
        super()._initialize_weights(module, is_custom_code=False)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        """The `{tied: source}` parameter names, read by `tie_weights`, loading and saving.

        transformers ties nothing when `config.tie_word_embeddings` is False. Here the encoder, decoder and
        `shared` always share one embedding (as in T5); `tie_word_embeddings` only decides whether the LM head is
        that embedding too (T5 v1.0) or a matrix of its own (T5 v1.1).
        """
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        tied = dict(self._tied_weights_keys or {})
        if not self.config.tie_word_embeddings:
            tied.pop("lm_head.weight", None)
        return tied

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`, with an `auto_map` that names every Auto class of the family.

        transformers writes only the saved class's own Auto entry; naming all of them lets `AutoModel`,
        `AutoModelForSeq2SeqLM` and `AutoModelForTextEncoding` load the folder with `trust_remote_code=True`
        where this package is absent.
        """
        if self._auto_class is not None:
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": "modeling_rskip_t5.RSkipT5Model",
                "AutoModelForSeq2SeqLM": "modeling_rskip_t5.RSkipT5ForConditionalGeneration",
                "AutoModelForTextEncoding": "modeling_rskip_t5.RSkipT5EncoderModel",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _shift_right(self, input_ids: torch.Tensor) -> torch.Tensor:
        """T5's name for `shift_right` with this config's pad and start ids."""
        if self.config.decoder_start_token_id is None or self.config.pad_token_id is None:
            raise ValueError("config.decoder_start_token_id and config.pad_token_id must be set (T5 uses the pad id)")
        return shift_right(input_ids, self.config.pad_token_id, self.config.decoder_start_token_id)

    @property
    def dummy_inputs(self) -> dict[str, torch.Tensor]:
        pad = self.config.pad_token_id
        input_ids = torch.tensor([[0, 6, 10, 4, 2], [0, 8, 12, 2, pad]], device=self.device)
        return {"attention_mask": input_ids.ne(pad), "input_ids": input_ids, "decoder_input_ids": input_ids}


# Differs from T5Stack by the residual-scheme blocks and by `final_layer_norm`, the stack's final norm:
# T5's RMSNorm (or a LayerNorm) for schemes that need one (pre_ln), nn.Identity (no weights) for the others.
class RSkipT5Stack(RSkipT5PreTrainedModel):
    def __init__(self, config: RSkipT5Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.is_decoder = config.is_decoder
        # only the first block owns a relative position bias; the others reuse what it computes
        self.block = nn.ModuleList(
            RSkipT5Block(config, has_relative_attention_bias=i == 0, layer_idx=i) for i in range(config.num_layers)
        )
        self.final_layer_norm = build_final_norm(config, config.d_model)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.embed_tokens = new_embeddings

    @merge_with_config_defaults
    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """Args:
        input_ids: `(batch, seq_len)` token ids (or `inputs_embeds`: `(batch, seq_len, d_model)`); in the
            decoder only the new ids when `cache` holds the past.
        attention_mask: `(batch, seq_len)` (decoder: `(batch, past_len + seq_len)`), 1 for tokens, 0 for padding.
        encoder_hidden_states: `(batch, src_len, d_model)` (decoder only).
        encoder_attention_mask: `(batch, src_len)` source padding mask (decoder only).
        cache: an `EncoderDecoderCache` (decoder only); created here when `use_cache` and none is given.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        if not self.is_decoder:
            if use_cache:
                raise ValueError(f"use_cache=True is only valid in a decoder, not in {type(self).__name__}'s encoder")
            cache = None  # the encoder must not touch the decoder's cache
        elif use_cache and cache is None:
            if self.config.is_encoder_decoder:
                cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
            else:
                cache = DynamicCache(config=self.config)

        if self.is_decoder:
            attention_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache,
            )
        else:
            attention_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask
            )
        encoder_extended_attention_mask = None
        if self.is_decoder and encoder_hidden_states is not None:
            encoder_extended_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )

        position_bias = encoder_decoder_position_bias = None
        hidden_states = self.dropout(inputs_embeds)
        for block in self.block:
            hidden_states, position_bias, cross_position_bias = block(
                hidden_states,
                attention_mask,
                position_bias,
                encoder_hidden_states,
                encoder_extended_attention_mask,
                encoder_decoder_position_bias,  # positional, for gradient checkpointing
                cache=cache,
                **kwargs,
            )
            if self.is_decoder and encoder_hidden_states is not None:
                encoder_decoder_position_bias = cross_position_bias

        hidden_states = self.dropout(self.final_layer_norm(hidden_states))
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, cache=cache)


def _stack_configs(config: RSkipT5Config) -> tuple[RSkipT5Config, RSkipT5Config]:
    """The encoder's and the decoder's copy of the config, as T5 builds them."""
    encoder_config = copy.deepcopy(config)
    encoder_config.is_decoder = False
    encoder_config.use_cache = False
    decoder_config = copy.deepcopy(config)
    decoder_config.is_decoder = True
    decoder_config.num_layers = config.num_decoder_layers
    return encoder_config, decoder_config


def _as_encoder_output(encoder_outputs: tuple | BaseModelOutput) -> BaseModelOutput:
    """Accepts a computed encoder pass as a `BaseModelOutput` or a tuple (hidden states first)."""
    if isinstance(encoder_outputs, BaseModelOutput):
        return encoder_outputs
    return BaseModelOutput(
        last_hidden_state=encoder_outputs[0],
        hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
        attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
    )


# Differs from T5Model by the residual-scheme stacks (and the inner calls always asking for output objects,
# so `return_dict=False` in the config gives tuples at the top only).
class RSkipT5Model(RSkipT5PreTrainedModel):
    """The bare encoder-decoder (no head), laid out as `T5Model`: `shared`, `encoder`, `decoder`."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: RSkipT5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config, decoder_config = _stack_configs(config)
        self.encoder = RSkipT5Stack(encoder_config)
        self.decoder = RSkipT5Stack(decoder_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)
        self.decoder.set_input_embeddings(new_embeddings)

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
        decoder_input_ids: `(batch, tgt_len)`, starting with `decoder_start_token_id` (the pad id, as in T5).
        encoder_outputs: reuse a computed encoder pass (generation does).
        return_dict: False gives a tuple (also taken from `config.return_dict`).

        Returns: `Seq2SeqModelOutput` with `last_hidden_state` of shape `(batch, tgt_len, d_model)`.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True,
                **kwargs,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
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


# Differs from T5ForConditionalGeneration by the residual-scheme stacks, by a head that is tied or not as
# `tie_word_embeddings` says, and by a loss normalised by `num_items_in_batch` when the Trainer passes it.
class RSkipT5ForConditionalGeneration(RSkipT5PreTrainedModel, GenerationMixin):
    """RSkipT5Model's layout (`shared`, `encoder`, `decoder`) with T5's LM head `lm_head`.

    Tied (T5 v1.0: `tie_word_embeddings=True`) the head is the shared embedding and the decoder output is
    scaled by `d_model ** -0.5` first; untied (v1.1) it is a matrix of its own and nothing is scaled
    (`scale_decoder_outputs` sets the scaling on its own where a checkpoint needs it).
    """

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
        "lm_head.weight": "shared.weight",
    }

    def __init__(self, config: RSkipT5Config) -> None:
        super().__init__(config)
        self.model_dim = config.d_model
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config, decoder_config = _stack_configs(config)
        self.encoder = RSkipT5Stack(encoder_config)
        self.decoder = RSkipT5Stack(decoder_config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`RSkipT5PreTrainedModel.save_pretrained`, and the folder declares the `"rskip-translation"` pipeline and
        carries its code, so `pipeline("rskip-translation", model=folder, trust_remote_code=True)` works where this
        package is absent."""
        with declaring_translation_pipeline(self, save_directory, is_main_process=kwargs.get("is_main_process", True)):
            return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)
        self.decoder.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

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
        input_ids: `(batch, src_len)` source ids; attention_mask: `(batch, src_len)`.
        decoder_input_ids: `(batch, tgt_len)`; when absent and `labels` are given, the labels shifted right
            behind `decoder_start_token_id`.
        labels: `(batch, tgt_len)` target ids, -100 where ignored. The loss is the token cross-entropy, the mean
            over the batch's targets, or their sum over `num_items_in_batch` when that is passed (the Trainer does,
            so gradient accumulation weighs every token alike).
        return_dict: False gives a tuple (also taken from `config.return_dict`).

        Returns: `Seq2SeqLMOutput` with `logits` of shape `(batch, tgt_len, vocab_size)`.
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False  # teacher forcing sees the whole target at once
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self._shift_right(labels)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True,
                **kwargs,
            )
        encoder_outputs = _as_encoder_output(encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        sequence_output = decoder_outputs.last_hidden_state
        if self.config.scale_decoder_outputs:
            sequence_output = sequence_output * (self.model_dim**-0.5)  # Mesh TensorFlow's tied-head rescaling
        lm_logits = self.lm_head(sequence_output)

        loss = None
        if labels is not None:  # transformers' token cross-entropy (mean, or sum / num_items_in_batch)
            loss = ForMaskedLMLoss(lm_logits, labels, lm_logits.shape[-1], num_items_in_batch=num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=lm_logits,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)


# Differs from T5EncoderModel by the residual-scheme stack, and by building the encoder from a copy of the
# config (T5EncoderModel edits the caller's config in place).
class RSkipT5EncoderModel(RSkipT5PreTrainedModel):
    """The encoder alone (`shared`, `encoder`), e.g. for text embeddings; loads from a seq2seq folder too."""

    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^lm_head\."]

    def __init__(self, config: RSkipT5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        encoder_config = copy.deepcopy(config)
        encoder_config.use_cache = False
        encoder_config.is_encoder_decoder = False
        encoder_config.is_decoder = False
        self.encoder = RSkipT5Stack(encoder_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.shared = new_embeddings
        self.encoder.set_input_embeddings(new_embeddings)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """Args:
        input_ids: `(batch, seq_len)` (or `inputs_embeds`: `(batch, seq_len, d_model)`).
        attention_mask: `(batch, seq_len)`, 1 for tokens, 0 for padding.

        Returns: `BaseModelOutput` with `last_hidden_state` of shape `(batch, seq_len, d_model)`.
        """
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, return_dict=True,
            **kwargs,
        )


__all__ = [
    "RSkipT5PreTrainedModel",
    "RSkipT5Stack",
    "RSkipT5Model",
    "RSkipT5ForConditionalGeneration",
    "RSkipT5EncoderModel",
]
