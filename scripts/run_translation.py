#!/usr/bin/env python
"""Train an rSkip Transformer for translation and report sacreBLEU / chrF (modelled on transformers'
``run_translation_no_trainer.py``; the same argument names where they exist).

    # the built-in task (no download; about 3 minutes on 2 CPU cores)
    python scripts/run_translation.py --output_dir runs/builtin

    # local parallel files (prefix P → P.en / P.de[.gz]; or .json/.jsonl lines {"translation": {...}})
    python scripts/run_translation.py --train_file data/train --validation_file data/val \
        --test_file data/test --source_lang en --target_lang de --output_dir runs/ende

    # a named dataset recipe with its paper-style hyperparameters (Hub or staged files)
    python scripts/run_translation.py --recipe wmt14_en_de --output_dir runs/wmt14

    # several processes / GPUs: accelerate launch [--num_processes N] scripts/run_translation.py ...

A recipe (and the built-in task, when no data arguments are given) changes the defaults shown below;
options given on the command line always win. All the work is done by ``hf_rskip.training.run_translation``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Running from a source checkout without installing: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402

from hf_rskip.data import DATASET_RECIPES, DataError  # noqa: E402
from hf_rskip.evaluation import BLEU_TOKENIZERS  # noqa: E402
from hf_rskip.residual import RESIDUAL_SCHEMES, TEXT_NORMS  # noqa: E402
from hf_rskip.checkpointing import CheckpointError  # noqa: E402
from hf_rskip.training import LR_SCHEDULERS, TranslationArgumentError, recipe_defaults, run_translation  # noqa: E402

DATA_OPTIONS = ("recipe", "dataset_name", "train_file", "validation_file", "test_file")


def steps_or_epoch(value: str) -> int | str | None:
    """``N`` (every N optimizer steps), ``epoch``, or ``none``."""
    if value == "none":
        return None
    if value == "epoch":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer, 'epoch' or 'none'") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default (after a recipe has changed them) and keeps the examples' layout."""


