#!/usr/bin/env python
"""Train an rSkip PreAct-ResNet for image classification and report accuracy (modelled on transformers'
``run_image_classification_no_trainer.py``; the same argument names where they exist).

    # no data arguments: scikit-learn's bundled digits (real images, no download; about a minute on 2 CPU cores)
    python scripts/run_image_classification.py --output_dir runs/digits

    # .npz arrays (uint8 images (N, H, W, 3) and integer labels (N,) under the named keys)
    python scripts/run_image_classification.py --train_file train.npz --validation_file test.npz \
        --train_image_key x_train --train_label_key y_train --validation_image_key x --validation_label_key y \
        --output_dir runs/cifar

    # image folders (<dir>/<class name>/<image>), or a Hub dataset
    python scripts/run_image_classification.py --train_dir data/train --validation_dir data/val --output_dir runs/f
    python scripts/run_image_classification.py --dataset_name uoft-cs/cifar10 --image_column_name img \
        --depth 110 --num_train_epochs 164 --lr_scheduler_type he --output_dir runs/c10

    # several processes / GPUs: accelerate launch [--num_processes N] scripts/run_image_classification.py ...

Every default is shown below; the built-in digits task (no data arguments) changes two of them:
--image_size 16 --random_crop_padding 2 (``BUILTIN_IMAGE_HPARAMS``); options given on the command line win.
All the work is done by ``hf_rskip.vision_training.run_image_classification``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

# Running from a source checkout without installing: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_rskip.checkpointing import CheckpointError  # noqa: E402
from hf_rskip.residual import IMAGE_NORMS, RESIDUAL_SCHEMES  # noqa: E402
from hf_rskip.vision_data import CIFAR10_MEAN, CIFAR10_STD, ImageDataError  # noqa: E402
from hf_rskip.vision_training import (  # noqa: E402
    BUILTIN_IMAGE_HPARAMS,
    DATA_OPTIONS,
    LR_SCHEDULES,
    ImageArgumentError,
    run_image_classification,
)


def steps_or_epoch(value: str) -> int | str | None:
    """``N`` (every N optimizer steps), ``epoch``, or ``no``."""
    if value in ("epoch", "no"):
        return None if value == "no" else value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an integer, 'epoch' nor 'no'") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line options, every default visible here."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (one source; none: scikit-learn's digits)")
    g.add_argument("--dataset_name", default=None,
                   help="a Hub dataset (or a local dataset folder), e.g. uoft-cs/cifar10")
    g.add_argument("--dataset_config_name", default=None, help="its configuration, if any")
    g.add_argument("--image_column_name", default="image", help="Hub dataset: the image column (CIFAR-10: img)")
    g.add_argument("--label_column_name", default="label", help="Hub dataset: the label column")
    g.add_argument("--train_dir", default=None, help="a folder of class sub-folders of images")
    g.add_argument("--validation_dir", default=None, help="the same for evaluation (default: split off train)")
    g.add_argument("--train_file", default=None, help="a .npz file with training images and labels")
    g.add_argument("--validation_file", default=None, help="a .npz file for evaluation (default: split off train)")
    g.add_argument("--train_image_key", default="x_train", help="key of the images in --train_file")
    g.add_argument("--train_label_key", default="y_train", help="key of the labels in --train_file")
    g.add_argument("--validation_image_key", default="x_test", help="key of the images in --validation_file")
    g.add_argument("--validation_label_key", default="y_test", help="key of the labels in --validation_file")
    g.add_argument("--label_names", default=None, help="comma-separated class names, index order (default: the "
                                                         "data's, or 0..K-1)")
    g.add_argument("--train_val_split", type=float, default=0.15,
                   help="fraction of train held out when there is no evaluation split (stratified, fixed)")
    g.add_argument("--image_size", type=int, default=32, help="images are resized (bilinear) to this size squared")
    g.add_argument("--max_train_samples", type=int, default=None, help="use a random N of the training images")
    g.add_argument("--max_eval_samples", type=int, default=None, help="use a random N of the evaluation images")
    g.add_argument("--cache_dir", default=None, help="where datasets caches Hub downloads")

    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default=None, help="start from a saved model folder instead")
    g.add_argument("--ignore_mismatched_sizes", action="store_true", help="with --model_name_or_path: new head")
    g.add_argument("--trust_remote_code", action="store_true", help="with --model_name_or_path")
    g.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110 (the paper's), 164")
    g.add_argument("--hidden_sizes", type=int, nargs="+", default=[16, 32, 64], help="stage widths")
    g.add_argument("--residual_scheme", choices=RESIDUAL_SCHEMES, default="rskip_ln",
                   help="xskip with --skip_lambda 1 is the plain PreAct-ResNet")
    g.add_argument("--skip_lambda", type=float, default=2, help="λ (an integer for rskip_ln)")
    g.add_argument("--residual_norm", choices=IMAGE_NORMS, default="layer",
                   help="the scheme's norm: layer = over (C, H, W) per sample, batch = BatchNorm")
    g.add_argument("--block_norm", choices=IMAGE_NORMS, default="batch", help="the pre-activation norms")
    g.add_argument("--learn_skip_lambda", action="store_true", help="train λ (xskip, xskip_ln)")
    g.add_argument("--zero_init_last", action="store_true", help="zero each branch's last conv at init")

    g = p.add_argument_group("training")
    g.add_argument("--per_device_train_batch_size", type=int, default=128)
    g.add_argument("--per_device_eval_batch_size", type=int, default=256)
    g.add_argument("--learning_rate", type=float, default=0.1, help="peak learning rate (He et al.: 0.1)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="on conv and linear weights only")
    g.add_argument("--lr_scheduler_type", choices=LR_SCHEDULES, default="cosine",
                   help="he: ÷10 at 50%% and 75%% of training (He et al.); cosine; constant")
    g.add_argument("--num_warmup_steps", type=int, default=0, help="linear warm-up, optimizer steps")
    g.add_argument("--max_grad_norm", type=float, default=0.0, help="gradient clipping (0: none)")
    g.add_argument("--random_crop_padding", type=int, default=4, help="zero padding of the random crop (0: none)")
    g.add_argument("--no_horizontal_flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--image_mean", type=float, nargs=3, default=list(CIFAR10_MEAN), help="R G B, [0, 1] scale")
    g.add_argument("--image_std", type=float, nargs=3, default=list(CIFAR10_STD), help="R G B")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--num_train_epochs", type=int, default=15)
    g.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps (overrides epochs)")
    g.add_argument("--logging_steps", type=int, default=20)
    g.add_argument("--with_tracking", action="store_true", help="log to TensorBoard in <output_dir>/runs")
    g.add_argument("--report_to", default="tensorboard", help="the Accelerate tracker for --with_tracking")
    g.add_argument("--log_grad_norms_every", type=int, default=None, metavar="N",
                   help="with --with_tracking: log every layer's gradient norm every N steps (the paper's analysis)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_steps", type=steps_or_epoch, default="epoch",
                   help="evaluate every N steps, 'epoch', or 'no' (the final model is always evaluated)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpointing_steps", type=steps_or_epoch, default=None, help="save every N steps or 'epoch'")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--keep_last_checkpoints", type=int, default=None, help="delete older checkpoints")

    g = p.add_argument_group("output")
    g.add_argument("--output_dir", required=True, help="model, image processor, results.json, model card")
    g.add_argument("--overwrite_output_dir", action="store_true", help="start over even if checkpoints exist")
    g.add_argument("--license", default=None, help="license for the model card, e.g. apache-2.0")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None, help="user/name of the Hub repository")
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private_repo", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses twice: without data options the built-in task's defaults apply first, then the command line wins."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if not any(getattr(first, name) for name in DATA_OPTIONS):
        parser.set_defaults(**BUILTIN_IMAGE_HPARAMS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = "python scripts/run_image_classification.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run_image_classification(args, command=command)
    except (ImageArgumentError, ImageDataError, CheckpointError, ValueError) as error:
        # Bad options or data: one clear line naming the option, file or image, not a traceback.
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
