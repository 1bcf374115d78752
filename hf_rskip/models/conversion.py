"""`convert_to_rskip`: the one entry point that turns a Marian, a T5 or one of our own models into an rSkip model.

This module sits above both text families (it imports each; they never import it or each other). Where the
target scheme is the source's own architecture the conversion is exact: T5 becomes `RSkipT5ForConditionalGeneration`
with `residual_scheme="pre_ln"`, `residual_norm="rms"` (same logits, same beam search), Marian becomes
`RSkipForConditionalGeneration` with `"post_ln"` (through `RSkipForConditionalGeneration.from_marian`). Any other
scheme keeps every weight whose role is unchanged and starts the rest fresh, and says which in a warning.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, MarianMTModel, T5ForConditionalGeneration
from transformers.modeling_utils import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import logging

from .configuration_rskip import RSkipConfig
from .configuration_rskip_t5 import RSkipT5Config
from .modeling_rskip import RSkipForConditionalGeneration
from .modeling_rskip_t5 import RSkipT5ForConditionalGeneration

logger = logging.get_logger(__name__)

RSkipSeq2Seq = RSkipForConditionalGeneration | RSkipT5ForConditionalGeneration

#: What `convert_to_rskip` accepts, by `config.model_type`, and what each becomes.
SOURCES: dict[str, str] = {
    "marian": "MarianMTModel -> RSkipForConditionalGeneration (post_ln reproduces it)",
    "t5": "T5ForConditionalGeneration (v1.0 relu/tied or v1.1 gated-gelu/untied) -> RSkipT5ForConditionalGeneration "
          "(pre_ln with rms reproduces it)",
    "rskip": "RSkipForConditionalGeneration -> the same class, with new options",
    "rskip_t5": "RSkipT5ForConditionalGeneration -> the same class, with new options",
}

_NON_FIELDS = ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path")
_NORMS = (nn.LayerNorm, nn.RMSNorm)


def convert_to_rskip(
    model_or_path: PreTrainedModel | str | os.PathLike,
    *,
    save_directory: str | os.PathLike | None = None,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike | bool | None = None,
    output_loading_info: bool = False,
    **config_overrides: Any,
) -> RSkipSeq2Seq | tuple[RSkipSeq2Seq, dict[str, Any]]:
    """Converts a translation model into the matching rSkip model.

    | source | result | reproduced exactly by |
    |---|---|---|
    | `MarianMTModel` | `RSkipForConditionalGeneration` | `residual_scheme="post_ln"` (the default here) |
    | `T5ForConditionalGeneration` | `RSkipT5ForConditionalGeneration` | `"pre_ln"`, `residual_norm="rms"` (default) |
    | one of ours | the same class | the source's own options (the default) |

    Any other scheme or λ (`residual_scheme=..., skip_lambda=...`) carries over every tensor whose role is
    unchanged: embeddings, attention (T5's relative position bias included), feed-forward, the LM head, and a
    norm where it sits in the same place (before the branch for pre_ln; after the sum for post_ln, xskip_ln and
    rskip_ln, where an rskip_ln λ=3 → 2 keeps norms 1 and 2) and is of the same kind (`residual_norm`). The other
    tensors start freshly initialised; a warning names them (by pattern) and counts the tensors carried over, the
    new ones and the source tensors dropped. Fine-tune before use. A tied embedding counts once.

    Args:
        model_or_path: a model object, or a folder / Hub id that `from_pretrained` loads (its `config.json` says
            which kind; `SOURCES` lists the accepted kinds).
        save_directory: where to save the converted model (with its generation config and, see `tokenizer`, the
            tokenizer), so the folder is complete: `AutoModelForSeq2SeqLM`, `AutoTokenizer` and
            `pipeline("rskip-translation")` load it. Nothing is saved when None.
        tokenizer: what to save beside the model. None (default): the tokenizer of the source folder when
            `model_or_path` is one and holds a tokenizer (else a warning); a tokenizer object, or a folder / Hub
            id to load one from; False: none. Given without `save_directory` it is an error.
        output_loading_info: also return `{"carried": int, "initialized": [names], "dropped": [names]}`.
        **config_overrides: config fields to set (`residual_scheme`, `skip_lambda`, `residual_norm`,
            `learn_skip_lambda`, dropout, ...). Fields that change a tensor's shape make that tensor new.

    Returns:
        The converted model (in the source's dtype, device and train/eval mode), or `(model, info)`.

    Example:
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> t5 = T5ForConditionalGeneration(T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        ...                                          decoder_start_token_id=0))
        >>> same = convert_to_rskip(t5)  # pre_ln + rms: T5 exactly
        >>> deep = convert_to_rskip(t5, residual_scheme="rskip_ln", skip_lambda=2)  # doctest: +SKIP
    """
    if tokenizer not in (None, False) and save_directory is None:
        raise ValueError("tokenizer= is saved beside the converted model: pass save_directory= too")
    folder = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
    source = _load_source(model_or_path)

    if isinstance(source, MarianMTModel):
        model, info = RSkipForConditionalGeneration.from_marian(source, output_loading_info=True, **config_overrides)
        info = {"carried": len(_distinct(model.state_dict())) - len(info["initialized"]), **info}
    elif isinstance(source, T5ForConditionalGeneration):
        model, info = _from_t5(source, config_overrides)
    else:
        model, info = _from_rskip(source, config_overrides)

    if save_directory is not None:
        model.save_pretrained(save_directory)
        _save_tokenizer(tokenizer, folder, save_directory)
    return (model, info) if output_loading_info else model


def _load_source(model_or_path: PreTrainedModel | str | os.PathLike) -> PreTrainedModel:
    """The source model object: as given, or loaded with the class its config names."""
    if isinstance(model_or_path, (str, os.PathLike)):
        model_type = AutoConfig.from_pretrained(model_or_path).model_type
        loaders = {"marian": MarianMTModel, "t5": T5ForConditionalGeneration,
                   "rskip": AutoModelForSeq2SeqLM, "rskip_t5": AutoModelForSeq2SeqLM}
        if model_type not in loaders:
            raise ValueError(
                f"model_type={model_type!r} (from {str(model_or_path)!r}) cannot be converted; "
                f"accepted: {list(SOURCES)}"
            )
        return loaders[model_type].from_pretrained(model_or_path)
    if isinstance(model_or_path, (MarianMTModel, T5ForConditionalGeneration)):
        return model_or_path
    # ours, also when loaded as remote code (a class from transformers_modules): known by its config
    model_type = getattr(getattr(model_or_path, "config", None), "model_type", None)
    if model_type in ("rskip", "rskip_t5") and hasattr(model_or_path, "lm_head"):
        return model_or_path
    raise TypeError(
        f"convert_to_rskip expects a MarianMTModel, a T5ForConditionalGeneration, an RSkipForConditionalGeneration "
        f"or an RSkipT5ForConditionalGeneration (or a path to one), got {type(model_or_path).__name__}"
    )


def _from_t5(
    t5: T5ForConditionalGeneration, overrides: dict[str, Any]
) -> tuple[RSkipT5ForConditionalGeneration, dict[str, Any]]:
    fields = {k: v for k, v in t5.config.to_dict().items() if k not in _NON_FIELDS}
    # transformers 5 always declares T5 tied; whether it is shows in the weights (a v1.1 checkpoint loads untied)
    tied = t5.lm_head.weight.data_ptr() == t5.shared.weight.data_ptr()
    fields.update(tie_word_embeddings=tied, scale_decoder_outputs=bool(t5.config.scale_decoder_outputs),
                  residual_scheme="pre_ln", residual_norm="rms")
    fields.update(overrides)
    config = RSkipT5Config(**fields)

    def rename(key: str) -> str:  # T5's pre-branch norm is norm 0 of our residual module
        return re.sub(r"(\.layer\.\d+\.layer_norm)\.weight$", r"\1.norms.0.weight", key)

    model, info = _transfer(t5, RSkipT5ForConditionalGeneration, config, rename, source_norms=("pre", "rms"),
                            source_lambda=None)
    if model.generation_config.decoder_start_token_id is None:
        model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    return model, info


def _from_rskip(source: PreTrainedModel, overrides: dict[str, Any]) -> tuple[RSkipSeq2Seq, dict[str, Any]]:
    fields = {k: v for k, v in source.config.to_dict().items() if k not in _NON_FIELDS}
    if overrides.get("residual_scheme", fields["residual_scheme"]) != fields["residual_scheme"]:
        fields.pop("skip_lambda")  # the source's λ belongs to its scheme: a new scheme starts at its own default
    fields.update(overrides)
    if source.config.model_type == "rskip_t5":
        cls, config = RSkipT5ForConditionalGeneration, RSkipT5Config(**fields)
    else:
        cls, config = RSkipForConditionalGeneration, RSkipConfig(**fields)
    src = source.config
    return _transfer(source, cls, config, lambda key: key, source_norms=(_placement(src), src.residual_norm),
                     source_lambda=(src.residual_scheme, src.skip_lambda, bool(src.learn_skip_lambda)))


def _placement(config: Any) -> str:
    """Where the scheme's norms sit: before the branch (pre_ln) or after the sum (the others)."""
    return "pre" if config.residual_scheme == "pre_ln" else "post"


def _distinct(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The state dict's names, one per stored tensor (tied names share storage; the first name stands for them)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    names = []
    for name, tensor in state_dict.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.device.type == "meta" or key not in seen:
            seen.add(key)
            names.append(name)
    return names


def _transfer(
    source: PreTrainedModel,
    cls: type[RSkipSeq2Seq],
    config: RSkipConfig | RSkipT5Config,
    rename: Callable[[str], str],
    *,
    source_norms: tuple[str, str],
    source_lambda: tuple[str, float, bool] | None,
) -> tuple[RSkipSeq2Seq, dict[str, Any]]:
    """Builds `cls(config)` and loads every source tensor whose role is unchanged (see `convert_to_rskip`)."""
    config._attn_implementation = source.config._attn_implementation
    model = cls(config).to(dtype=source.dtype, device=source.device)

    target_sd = model.state_dict()
    source_sd = {rename(k): v for k, v in source.state_dict().items()}
    same_norms = source_norms == (_placement(config), config.residual_norm)
    same_lambda = source_lambda == (config.residual_scheme, config.skip_lambda, bool(config.learn_skip_lambda))

    def carries(name: str) -> bool:
        value = source_sd.get(name)
        if value is None or value.shape != target_sd[name].shape:
            return False
        if name.endswith("skip_lambda"):  # a learned λ keeps its value only where λ and scheme are unchanged
            return same_lambda
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        return same_norms if isinstance(owner, _NORMS) else True

    converted: dict[str, torch.Tensor] = {}
    initialized: list[str] = []
    for name in _distinct(target_sd):
        if carries(name):
            converted[name] = source_sd[name]
        else:
            initialized.append(name)
    used = {source_sd[name].data_ptr() for name in converted}
    dropped = [name for name in _distinct(source_sd) if source_sd[name].data_ptr() not in used]

    _, unexpected = model.load_state_dict(converted, strict=False)
    if unexpected:  # cannot happen: every key comes from the target's own state dict
        raise RuntimeError(f"convert_to_rskip: weights with no place in {cls.__name__}: {unexpected}")
    model.tie_weights()
    model.generation_config = copy.deepcopy(source.generation_config)
    model.train(source.training)

    info = {"carried": len(converted), "initialized": initialized, "dropped": dropped}
    if initialized or dropped:
        logger.warning(
            f"convert_to_rskip: {type(source).__name__} -> {cls.__name__} with residual_scheme="
            f"{config.residual_scheme!r}, skip_lambda={config.skip_lambda}, residual_norm={config.residual_norm!r}: "
            f"{len(converted)} tensors carried over; {len(initialized)} new tensors start freshly initialised "
            f"({_patterns(initialized)}); {len(dropped)} source tensors dropped ({_patterns(dropped)}). "
            "Fine-tune before use."
        )
    return model, info


def _patterns(names: list[str]) -> str:
    """`encoder.block.*.layer.*.layer_norm.norms.1.weight (x4), ...`: which tensors, without one line per layer."""
    counts: dict[str, int] = {}
    for name in names:
        pattern = re.sub(r"\b(block|layers?)\.\d+", r"\1.*", name)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(f"{p} (x{n})" if n > 1 else p for p, n in counts.items()) or "none"


def _save_tokenizer(
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike | bool | None,
    folder: str | os.PathLike | None,
    save_directory: str | os.PathLike,
) -> None:
    """Saves the tokenizer `convert_to_rskip` was given, or the source folder's, beside the converted model."""
    if tokenizer is False:
        return
    if tokenizer is None or tokenizer is True:
        if folder is None:
            logger.warning(
                f"convert_to_rskip: the source was an object, so no tokenizer is saved to {str(save_directory)!r}; "
                "pass tokenizer=... to save one"
            )
            return
        if os.path.isdir(folder) and not any(
            os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer_config.json", "tokenizer.json")
        ):
            logger.warning(f"convert_to_rskip: {str(folder)!r} holds no tokenizer; the converted folder has none")
            return
        tokenizer = folder
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    tokenizer.save_pretrained(save_directory)


__all__ = ["SOURCES", "convert_to_rskip"]
