"""Typed options of the training scripts, parsed with transformers' ``HfArgumentParser``.

As in transformers' example scripts, a run is given on the command line or as one JSON / YAML file, and each part
of the job takes the dataclass it needs: :class:`TranslationModelArguments` / :class:`ImageModelArguments` (the
model), :class:`TranslationDataArguments` / :class:`ImageDataArguments` (the data) and
:class:`TranslationTrainingArguments` / :class:`ImageTrainingArguments` (the loop, both built on
:class:`RunArguments`). Option names follow ``run_translation_no_trainer.py`` and ``Seq2SeqTrainingArguments``
where they mean the same thing. Every value is checked when the dataclass is built (``__post_init__``), before any
data is read: a bad value raises :class:`ArgumentError` naming the option, the value and what is accepted.
Prefix abbreviations are off: ``--max_length`` is an unknown option, never an ambiguous one.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..data.images import CIFAR10_MEAN, CIFAR10_STD
from ..evaluation import BLEU_TOKENIZERS
from ..models.residual import IMAGE_NORMS, RESIDUAL_SCHEMES, TEXT_NORMS
from .optim import LR_SCHEDULERS, check_scheduler_options, is_metric_scheduler


class ArgumentError(ValueError):
    """A bad option value or combination; the message starts with ``--<option>``."""


def _fail(option: str, value: Any, accepted: str) -> ArgumentError:
    return ArgumentError(f"--{option} {value!r}: {accepted}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(option: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(option, value, f"must be an integer >= {minimum}")


def check_float(option: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """A finite number in the given range (``low_open``: ``> low``; ``high_open``: ``< high``)."""
    if value is None and optional:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    accepted = "must be a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
    if not _is_number(value) or not math.isfinite(value):
        raise _fail(option, value, accepted)
    if low is not None and (value <= low if low_open else value < low):
        raise _fail(option, value, accepted)
    if high is not None and (value >= high if high_open else value > high):
        raise _fail(option, value, accepted)


def config_error(err: ValueError) -> ArgumentError:
    """A config's ``ValueError`` (``"<field>=<value> <problem>"``) as an option error: the options carry the field
    names, so ``depth=21 is not ...`` becomes ``--depth 21: is not ...``."""
    name, _, rest = str(err).partition("=")
    if not rest or " " in name:
        return ArgumentError(str(err))
    value, _, problem = rest.partition(" ")
    return ArgumentError(f"--{name} {value}: {problem}")


def parse_steps(option: str, value: Any) -> int | str | None:
    """``N`` (every N optimizer steps), ``"epoch"``, or ``"no"`` / ``"none"`` / None (never)."""
    if value is None or (isinstance(value, str) and value.lower() in ("no", "none")):
        return None
    if value == "epoch":
        return "epoch"
    try:
        steps = int(value)
    except (TypeError, ValueError):
        raise _fail(option, value, "must be an integer >= 1, 'epoch' or 'no'") from None
    if steps < 1 or isinstance(value, float) and value != steps:
        raise _fail(option, value, "must be an integer >= 1, 'epoch' or 'no'")
    return steps


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


# --------------------------------------------------------------------------------------------------
# What every training script shares
# --------------------------------------------------------------------------------------------------


@dataclass
class RunArguments:
    """Output, seed, threads, the training loop, checkpoints, tracking and the Hub: shared by every script."""

    output_dir: str = field(metadata=_help("where the model, results.json, predictions, checkpoints/ and runs/ go"))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        "replace a finished run or the checkpoints in --output_dir (without it, such a folder is refused)"))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        "continue from a checkpoint folder, or 'latest' (an error when there is none)"))
    seed: int = field(default=42, metadata=_help("seed of initialization, dropout, augmentation and batch order"))
    threads: str = field(default="auto", metadata=_help(
        "CPU threads per process: a number, or 'auto' (the cores other programs leave idle, at least 1)"))
    learning_rate: float = field(default=5e-4, metadata=_help("peak learning rate"))
    weight_decay: float = field(default=0.0, metadata=_help("on weight matrices and conv kernels only (ndim >= 2)"))
    lr_scheduler_type: str = field(default="linear", metadata=_help(
        f"schedule: {', '.join(LR_SCHEDULERS)} (transformers' get_scheduler; multistep is torch's MultiStepLR)"))
    lr_scheduler_kwargs: str | None = field(default=None, metadata=_help(
        "JSON object of the schedule's own options, e.g. '{\"min_lr_rate\": 0.1}' for cosine_with_min_lr"))
    num_warmup_steps: int = field(default=0, metadata=_help("optimizer steps of linear warm-up"))
    max_grad_norm: float = field(default=1.0, metadata=_help("clip the gradient norm to this (0: no clipping)"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = field(default="no", metadata=_help(
        "autocast precision: bf16 (GPUs; CPUs with AVX-512 or AMX, elsewhere 10-33x slower than no), fp16 (GPUs), "
        "no (float32), or auto: bf16 where it is fast, else no"))
    torch_compile: bool = field(default=False, metadata=_help("train the torch.compile'd model"))
    per_device_eval_batch_size: int = field(default=64, metadata=_help("evaluation batch size per process"))
    num_train_epochs: int = field(default=10, metadata=_help("passes over the data (if no --max_train_steps)"))
    max_train_steps: int | None = field(default=None, metadata=_help("optimizer steps (overrides the epochs)"))
    logging_steps: int = field(default=50, metadata=_help("log the training figures every N steps"))
    eval_steps: str = field(default="epoch", metadata=_help("evaluate every N steps, 'epoch', or 'no'"))
    checkpointing_steps: str = field(default="no", metadata=_help("save a checkpoint every N steps, 'epoch', or 'no'"))
    keep_last_checkpoints: int | None = field(default=None, metadata=_help("delete older checkpoints"))
    with_tracking: bool = field(default=False, metadata=_help("log to the --report_to trackers in <output_dir>/runs"))
    report_to: str = field(default="tensorboard", metadata=_help("Accelerate tracker(s) for --with_tracking"))
    log_grad_norms_every: int | None = field(default=None, metadata=_help(
        "with --with_tracking: log every layer's gradient norm every N steps (the paper's analysis)"))
    license: str | None = field(default=None, metadata=_help("license for the model card, e.g. apache-2.0"))
    push_to_hub: bool = field(default=False, metadata=_help("upload --output_dir (without checkpoints/, runs/)"))
    hub_model_id: str | None = field(default=None, metadata=_help("user/name of the Hub repository"))
    hub_token: str | None = field(default=None, metadata=_help("Hub token (default: the stored login)"))
    hub_private_repo: bool = field(default=False, metadata=_help("create the Hub repository private"))

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise _fail("output_dir", self.output_dir, "must name a folder")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise _fail("output_dir", self.output_dir, "is a file, not a folder")
        check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**32:
            raise _fail("seed", self.seed, "must be an integer in [0, 2**32)")
        if self.threads != "auto":
            try:
                threads = int(self.threads)
            except (TypeError, ValueError):
                raise _fail("threads", self.threads, "must be 'auto' or an integer >= 1") from None
            check_int("threads", threads)
        check_float("learning_rate", self.learning_rate, low=0, low_open=True)
        check_float("weight_decay", self.weight_decay, low=0)
        check_float("max_grad_norm", self.max_grad_norm, low=0)
        check_int("num_warmup_steps", self.num_warmup_steps, minimum=0)
        for name in ("gradient_accumulation_steps", "per_device_eval_batch_size", "num_train_epochs",
                     "logging_steps"):
            check_int(name, getattr(self, name))
        for name in ("max_train_steps", "keep_last_checkpoints", "log_grad_norms_every"):
            check_int(name, getattr(self, name), optional=True)
        self.eval_steps = parse_steps("eval_steps", self.eval_steps)
        self.checkpointing_steps = parse_steps("checkpointing_steps", self.checkpointing_steps)
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise _fail("lr_scheduler_type", self.lr_scheduler_type, f"accepted: {', '.join(LR_SCHEDULERS)}")
        if isinstance(self.lr_scheduler_kwargs, str):
            try:
                kwargs = json.loads(self.lr_scheduler_kwargs)
            except ValueError as err:
                raise _fail("lr_scheduler_kwargs", self.lr_scheduler_kwargs, f"is not JSON ({err})") from None
            if not isinstance(kwargs, dict):
                raise _fail("lr_scheduler_kwargs", self.lr_scheduler_kwargs, "must be a JSON object")
            self.lr_scheduler_kwargs = kwargs
        try:
            check_scheduler_options(self.lr_scheduler_type, self.lr_scheduler_kwargs, self.num_warmup_steps)
        except ValueError as err:
            raise ArgumentError(f"--lr_scheduler_type {err}") from None
        if is_metric_scheduler(self.lr_scheduler_type) and self.eval_steps is None:
            raise _fail("lr_scheduler_type", self.lr_scheduler_type,
                        "is stepped with the validation loss, so it needs --eval_steps (N or 'epoch')")
        if self.log_grad_norms_every is not None and not self.with_tracking:
            raise _fail("log_grad_norms_every", self.log_grad_norms_every, "needs --with_tracking")
        if self.push_to_hub and not self.hub_model_id:
            raise _fail("push_to_hub", True, "needs --hub_model_id (e.g. 'user/rskip-en-de')")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise _fail("overwrite_output_dir", True, "contradicts --resume_from_checkpoint; choose one")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


# --------------------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------------------

#: Size options per model family of ``run_translation.py`` (each family's own field names).
FAMILY_SIZE_FIELDS: dict[str, tuple[str, ...]] = {
    "rskip": ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
              "encoder_ffn_dim", "decoder_ffn_dim"),
    "rskip_t5": ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads"),
}


@dataclass
class TranslationModelArguments:
    """Which model: a saved or converted one (``--model_name_or_path``), or a fresh one of a family and preset.

    Two families: ``rskip`` (Marian-style: sinusoidal positions, LayerNorm, ``final_logits_bias``) and ``rskip_t5``
    (T5-style: relative position buckets, bias-free RMSNorm, ReLU or gated-GELU feed-forward). Each takes its own
    size options (``--encoder_layers`` ... for rskip; T5's ``--num_layers``, ``--d_ff``, ``--d_kv`` ... for
    rskip_t5) on top of its preset.
    """

    model_name_or_path: str | None = field(default=None, metadata=_help(
        "a saved model (folder or Hub id) to continue training or fine-tune: an rSkip model of either family, or a "
        "Marian or T5 model converted on the fly (convert_to_rskip) to the scheme asked for"))
    config_name: str | None = field(default=None, metadata=_help(
        "a config (folder, file or Hub id) for a fresh model instead of --preset"))
    tokenizer_name: str | None = field(default=None, metadata=_help(
        "a tokenizer (folder or Hub id); default: the model's, or a BPE trained on the training data"))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "allow Python code shipped with --model_name_or_path / --config_name / --tokenizer_name to run"))
    model_type: Literal["rskip", "rskip_t5"] = field(default="rskip", metadata=_help(
        "model family of a fresh model: rskip (Marian-style) or rskip_t5 (T5-style)"))
    preset: str | None = field(default=None, metadata=_help(
        "size preset of a fresh model (rskip: TEXT_PRESETS, default small; rskip_t5: T5_PRESETS, default tiny)"))
    residual_scheme: str | None = field(default=None, metadata=_help(
        f"{', '.join(RESIDUAL_SCHEMES)} (default: rskip_ln for a fresh model, the saved one's otherwise)"))
    skip_lambda: float | None = field(default=None, metadata=_help(
        "λ: an integer >= 1 for rskip_ln, > 0 for xskip / xskip_ln (default: 2); post_ln and pre_ln have none"))
    residual_norm: str | None = field(default=None, metadata=_help(
        f"{', '.join(TEXT_NORMS)} (default: layer for rskip, rms for rskip_t5)"))
    d_model: int | None = field(default=None, metadata=_help("overrides the preset's value (both families)"))
    encoder_layers: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    decoder_layers: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    encoder_attention_heads: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    decoder_attention_heads: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    encoder_ffn_dim: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    decoder_ffn_dim: int | None = field(default=None, metadata=_help("rskip: overrides the preset's value"))
    num_layers: int | None = field(default=None, metadata=_help("rskip_t5: encoder layers"))
    num_decoder_layers: int | None = field(default=None, metadata=_help("rskip_t5: decoder layers"))
    num_heads: int | None = field(default=None, metadata=_help("rskip_t5: attention heads"))
    d_ff: int | None = field(default=None, metadata=_help("rskip_t5: feed-forward width"))
    d_kv: int | None = field(default=None, metadata=_help("rskip_t5: width of each attention head"))
    feed_forward_proj: str | None = field(default=None, metadata=_help("rskip_t5: relu (T5 v1.0) or gated-gelu (v1.1)"))
    dropout: float | None = field(default=None, metadata=_help(
        "default: the preset's (0.1 unless it says); for rskip_t5 T5's dropout_rate"))
    attention_dropout: float | None = field(default=None, metadata=_help("rskip: default the preset's (0)"))
    activation_dropout: float | None = field(default=None, metadata=_help("rskip: default the preset's (0)"))

    def __post_init__(self) -> None:
        from ..models.configuration_rskip import TEXT_PRESETS
        from ..models.configuration_rskip_t5 import T5_PRESETS

        presets = TEXT_PRESETS if self.model_type == "rskip" else T5_PRESETS
        if self.preset is None:
            self.preset = "small" if self.model_type == "rskip" else "tiny"
        if self.preset not in presets:
            raise _fail("preset", self.preset, f"accepted for --model_type {self.model_type}: "
                                               f"{', '.join(sorted(presets))}")
        if self.residual_scheme is not None and self.residual_scheme not in RESIDUAL_SCHEMES:
            raise _fail("residual_scheme", self.residual_scheme, f"accepted: {', '.join(RESIDUAL_SCHEMES)}")
        if self.residual_norm is not None and self.residual_norm not in TEXT_NORMS:
            raise _fail("residual_norm", self.residual_norm, f"accepted: {', '.join(TEXT_NORMS)}")
        check_float("skip_lambda", self.skip_lambda, low=0, low_open=True, optional=True)
        if self.skip_lambda is not None and self.residual_scheme in ("post_ln", "pre_ln") and self.skip_lambda != 1:
            raise _fail("skip_lambda", self.skip_lambda,
                        f"{self.residual_scheme} has no λ (only xskip, xskip_ln and rskip_ln do); drop the option")
        every_size = {f for fields_ in FAMILY_SIZE_FIELDS.values() for f in fields_}
        for name in every_size:
            check_int(name, getattr(self, name), optional=True)
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            check_float(name, getattr(self, name), low=0, high=1, high_open=True, optional=True)
        other = [f for f in sorted(every_size - set(FAMILY_SIZE_FIELDS[self.model_type]))
                 if getattr(self, f) is not None]
        if self.model_type == "rskip" and self.feed_forward_proj is not None:
            other.append("feed_forward_proj")
        if self.model_type == "rskip_t5":
            other += [f for f in ("attention_dropout", "activation_dropout") if getattr(self, f) is not None]
        if other and self.model_name_or_path is None:
            raise _fail(other[0], getattr(self, other[0]), f"is not an option of --model_type {self.model_type}")
        if self.model_name_or_path is not None:
            changed = [f for f in (*every_size, "feed_forward_proj") if getattr(self, f) is not None]
            if changed:
                raise _fail(changed[0], getattr(self, changed[0]),
                            "size options build a fresh model; they cannot change --model_name_or_path")
        elif self.config_name is None:
            self.fresh_config(vocab_size=8, pad_token_id=2, eos_token_id=0, decoder_start_token_id=2)

    def scheme_overrides(self) -> dict[str, Any]:
        """The scheme options that were given."""
        return {k: getattr(self, k) for k in ("residual_scheme", "skip_lambda", "residual_norm")
                if getattr(self, k) is not None}

    def dropout_overrides(self, model_type: str) -> dict[str, Any]:
        """The dropout options that were given, under the family's field names."""
        if model_type == "rskip_t5":
            return {"dropout_rate": self.dropout} if self.dropout is not None else {}
        return {k: getattr(self, k) for k in ("dropout", "attention_dropout", "activation_dropout")
                if getattr(self, k) is not None}

    def size_overrides(self) -> dict[str, Any]:
        """The family's size options, the scheme and the dropout options that were given."""
        sizes = {k: getattr(self, k) for k in (*FAMILY_SIZE_FIELDS[self.model_type], "feed_forward_proj")
                 if getattr(self, k) is not None}
        return {**sizes, **self.scheme_overrides(), **self.dropout_overrides(self.model_type)}

    def config_class(self) -> Any:
        from ..models import RSkipConfig, RSkipT5Config

        return RSkipConfig if self.model_type == "rskip" else RSkipT5Config

    def fresh_config(self, **fields: Any) -> Any:
        """The config of a fresh model from the family, preset and options (its own checks named as options).

        Args:
            **fields: config fields that do not come from options (token ids, vocabulary size, ...).
        """
        try:
            return self.config_class().from_preset(
                self.preset, **{"residual_scheme": "rskip_ln", **self.size_overrides()}, **fields)
        except ValueError as err:
            raise config_error(err) from None