def build_parser() -> argparse.ArgumentParser:
    """The command-line options, every default visible here."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--recipe", choices=sorted(DATASET_RECIPES), default=None,
                   help="a named dataset with its hyperparameters as defaults (see hf_rskip.data.DATASET_RECIPES)")
    g.add_argument("--dataset_name", default=None, help="a Hub dataset, e.g. wmt/wmt14")
    g.add_argument("--dataset_config_name", default=None, help="its configuration, e.g. de-en")
    g.add_argument("--train_file", default=None, help="P.json/P.jsonl, or a prefix P of P.<lang>[.gz]")
    g.add_argument("--validation_file", default=None, help="as --train_file (default: 5%% of train, at most 500)")
    g.add_argument("--test_file", default=None, help="as --train_file")
    g.add_argument("--source_lang", default=None, help="source language code, e.g. en")
    g.add_argument("--target_lang", default=None, help="target language code, e.g. de")
    g.add_argument("--max_source_length", type=int, default=128, help="longer sources are truncated (and counted)")
    g.add_argument("--max_target_length", type=int, default=128, help="longer targets are truncated (and counted)")
    g.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training pairs")
    g.add_argument("--max_eval_samples", type=int, default=None, help="use only the first N validation pairs")
    g.add_argument("--max_predict_samples", type=int, default=None, help="use only the first N test pairs")
    g.add_argument("--cache_dir", default=None, help="where datasets caches Hub downloads")
    g.add_argument("--builtin_num_train", type=int, default=20000, help="built-in task: training pairs")
    g.add_argument("--builtin_num_valid", type=int, default=500, help="built-in task: validation pairs")
    g.add_argument("--builtin_num_test", type=int, default=500, help="built-in task: test pairs")
    g.add_argument("--builtin_seed", type=int, default=0, help="built-in task: the seed that defines its sentences")

    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer_name", default=None, help="a folder with a saved tokenizer (default: train one)")
    g.add_argument("--vocab_size", type=int, default=8000, help="size of the BPE vocabulary trained on the data")

    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default=None,
                   help="a saved RSkip model folder, or a Marian folder (converted with from_marian)")
    g.add_argument("--preset", default="small", help="size preset for a fresh model: tiny, small, iwslt, base, big")
    g.add_argument("--residual_scheme", choices=RESIDUAL_SCHEMES, default=None,
                   help="default: rskip_ln for a fresh model, post_ln for a Marian model, the saved one otherwise")
    g.add_argument("--skip_lambda", type=float, default=None, help="λ (default 2 for a fresh rskip_ln model)")
    g.add_argument("--residual_norm", choices=TEXT_NORMS, default=None, help="the norm (default: layer)")
    for name in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                 "encoder_ffn_dim", "decoder_ffn_dim"):
        g.add_argument(f"--{name}", type=int, default=None, help="overrides the preset's value")
    g.add_argument("--dropout", type=float, default=None, help="default: the preset's (0.1 unless it says)")
    g.add_argument("--attention_dropout", type=float, default=None, help="default: 0.0")
    g.add_argument("--activation_dropout", type=float, default=None, help="default: 0.0")

    g = p.add_argument_group("training")
    g.add_argument("--max_tokens", type=int, default=4096, help="tokens per batch per process (padding included)")
    g.add_argument("--learning_rate", type=float, default=5e-4, help="peak learning rate")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay, matrices only")
    g.add_argument("--adam_beta1", type=float, default=0.9, help="Adam β1")
    g.add_argument("--adam_beta2", type=float, default=0.98, help="Adam β2")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="Adam ε")
    g.add_argument("--lr_scheduler_type", choices=LR_SCHEDULERS, default="inverse_sqrt", help="learning-rate schedule")
    g.add_argument("--num_warmup_steps", type=int, default=4000, help="linear warm-up, optimizer steps")
    g.add_argument("--label_smoothing", type=float, default=0.1, help="ε of label-smoothed cross-entropy")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: none)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="Accelerate mixed precision")
    g.add_argument("--seed", type=int, default=42, help="seed of initialization, dropout and batch order")
    g.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    g.add_argument("--num_train_epochs", type=int, default=10, help="passes over the data (if no --max_train_steps)")
    g.add_argument("--logging_steps", type=int, default=50, help="log loss, lr and tokens/s every N steps")
    g.add_argument("--with_tracking", action="store_true", help="log to TensorBoard in <output_dir>/runs")
    g.add_argument("--report_to", default="tensorboard", help="the Accelerate tracker for --with_tracking")
    g.add_argument("--log_grad_norms_every", type=int, default=None, metavar="N",
                   help="with --with_tracking: log every layer's gradient norm every N steps (the paper's analysis)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--num_beams", type=int, default=4, help="beam size for validation and test")
    g.add_argument("--length_penalty", type=float, default=1.0, help="beam-search length penalty")
    g.add_argument("--bleu_tokenize", choices=BLEU_TOKENIZERS, default="13a",
                   help="13a for detokenized text; none for pre-tokenized text (tokenized BLEU, e.g. IWSLT'15)")
    g.add_argument("--eval_steps", type=steps_or_epoch, default="epoch",
                   help="validation BLEU every N steps, 'epoch' or 'none'")
    g.add_argument("--eval_batch_size", type=int, default=64, help="sentences per generation batch")
    g.add_argument("--max_length_a", type=float, default=1.5,
                   help="at most a * (longest source) + b new tokens (fairseq's --max-len-a)")
    g.add_argument("--max_length_b", type=int, default=10, help="see --max_length_a (fairseq's --max-len-b)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpointing_steps", type=steps_or_epoch, default=None,
                   help="save every N steps, 'epoch' or 'none'")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--keep_last_checkpoints", type=int, default=None, help="delete older checkpoints")
    g.add_argument("--average_checkpoints", type=int, default=1, help="average the last N checkpoints at the end")

    g = p.add_argument_group("output")
    g.add_argument("--output_dir", required=True, help="model, tokenizer, results.json, predictions, model card")
    g.add_argument("--overwrite_output_dir", action="store_true", help="start over even if checkpoints exist")
    g.add_argument("--license", default=None, help="license for the model card, e.g. apache-2.0")
    g.add_argument("--push_to_hub", action="store_true", help="upload output_dir (without checkpoints/ and runs/)")
    g.add_argument("--hub_model_id", default=None, help="user/name of the Hub repository")
    g.add_argument("--hub_token", default=None, help="Hub token (default: the stored login)")
    g.add_argument("--hub_private_repo", action="store_true", help="create the Hub repository private")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses twice: a recipe (or the built-in task) first sets defaults, then the command line wins."""
    pre = argparse.ArgumentParser(add_help=False)  # no --help here, so --help shows the final defaults
    for name in DATA_OPTIONS:
        pre.add_argument(f"--{name}", default=None)
    first, _ = pre.parse_known_args(argv)
    parser = build_parser()
    no_data = not any(getattr(first, name) for name in DATA_OPTIONS)
    recipe = first.recipe if first.recipe is not None else ("builtin" if no_data else None)
    if recipe is not None:
        parser.set_defaults(**recipe_defaults(recipe))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets.disable_progress_bars()  # one bar per map() call is noise; training has its own bar
    command = "python scripts/run_translation.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run_translation(args, command=command)
    except (DataError, TranslationArgumentError, CheckpointError, FileNotFoundError) as err:
        # Bad input: one clear line and a non-zero exit, before any training happened.
        print(f"run_translation.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
