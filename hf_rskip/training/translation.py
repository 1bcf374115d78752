"""The translation job that ``scripts/run_translation.py`` runs: data, tokenizer, model, task, evaluation, card.

What is translation-specific lives here; the loop, checkpoints, the output folder and publication are the shared
:class:`~hf_rskip.training.job.TrainingJob`'s. Beyond transformers' ``run_translation_no_trainer.py`` it brings
fairseq's tooling: token-based batches, label smoothing, inverse-square-root warm-up, checkpoint averaging,
sacreBLEU with signatures, and a bit-exact resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from .arguments import (
    ArgumentError,
    TranslationDataArguments,
    TranslationModelArguments,
    TranslationTrainingArguments,
    parse_arguments,
)
from .checkpointing import pretrained_load_problem
from .job import TrainingJob
from .loop import LoopResult

#: Defaults for the built-in task (no data options): a tiny model that learns the invented language in about
#: two minutes on one CPU thread. Keys are option names.
BUILTIN_DEFAULTS: dict[str, Any] = dict(
    preset="tiny", vocab_size=1000, max_tokens=2048, learning_rate=5e-3, num_warmup_steps=100,
    max_train_steps=600, dropout=0.1, label_smoothing=0.1, weight_decay=1e-4, num_beams=4, eval_steps="300",
    logging_steps=50, max_source_length=64, max_target_length=64, max_eval_samples=200,
    # generated text is whitespace-tokenized by construction: BLEU on those tokens (no sacreBLEU re-tokenizing)
    bleu_tokenize="none",
)

#: What differs for ``--model_type rskip_t5`` on the built-in task: T5's optimizer. T5's initialisation (embeddings of
#: RMS 1, queries of RMS ~0.03) is made for Adafactor, whose updates scale with each weight's RMS; with AdamW the
#: embeddings move ~1/200 of their size per step and the tiny model reaches 16-22 test BLEU in 600 steps (27 in 2,000)
#: where Adafactor at 5e-2 reaches ~91.
BUILTIN_T5_DEFAULTS: dict[str, Any] = dict(optim="adafactor", learning_rate=5e-2)


def option_defaults(given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults a run starts from: a recipe's hyperparameters, the built-in task's, or none."""
    from ..data.recipes import recipe_hparams

    recipe = given.get("recipe")
    named_data = any(given.get(name) for name in ("dataset_name", "train_file", "validation_file", "test_file"))
    defaults: dict[str, Any] = {}
    if recipe == "builtin" or (recipe is None and not named_data):
        defaults = dict(BUILTIN_DEFAULTS)
        if given.get("model_type") == "rskip_t5":
            defaults.update(BUILTIN_T5_DEFAULTS)
    elif recipe is not None:
        try:
            defaults = recipe_hparams(recipe)
        except ValueError:
            pass  # an unknown recipe is reported by the argument check, with the accepted names
    if given.get("per_device_train_batch_size") is not None:
        defaults.pop("max_tokens", None)  # sentence batches asked for: a default token budget does not apply
    if given.get("model_type") == "rskip_t5" and defaults.get("preset") not in (None, "tiny"):
        defaults.pop("preset")  # a recipe's preset names a Marian-style size; the T5 family has its own presets
    return defaults


def parse_translation_args(argv: list[str] | None = None) -> tuple[TranslationModelArguments,
                                                                  TranslationDataArguments,
                                                                  TranslationTrainingArguments]:
    """Parses ``run_translation.py`` options (or one JSON / YAML file of them); recipe defaults apply first."""
    return parse_arguments(
        (TranslationModelArguments, TranslationDataArguments, TranslationTrainingArguments), argv,
        defaults=option_defaults, prog="run_translation.py",
        description="Train an rSkip Transformer for translation and report sacreBLEU / chrF. Options may also be "
                    "given as one .json or .yaml file. A --recipe (or, without data options, the built-in task) "
                    "sets the defaults shown here; given options win.",
    )