TRANSLATION_DATA_OPTIONS: tuple[str, ...] = ("recipe", "dataset_name", "train_file", "validation_file", "test_file")
"""The options that name data; with none of them the built-in task runs."""


@dataclass
class TranslationDataArguments:
    """Where the parallel text comes from, and how it is cut and tokenized."""

    recipe: str | None = field(default=None, metadata=_help(
        "a named dataset with its hyperparameters as defaults (see DATASET_RECIPES; 'builtin' is the generated task)"))
    dataset_name: str | None = field(default=None, metadata=_help("a Hub dataset (or a local dataset folder)"))
    dataset_config_name: str | None = field(default=None, metadata=_help("its configuration"))
    train_file: str | None = field(default=None, metadata=_help(
        "parallel text: a prefix P for P.<lang>[.gz], or a .json/.jsonl/.csv file"))
    validation_file: str | None = field(default=None, metadata=_help("the same for validation"))
    test_file: str | None = field(default=None, metadata=_help("the same for the test set"))
    source_lang: str | None = field(default=None, metadata=_help("source language code, e.g. en"))
    target_lang: str | None = field(default=None, metadata=_help("target language code, e.g. de"))
    source_prefix: str | None = field(default=None, metadata=_help(
        "text put before every source, e.g. 'translate English to German: ' for T5-style models"))
    max_source_length: int = field(default=128, metadata=_help("longer sources are cut (tokens, </s> included)"))
    max_target_length: int = field(default=128, metadata=_help("longer targets are cut"))
    max_train_samples: int | None = field(default=None, metadata=_help("use the first N training pairs"))
    max_eval_samples: int | None = field(default=None, metadata=_help("use the first N validation pairs"))
    max_predict_samples: int | None = field(default=None, metadata=_help("use the first N test pairs"))
    vocab_size: int = field(default=8000, metadata=_help("size of the BPE trained when no tokenizer is given"))
    cache_dir: str | None = field(default=None, metadata=_help("where datasets caches Hub downloads"))
    builtin_num_train: int = field(default=20000, metadata=_help("built-in task: training pairs"))
    builtin_num_valid: int = field(default=200, metadata=_help("built-in task: validation pairs"))
    builtin_num_test: int = field(default=500, metadata=_help("built-in task: test pairs"))
    builtin_seed: int = field(default=0, metadata=_help("built-in task: the seed that generates it"))

    def __post_init__(self) -> None:
        from ..data.recipes import DATASET_RECIPES

        if self.recipe is not None and self.recipe != "builtin" and self.recipe not in DATASET_RECIPES:
            raise _fail("recipe", self.recipe, f"accepted: builtin, {', '.join(sorted(DATASET_RECIPES))}")
        for name in ("max_source_length", "max_target_length"):
            check_int(name, getattr(self, name), minimum=2)
        check_int("vocab_size", self.vocab_size, minimum=8)
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            check_int(name, getattr(self, name), optional=True)
        check_int("builtin_num_train", self.builtin_num_train)
        for name in ("builtin_num_valid", "builtin_num_test"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("builtin_seed", self.builtin_seed, minimum=0)
        named_data = self.dataset_name or self.train_file or self.validation_file or self.test_file
        if named_data and self.recipe is None and (not self.source_lang or not self.target_lang):
            raise _fail("source_lang", self.source_lang, "--source_lang and --target_lang are required with "
                        "--dataset_name or --train_file / --validation_file / --test_file")
        for name in ("train_file", "validation_file", "test_file"):
            value = getattr(self, name)
            if value and Path(value).is_dir():
                raise _fail(name, value, "is a folder; give a file, or the prefix P of P.<lang> files")

    @property
    def uses_builtin_task(self) -> bool:
        return self.recipe == "builtin" or (self.recipe is None and not any(
            getattr(self, name) for name in TRANSLATION_DATA_OPTIONS))


@dataclass
class TranslationTrainingArguments(RunArguments):
    """The loop, batches, loss and decoding of ``run_translation.py``."""

    learning_rate: float = field(default=5e-4, metadata=_help("peak learning rate"))
    weight_decay: float = field(default=1e-4, metadata=_help("on weight matrices only (ndim >= 2)"))
    lr_scheduler_type: str = field(default="inverse_sqrt", metadata=_help(
        f"schedule: {', '.join(LR_SCHEDULERS)} (inverse_sqrt is fairseq's: warm-up, then ∝ 1/√step)"))
    num_warmup_steps: int = field(default=4000, metadata=_help("optimizer steps of linear warm-up"))
    max_tokens: int | None = field(default=None, metadata=_help(
        "tokens per batch (padding included, fairseq's --max-tokens); default 4096 unless "
        "--per_device_train_batch_size is given"))
    per_device_train_batch_size: int | None = field(default=None, metadata=_help(
        "sentences per batch instead of --max_tokens"))
    label_smoothing: float = field(default=0.1, metadata=_help("ε of the label-smoothed cross-entropy"))
    optim: Literal["adamw", "adafactor"] = field(default="adamw", metadata=_help(
        "adamw, or adafactor (T5's: updates scaled by each weight's RMS, so it takes larger rates); the built-in "
        "task's default for --model_type rskip_t5 is adafactor at 5e-2"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW's β1"))
    adam_beta2: float = field(default=0.98, metadata=_help("AdamW's β2 (0.98 as Vaswani et al. and fairseq)"))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW's ε"))
    average_checkpoints: int = field(default=1, metadata=_help(
        "average the last N checkpoints into the final model (needs --checkpointing_steps)"))
    num_beams: int = field(default=4, metadata=_help("beam size for validation and test"))
    length_penalty: float = field(default=1.0, metadata=_help("beam-search length penalty (exponent on length)"))
    bleu_tokenize: str = field(default="13a", metadata=_help(
        "sacreBLEU tokenizer: 13a for detokenized text, none for pre-tokenized text (e.g. IWSLT'15)"))
    max_length_a: float = field(default=1.5, metadata=_help(
        "generate at most a * (longest source) + b new tokens (fairseq's --max-len-a)"))
    max_length_b: int = field(default=10, metadata=_help("see --max_length_a (fairseq's --max-len-b)"))

    DEFAULT_MAX_TOKENS = 4096

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("max_tokens", self.max_tokens, optional=True)
        check_int("per_device_train_batch_size", self.per_device_train_batch_size, optional=True)
        if self.max_tokens is not None and self.per_device_train_batch_size is not None:
            raise _fail("per_device_train_batch_size", self.per_device_train_batch_size,
                        "sentence batches replace --max_tokens; give one of the two")
        check_float("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        check_float("adam_beta1", self.adam_beta1, low=0, high=1, high_open=True)
        check_float("adam_beta2", self.adam_beta2, low=0, high=1, high_open=True)
        check_float("adam_epsilon", self.adam_epsilon, low=0, low_open=True)
        check_int("average_checkpoints", self.average_checkpoints)
        check_int("num_beams", self.num_beams)
        check_float("length_penalty", self.length_penalty)
        if self.bleu_tokenize not in BLEU_TOKENIZERS:
            raise _fail("bleu_tokenize", self.bleu_tokenize, f"accepted: {', '.join(BLEU_TOKENIZERS)}")
        check_float("max_length_a", self.max_length_a, low=0)
        check_int("max_length_b", self.max_length_b, minimum=0)
        if self.max_length_a == 0 and self.max_length_b == 0:
            raise _fail("max_length_a", self.max_length_a, "and --max_length_b 0 leave no room to generate")
        if self.average_checkpoints > 1 and self.checkpointing_steps is None:
            raise _fail("average_checkpoints", self.average_checkpoints, "needs checkpoints: set --checkpointing_steps")
        if self.keep_last_checkpoints is not None and self.keep_last_checkpoints < self.average_checkpoints:
            raise _fail("keep_last_checkpoints", self.keep_last_checkpoints,
                        f"keeps fewer checkpoints than --average_checkpoints {self.average_checkpoints} averages")
        if self.max_tokens is None and self.per_device_train_batch_size is None:
            self.max_tokens = self.DEFAULT_MAX_TOKENS


# --------------------------------------------------------------------------------------------------
# Image classification
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageModelArguments:
    """Which PreAct-ResNet: a saved one, or a fresh one of a depth and scheme."""

    model_name_or_path: str | None = field(default=None, metadata=_help("start from a saved model folder instead"))
    ignore_mismatched_sizes: bool = field(default=False, metadata=_help("with --model_name_or_path: a new head"))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "allow Python code shipped with --model_name_or_path to run"))
    depth: int = field(default=20, metadata=_help("6n+2: 20, 32, 44, 56, 110 (the paper's), 164"))
    hidden_sizes: list[int] = field(default_factory=lambda: [16, 32, 64], metadata=_help("stage widths"))
    residual_scheme: str = field(default="rskip_ln", metadata=_help(
        f"{', '.join(RESIDUAL_SCHEMES)}; xskip with --skip_lambda 1 is the plain PreAct-ResNet"))
    skip_lambda: float | None = field(default=None, metadata=_help(
        "λ (an integer for rskip_ln; default 2); post_ln and pre_ln have none"))
    residual_norm: str = field(default="layer", metadata=_help(
        "the scheme's norm: layer = over (C, H, W) per sample, batch = BatchNorm"))
    block_norm: str = field(default="batch", metadata=_help("the pre-activation norms: batch or layer"))
    learn_skip_lambda: bool = field(default=False, metadata=_help("train λ (xskip, xskip_ln)"))
    zero_init_last: bool = field(default=False, metadata=_help("zero each branch's last conv at init"))

    def __post_init__(self) -> None:
        check_int("depth", self.depth, minimum=4)
        if not self.hidden_sizes:
            raise _fail("hidden_sizes", self.hidden_sizes, "needs at least one stage width")
        for width in self.hidden_sizes:
            check_int("hidden_sizes", width)
        if self.residual_scheme not in RESIDUAL_SCHEMES:
            raise _fail("residual_scheme", self.residual_scheme, f"accepted: {', '.join(RESIDUAL_SCHEMES)}")
        for name in ("residual_norm", "block_norm"):
            if getattr(self, name) not in IMAGE_NORMS:
                raise _fail(name, getattr(self, name), f"accepted: {', '.join(IMAGE_NORMS)}")
        check_float("skip_lambda", self.skip_lambda, low=0, low_open=True, optional=True)
        if self.skip_lambda is not None and self.residual_scheme in ("post_ln", "pre_ln") and self.skip_lambda != 1:
            raise _fail("skip_lambda", self.skip_lambda,
                        f"{self.residual_scheme} has no λ (only xskip, xskip_ln and rskip_ln do); drop the option")
        if self.model_name_or_path is None:
            self.fresh_config(num_labels=2)

    def fresh_config(self, **fields: Any) -> Any:
        """The config of a fresh PreAct-ResNet from the options (its own checks named as options)."""
        from ..models import RSkipResNetConfig

        options = {"skip_lambda": self.skip_lambda} if self.skip_lambda is not None else {}
        try:
            return RSkipResNetConfig(
                depth=self.depth, hidden_sizes=list(self.hidden_sizes), residual_scheme=self.residual_scheme,
                residual_norm=self.residual_norm, block_norm=self.block_norm, learn_skip_lambda=self.learn_skip_lambda,
                zero_init_last=self.zero_init_last, num_channels=3, **options, **fields)
        except ValueError as err:
            raise config_error(err) from None


IMAGE_DATA_OPTIONS: tuple[str, ...] = ("dataset_name", "train_dir", "validation_dir", "train_file", "validation_file")
"""The options that name image data; with none of them scikit-learn's digits are used."""


@dataclass
class ImageDataArguments:
    """Where the images come from (one source; none: scikit-learn's bundled digits)."""

    dataset_name: str | None = field(default=None, metadata=_help("a Hub dataset (or a local dataset folder)"))
    dataset_config_name: str | None = field(default=None, metadata=_help("its configuration"))
    image_column_name: str = field(default="image", metadata=_help("Hub dataset: the image column (CIFAR-10: img)"))
    label_column_name: str = field(default="label", metadata=_help("Hub dataset: the label column"))
    train_dir: str | None = field(default=None, metadata=_help("a folder of class sub-folders of images"))
    validation_dir: str | None = field(default=None, metadata=_help("the same for evaluation"))
    train_file: str | None = field(default=None, metadata=_help("a .npz file with training images and labels"))
    validation_file: str | None = field(default=None, metadata=_help("a .npz file for evaluation"))
    train_image_key: str = field(default="x_train", metadata=_help("key of the images in --train_file"))
    train_label_key: str = field(default="y_train", metadata=_help("key of the labels in --train_file"))
    validation_image_key: str = field(default="x_test", metadata=_help("key of the images in --validation_file"))
    validation_label_key: str = field(default="y_test", metadata=_help("key of the labels in --validation_file"))
    label_names: str | None = field(default=None, metadata=_help(
        "comma-separated class names in index order (default: the data's, or 0..K-1)"))
    train_val_split: float = field(default=0.15, metadata=_help(
        "fraction of train held out when there is no evaluation split"))
    image_size: int = field(default=32, metadata=_help("images are resized (bilinear) to this size squared"))
    max_train_samples: int | None = field(default=None, metadata=_help("use a random N of the training images"))
    max_eval_samples: int | None = field(default=None, metadata=_help("use a random N of the evaluation images"))
    cache_dir: str | None = field(default=None, metadata=_help("where datasets caches Hub downloads"))

    def __post_init__(self) -> None:
        check_float("train_val_split", self.train_val_split, low=0, high=1, low_open=True, high_open=True)
        check_int("image_size", self.image_size, minimum=2)
        for name in ("max_train_samples", "max_eval_samples"):
            check_int(name, getattr(self, name), optional=True)
        sources = [name for name in ("dataset_name", "train_dir", "train_file") if getattr(self, name)]
        if len(sources) > 1:
            raise _fail(sources[1], getattr(self, sources[1]),
                        f"choose one data source; got {', '.join('--' + s for s in sources)}")
        if self.validation_dir and not self.train_dir:
            raise _fail("validation_dir", self.validation_dir, "needs --train_dir")
        if self.validation_file and not self.train_file:
            raise _fail("validation_file", self.validation_file, "needs --train_file")
        for name in ("train_file", "validation_file"):
            value = getattr(self, name)
            if value and Path(value).is_dir():
                raise _fail(name, value, "is a folder; give a .npz file (or use --train_dir for image folders)")
        for name in ("train_dir", "validation_dir"):
            value = getattr(self, name)
            if value and Path(value).exists() and not Path(value).is_dir():
                raise _fail(name, value, "is a file; give a folder of class sub-folders")

    @property
    def uses_builtin_task(self) -> bool:
        return not any(getattr(self, name) for name in IMAGE_DATA_OPTIONS)


@dataclass
class ImageTrainingArguments(RunArguments):
    """The loop, batches, SGD and augmentation of ``run_image_classification.py``."""

    learning_rate: float = field(default=0.1, metadata=_help("peak learning rate (He et al.: 0.1 for batch 128)"))
    weight_decay: float = field(default=1e-4, metadata=_help("on conv and linear weights only (He et al.: 1e-4)"))
    lr_scheduler_type: str = field(default="cosine", metadata=_help(
        f"schedule: {', '.join(LR_SCHEDULERS)} (multistep: ÷10 at 50%% and 75%% of training, He et al.)"))
    max_grad_norm: float = field(default=0.0, metadata=_help("clip the gradient norm to this (0: none, as He et al.)"))
    num_train_epochs: int = field(default=15, metadata=_help("passes over the data (if no --max_train_steps)"))
    logging_steps: int = field(default=20, metadata=_help("log the training figures every N steps"))
    per_device_train_batch_size: int = field(default=128, metadata=_help("images per batch and process"))
    per_device_eval_batch_size: int = field(default=256, metadata=_help("evaluation batch size per process"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum"))
    nesterov: bool = field(default=False, metadata=_help("Nesterov momentum"))
    random_crop_padding: int = field(default=4, metadata=_help("zero padding of the random crop (0: no crop)"))
    horizontal_flip: bool = field(default=True, metadata=_help("random horizontal flips (--no_horizontal_flip: off)"))
    image_mean: list[float] = field(default_factory=lambda: list(CIFAR10_MEAN), metadata=_help(
        "R G B normalization mean on the [0, 1] scale"))
    image_std: list[float] = field(default_factory=lambda: list(CIFAR10_STD), metadata=_help(
        "R G B normalization std"))
    channels_last: bool = field(default=False, metadata=_help(
        "NHWC memory layout for model and batches (faster convolutions on CPUs and GPUs)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("per_device_train_batch_size", self.per_device_train_batch_size)
        check_float("momentum", self.momentum, low=0, high=1, high_open=True)
        check_int("random_crop_padding", self.random_crop_padding, minimum=0)
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise _fail(name, values, "needs 3 values (R G B)")
        for value in self.image_mean:
            check_float("image_mean", value, low=0, high=1)
        for value in self.image_std:
            check_float("image_std", value, low=0, low_open=True)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


def _read_args_file(path: str) -> dict[str, Any]:
    """The options of a JSON or YAML file (an object of option names to values)."""
    file = Path(path)
    if not file.is_file():
        raise ArgumentError(f"{path}: no such file of arguments")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as err:  # yaml.YAMLError or json.JSONDecodeError, with line and column
        raise ArgumentError(f"{path}: not valid {file.suffix.lstrip('.').upper()}: {err}") from None
    if not isinstance(values, dict):
        raise ArgumentError(f"{path}: must hold an object of option names to values")
    return values


def _parser_class() -> type:
    from transformers import HfArgumentParser

    class OneLineParser(HfArgumentParser):
        """``HfArgumentParser`` whose errors are one line (``<prog>: error: ...``, exit 2), without the usage."""

        def error(self, message: str) -> None:  # type: ignore[override]
            self.exit(2, f"{self.prog}: error: {message}\n")

    return OneLineParser


def parse_arguments(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    *,
    defaults: Any = None,
    description: str | None = None,
    prog: str | None = None,
) -> tuple[Any, ...]:
    """Parses the command line (or one ``.json`` / ``.yaml`` file of options) into the given dataclasses.

    Args:
        dataclass_types: the argument dataclasses, in the order they are returned.
        argv: the arguments (default: ``sys.argv[1:]``).
        defaults: ``defaults(given) -> dict``: option defaults that depend on what was given (a recipe, the
            built-in task), applied before parsing so that ``--help`` shows them and given options win. ``given``
            maps the options named on the command line (or in the file) to their values.
        description: the ``--help`` text.
        prog: the program name in messages.

    Raises:
        ArgumentError: a value or combination is bad (the message names the option). Unknown options and values
            of the wrong type exit 2 with one line, as argparse does (without the usage).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser_class()(tuple(dataclass_types), allow_abbrev=False, description=description, prog=prog)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        values = _read_args_file(argv[0])
        known = {f.name for dtype in dataclass_types for f in fields(dtype)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ArgumentError(f"{argv[0]}: unknown option(s) {', '.join(unknown)}")
        merged = {**(defaults(values) if defaults else {}), **values}
        try:
            return tuple(parser.parse_dict(merged))
        except TypeError as err:  # a value of the wrong type in the file
            raise ArgumentError(f"{argv[0]}: {err}") from None
    if defaults is not None:
        parser.set_defaults(**defaults(_given_options(parser, argv)))
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    outputs = []
    for dtype in dataclass_types:
        names = {f.name for f in fields(dtype) if f.init}
        outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in names}))
    return tuple(outputs)


def _given_options(parser: Any, argv: Iterable[str]) -> dict[str, Any]:
    """The options named on a command line with their values (a pre-parse that ignores everything else)."""
    import argparse

    class Quiet(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ValueError(message)  # the real parser reports it, in one line

    pre = Quiet(add_help=False, allow_abbrev=False)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.nargs == 0:  # a switch such as --no_horizontal_flip
            pre.add_argument(*action.option_strings, dest=action.dest, action="store_const", const=True, default=None)
        else:
            pre.add_argument(*action.option_strings, dest=action.dest, nargs=action.nargs, default=None,
                             const=getattr(action, "const", None))
    try:
        known, _ = pre.parse_known_args(list(argv))
    except ValueError:
        return {}
    return {k: v for k, v in vars(known).items() if v is not None}


def as_flat_dict(*arguments: Any) -> dict[str, Any]:
    """Every option of some argument dataclasses, JSON-ready (for results, trackers and the model card)."""
    out: dict[str, Any] = {}
    for args in arguments:
        for f in fields(args):
            value = getattr(args, f.name)
            if f.name == "hub_token":
                continue  # never written anywhere
            out[f.name] = value if isinstance(value, (int, float, str, bool, type(None))) else json.dumps(value)
    return out


__all__ = [
    "ArgumentError",
    "IMAGE_DATA_OPTIONS",
    "ImageDataArguments",
    "ImageModelArguments",
    "ImageTrainingArguments",
    "RunArguments",
    "TRANSLATION_DATA_OPTIONS",
    "TranslationDataArguments",
    "TranslationModelArguments",
    "TranslationTrainingArguments",
    "as_flat_dict",
    "check_float",
    "check_int",
    "parse_arguments",
    "parse_steps",
]