class TranslationJob(TrainingJob):
    """Trains (or only evaluates) a translation model as ``run_translation.py`` describes."""

    script = "run_translation.py"
    task_name = "translation"

    model_args: TranslationModelArguments
    data_args: TranslationDataArguments
    args: TranslationTrainingArguments

    # -- data -----------------------------------------------------------------------------------------

    def load_data(self) -> None:
        from ..data.translation import clean_pairs

        raw, self.src, self.tgt, self.data_info = self._load_raw_data()
        self.counts: dict[str, Any] = {}
        for split in list(raw):
            raw[split], dropped = clean_pairs(raw[split], self.src, self.tgt)
            self.counts[f"{split}_dropped_empty"] = dropped["dropped_empty"]
            self.counts[f"{split}_pairs"] = len(raw[split])
        self.do_train = "train" in raw and len(raw["train"]) > 0
        if "train" in raw and not self.do_train:
            raise ArgumentError(f"--train_file: {self._split_source('train')} holds no pair with text on both sides")
        if not self.do_train and self.model_args.model_name_or_path is None:
            raise ArgumentError("--train_file: no training data and no --model_name_or_path: nothing to train or "
                                "evaluate")
        if self.do_train and "validation" not in raw:
            # No validation split given: hold out a small part of the training data, reproducibly.
            held = raw["train"].train_test_split(test_size=min(500, max(1, len(raw["train"]) // 20)),
                                                 seed=self.args.seed)
            raw["train"], raw["validation"] = held["train"], held["test"]
            self.counts["validation_held_out_from_train"] = len(raw["validation"])
        for split, option in (("validation", "validation_file"), ("test", "test_file")):
            if split in raw and len(raw[split]) == 0:  # found now, not after training
                raise ArgumentError(f"--{option}: {self._split_source(split)} holds no pair with text on both sides")
        self.raw = raw

    def _split_source(self, split: str) -> str:
        option = {"train": "train_file", "validation": "validation_file", "test": "test_file"}[split]
        return getattr(self.data_args, option) or f"the {split} split of {self.data_info['dataset_name']}"

    def _load_raw_data(self) -> tuple[Any, str, str, dict[str, Any]]:
        from ..data import (BUILTIN_SOURCE_LANG, BUILTIN_TARGET_LANG, DATASET_RECIPES, builtin_translation_task,
                            load_recipe, load_translation_datasets)

        data = self.data_args
        files = ("dataset_name", "train_file", "validation_file", "test_file")
        if data.uses_builtin_task:
            raw = builtin_translation_task(data.builtin_num_train, data.builtin_num_valid, data.builtin_num_test,
                                           seed=data.builtin_seed)
            src, tgt = BUILTIN_SOURCE_LANG, BUILTIN_TARGET_LANG
            info = {"dataset": "builtin", "dataset_name": "hf_rskip built-in task (generated, en→invented language)",
                    "dataset_config": f"seed={data.builtin_seed}"}
        elif data.recipe is not None:
            recipe = DATASET_RECIPES[data.recipe]
            overrides = {k: getattr(data, k) for k in (*files, "dataset_config_name") if getattr(data, k)}
            if data.source_lang:
                overrides.update(source_lang=data.source_lang, target_lang=data.target_lang)
            raw = load_recipe(data.recipe, cache_dir=data.cache_dir, **overrides)
            src = overrides.get("source_lang", recipe["source_lang"])
            tgt = overrides.get("target_lang", recipe["target_lang"])
            info = {"dataset": recipe.get("dataset_name") or data.recipe, "dataset_name": data.recipe,
                    "dataset_config": recipe.get("dataset_config_name")}
        else:
            raw = load_translation_datasets(
                source_lang=data.source_lang, target_lang=data.target_lang, dataset_name=data.dataset_name,
                dataset_config_name=data.dataset_config_name, train_file=data.train_file,
                validation_file=data.validation_file, test_file=data.test_file, cache_dir=data.cache_dir,
            )
            src, tgt = data.source_lang, data.target_lang
            name = data.dataset_name or _corpus_name(data.train_file or data.test_file or data.validation_file)
            info = {"dataset": data.dataset_name or "local files", "dataset_name": name,
                    "dataset_config": data.dataset_config_name}
        for split, limit in (("train", data.max_train_samples), ("validation", data.max_eval_samples),
                             ("test", data.max_predict_samples)):
            if limit is not None and split in raw and len(raw[split]) > limit:
                raw[split] = raw[split].select(range(limit))
        return raw, src, tgt, info

    # -- tokenizer and model --------------------------------------------------------------------------

    def _tokenizer(self) -> tuple[Any, str]:
        """The tokenizer: from a resumed checkpoint, ``--tokenizer_name``, the model's own, or a new BPE."""
        from transformers import AutoTokenizer

        from ..data.translation import train_tokenizer

        trust = self.model_args.trust_remote_code
        sources = [(None, self.resume)] if self.resume is not None else []
        sources += [("tokenizer_name", self.model_args.tokenizer_name),
                    ("model_name_or_path", self.model_args.model_name_or_path)]
        for option, source in sources:
            if source is None:
                continue
            if option == "model_name_or_path" and Path(source).is_dir() and not any(
                    (Path(source) / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
                continue  # a model folder without a tokenizer: train one below
            try:
                return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust), f"loaded from {source}"
            except (OSError, ValueError) as err:
                raise ArgumentError(f"--{option or 'resume_from_checkpoint'} {str(source)!r}: no tokenizer could be "
                                    f"loaded: {pretrained_load_problem(source, err)}") from None
        if not self.do_train:
            raise ArgumentError("--tokenizer_name: there is no training data to train a tokenizer on")
        texts = (pair[lang] for pair in self.raw["train"]["translation"] for lang in (self.src, self.tgt))
        tokenizer = train_tokenizer(texts, self.data_args.vocab_size)
        # every process trains the same BPE from the same data; no file passes between them
        return tokenizer, f"BPE trained on the training data (tokenizers library), {len(tokenizer)} tokens"

    def build_model(self) -> nn.Module:
        from ..data.translation import tokenize_pairs

        self._pretrained_config()  # a broken config.json is reported as such, not as a tokenizer problem
        self.tokenizer, self.tokenizer_description = self._tokenizer()
        model = self._model()
        self._set_generation_config(model)
        if self.do_train:
            data = self.data_args
            with self.accelerator.main_process_first():
                self.train_set, truncated = tokenize_pairs(self._prefixed("train"), self.tokenizer, self.src, self.tgt,
                                                           data.max_source_length, data.max_target_length)
                self.valid_set, _ = tokenize_pairs(self._prefixed("validation"), self.tokenizer, self.src, self.tgt,
                                                   data.max_source_length, data.max_target_length)
            self.counts["train_truncated"] = truncated["truncated"]
        return model

    def _prefixed(self, split: str) -> Any:
        """A split with ``--source_prefix`` put before every source sentence."""
        prefix = self.data_args.source_prefix
        if not prefix:
            return self.raw[split]
        src = self.src

        def add(batch: dict[str, list]) -> dict[str, list]:
            return {"translation": [{**pair, src: prefix + pair[src]} for pair in batch["translation"]]}

        return self.raw[split].map(add, batched=True, desc="source prefix")

    def _pretrained_config(self) -> Any:
        """The config of ``--model_name_or_path`` (None without one).

        Raises:
            ArgumentError: naming the option and what is wrong with the folder's ``config.json``.
        """
        from transformers import AutoConfig

        path, trust = self.model_args.model_name_or_path, self.model_args.trust_remote_code
        if path is None:
            return None
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            raise ArgumentError(f"--model_name_or_path {path!r}: {_config_problem(err)}") from None

    def _model(self) -> nn.Module:
        """A saved rSkip model of either family, a Marian or T5 model converted to the scheme asked for
        (:func:`hf_rskip.convert_to_rskip`), or a fresh model from a family's preset or a config, and the options."""
        from transformers import AutoConfig

        from ..data.translation import special_token_ids
        from ..models import RSkipForConditionalGeneration, RSkipT5ForConditionalGeneration, convert_to_rskip

        margs = self.model_args
        scheme = margs.scheme_overrides()
        if margs.model_name_or_path is not None:
            path = margs.model_name_or_path
            kind = self._pretrained_config().model_type
            family = "rskip_t5" if kind in ("t5", "rskip_t5") else "rskip"
            dropout = margs.dropout_overrides(family)
            try:
                if kind in ("marian", "t5"):
                    model = convert_to_rskip(path, **scheme, **dropout)
                elif kind in ("rskip", "rskip_t5"):
                    cls = RSkipForConditionalGeneration if kind == "rskip" else RSkipT5ForConditionalGeneration
                    model = cls.from_pretrained(path, **dropout)
                else:
                    raise ArgumentError(f"--model_name_or_path {path!r} holds a {kind!r} model; accepted: an rSkip "
                                        "model of either family, or a Marian or T5 model (converted to rSkip)")
            except (OSError, ValueError, SafetensorError) as err:
                if isinstance(err, ArgumentError):
                    raise
                raise ArgumentError(f"--model_name_or_path {path!r}: {pretrained_load_problem(path, err)}") from None
            changed = {k: v for k, v in scheme.items() if kind.startswith("rskip") and getattr(model.config, k) != v}
            if changed:
                raise ArgumentError(
                    f"--{next(iter(changed))} {next(iter(changed.values()))!r}: {path} was trained with "
                    f"{model.config.residual_scheme} λ={model.config.skip_lambda}; a saved rSkip model keeps its "
                    "scheme (hf_rskip.convert_to_rskip makes a copy with another one)")
            if model.config.vocab_size < len(self.tokenizer):
                raise ArgumentError(f"--tokenizer_name: the tokenizer has {len(self.tokenizer)} tokens but the "
                                    f"model's vocabulary has {model.config.vocab_size}")
            return model
        fields = dict(special_token_ids(self.tokenizer))
        if margs.model_type == "rskip":  # Marian-style: learned-free sinusoidal positions, scaled embeddings
            fields.update(scale_embedding=True, max_position_embeddings=max(512, self.data_args.max_source_length,
                                                                            self.data_args.max_target_length))
        model_class = RSkipForConditionalGeneration if margs.model_type == "rskip" else RSkipT5ForConditionalGeneration
        if margs.config_name is None:
            return model_class(margs.fresh_config(**fields))
        try:
            base = AutoConfig.from_pretrained(margs.config_name, trust_remote_code=margs.trust_remote_code)
        except (OSError, ValueError) as err:
            raise ArgumentError(f"--config_name {margs.config_name!r}: {_config_problem(err)}") from None
        config_class = margs.config_class()
        known = config_class().to_dict()
        values = {k: v for k, v in base.to_dict().items() if k in known and k not in ("model_type", "architectures")}
        # a saved rSkip config keeps its scheme (a Marian or T5 config has none: the config class's default); a
        # scheme given here replaces it, and then the saved λ (made for the other scheme) gives way to the default
        if margs.residual_scheme not in (None, values.get("residual_scheme", known["residual_scheme"])):
            values.pop("skip_lambda", None)
            values.pop("learn_skip_lambda", None)
        try:
            config = config_class(**{**values, **margs.size_overrides(), **fields})
        except ValueError as err:
            raise ArgumentError(f"--config_name {margs.config_name!r}: {err}") from None
        return model_class(config)

    def _set_generation_config(self, model: nn.Module) -> None:
        """What ``generate`` and the pipeline use by default for this model: the run's decoding settings."""
        args, gen = self.args, model.generation_config
        gen.num_beams = args.num_beams
        gen.length_penalty = args.length_penalty
        gen.early_stopping = args.num_beams > 1
        gen.pad_token_id = model.config.pad_token_id
        gen.eos_token_id = model.config.eos_token_id
        gen.decoder_start_token_id = model.config.decoder_start_token_id
        gen.forced_eos_token_id = model.config.eos_token_id
        # the decoder starts from <pad> (Marian's convention); it must never emit it afterwards
        gen.bad_words_ids = [[model.config.pad_token_id]]
        # a bound that leaves `max_length` unset, so a caller's `max_new_tokens` never clashes with it
        gen.max_new_tokens = self.data_args.max_target_length

    def describe(self, model: nn.Module) -> str:
        config = model.config
        return (f"{config.model_type} {config.residual_scheme} λ={config.skip_lambda}: {model.num_parameters():,} "
                f"parameters; "
                f"{self.counts.get('train_pairs', 0)} training pairs ({self.counts.get('train_dropped_empty', 0)} "
                f"empty dropped, {self.counts.get('train_truncated', 0)} truncated)")

    def frozen_options(self) -> dict[str, Any]:
        data = self.data_args
        return {"vocab_size": data.vocab_size, "tokenizer_name": self.model_args.tokenizer_name,
                "source_prefix": data.source_prefix, "source_lang": self.src, "target_lang": self.tgt,
                "optim": self.args.optim}

    def save_artifacts(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)

    # -- training -------------------------------------------------------------------------------------

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        from .optim import build_optimizer

        args = self.args
        return build_optimizer(model, optimizer=args.optim, learning_rate=args.learning_rate,
                               weight_decay=args.weight_decay, adam_beta1=args.adam_beta1,
                               adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon)

    def _collator(self, model: nn.Module) -> Any:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, model=model, label_pad_token_id=-100,
                                      pad_to_multiple_of=8 if self.accelerator.mixed_precision != "no" else None)

    def train_dataloader(self, model: nn.Module) -> Any:
        from torch.utils.data import DataLoader, RandomSampler

        from ..data.errors import DataError
        from ..data.samplers import TokenBatchSampler
        from ..data.translation import token_lengths

        if not self.do_train:
            raise ArgumentError("--train_file: evaluation-only runs do not train")
        args = self.args
        collator = self._collator(model)
        # Its own generator: a new iterator (each epoch, or on resume) then takes no draw from the global RNG.
        generator = torch.Generator().manual_seed(args.seed)
        if args.per_device_train_batch_size is not None:
            return DataLoader(self.train_set, batch_size=args.per_device_train_batch_size, collate_fn=collator,
                              sampler=RandomSampler(self.train_set, generator=generator), generator=generator)
        sampler = TokenBatchSampler(token_lengths(self.train_set), args.max_tokens, shuffle=True, seed=args.seed)
        if sampler.num_oversized:
            longest = max(token_lengths(self.train_set))
            raise DataError(f"--max_tokens {args.max_tokens}: {sampler.num_oversized} training pairs are longer than a "
                            f"whole batch (up to {longest} tokens), so each would be a batch of its own; raise "
                            f"--max_tokens to at least {longest} or lower --max_source_length / --max_target_length")
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collator, generator=generator)

    def build_task(self, model: nn.Module) -> Any:
        from torch.utils.data import DataLoader

        from ..data.samplers import TokenBatchSampler
        from ..data.translation import token_lengths
        from .tasks import TranslationTask

        args = self.args
        if args.per_device_train_batch_size is not None:
            valid = DataLoader(self.valid_set, batch_size=args.per_device_eval_batch_size,
                               collate_fn=self._collator(model))
        else:
            sampler = TokenBatchSampler(token_lengths(self.valid_set), max(args.max_tokens, max(
                token_lengths(self.valid_set), default=1)), shuffle=False)
            valid = DataLoader(self.valid_set, batch_sampler=sampler, collate_fn=self._collator(model))
        valid = self.accelerator.prepare(valid)
        return TranslationTask(args.label_smoothing, eval_dataloader=valid, accelerator=self.accelerator,
                               generate_eval=lambda m: self.evaluate_split(m, "validation", "eval"))

    def after_training(self, model: nn.Module, result: LoopResult) -> dict[str, Any]:
        from .checkpointing import average_checkpoints, list_checkpoints, load_weights_into

        n = self.args.average_checkpoints
        if n <= 1:
            return {}
        paths = list_checkpoints(self.args.checkpoint_dir)[-n:]
        load_weights_into(self.accelerator.unwrap_model(model, keep_torch_compile=False), average_checkpoints(paths))
        self.log(f"averaged {len(paths)} checkpoints: {', '.join(p.name for p in paths)}")
        return {"averaged_checkpoints": [p.name for p in paths]}

    # -- evaluation and card --------------------------------------------------------------------------

    def evaluate_split(self, model: nn.Module, split: str, prefix: str,
                       predictions_file: Path | None = None) -> dict[str, Any]:
        from ..evaluation import evaluate_translation

        args, data = self.args, self.data_args
        pairs = self.raw[split]["translation"]
        sources = [(data.source_prefix or "") + p[self.src] for p in pairs]
        metrics = evaluate_translation(
            model, self.tokenizer, sources, [p[self.tgt] for p in pairs], prefix=prefix,
            bleu_tokenize=args.bleu_tokenize, predictions_file=predictions_file, accelerator=self.accelerator,
            num_beams=args.num_beams, length_penalty=args.length_penalty, max_source_length=data.max_source_length,
            batch_size=args.per_device_eval_batch_size, max_length_a=args.max_length_a,
            max_length_b=args.max_length_b,
        )
        metrics[f"{prefix}_split_name"] = self._split_name(split)
        return metrics

    def _split_name(self, split: str) -> str:
        option = {"validation": "validation_file", "test": "test_file"}[split]
        value = getattr(self.data_args, option)
        if value:
            return Path(value).name
        return split

    def final_evaluation(self, model: nn.Module, folder: Path) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for split, prefix in (("validation", "eval"), ("test", "test")):
            if split in self.raw:
                results.update(self.evaluate_split(model, split, prefix, folder / f"{prefix}_predictions.txt"))
        results.update(source_lang=self.src, target_lang=self.tgt, num_beams=self.args.num_beams,
                       length_penalty=self.args.length_penalty, bleu_tokenize=self.args.bleu_tokenize,
                       tokenizer=self.tokenizer_description, **self.data_info, **self.counts)
        summary = ", ".join(f"{k}={results[k]:.2f}" for k in ("eval_bleu", "eval_chrf", "test_bleu", "test_chrf")
                            if k in results)
        self.log(f"{summary}\n{results.get('test_bleu_signature', results.get('eval_bleu_signature', ''))}")
        return results

    def write_model_card(self, folder: Path, results: dict[str, Any]) -> None:
        from ..modelcard import translation_card

        translation_card(folder, results, job=self)

    def will_train(self) -> bool:
        return self.do_train


def _recipe_has_train(recipe: str) -> bool:
    from ..data.recipes import DATASET_RECIPES

    entry = DATASET_RECIPES.get(recipe, {})
    return bool(entry.get("dataset_name") or entry.get("train_file"))


def _corpus_name(path: str) -> str:
    """A readable name for local files: ``data/multi30k/train`` → ``multi30k``, ``x/news.jsonl`` → ``news``."""
    p = Path(path)
    stem = p.name.split(".")[0]
    if stem in ("train", "valid", "validation", "val", "dev", "test") and p.parent.name:
        return p.parent.name
    return stem


def _config_problem(err: Exception) -> str:
    """What went wrong reading a model's ``config.json``, in one sentence."""
    if "trust_remote_code" in str(err):
        return pretrained_load_problem("", err)
    return f"no usable model config: {pretrained_load_problem('', err)}"


def run_translation(argv: list[str] | None = None, *, command: str = "") -> dict[str, Any]:
    """Parses the options and runs the job (what ``scripts/run_translation.py`` does)."""
    model_args, data_args, training_args = parse_translation_args(argv)
    return TranslationJob(model_args, data_args, training_args, command=command).run()


__all__ = [
    "BUILTIN_DEFAULTS", "BUILTIN_T5_DEFAULTS", "TranslationJob", "option_defaults", "parse_translation_args",
    "run_translation",
]
