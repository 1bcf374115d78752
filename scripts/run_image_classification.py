#!/usr/bin/env python
"""Train an rSkip PreAct-ResNet for image classification and report accuracy.

Modelled on transformers' ``run_image_classification_no_trainer.py`` (the same option names where they exist).
``--help`` lists every option with its default; options may also be given as one JSON or YAML file.

    python scripts/run_image_classification.py --output_dir runs/digits   # scikit-learn's digits: no download
    python scripts/run_image_classification.py --train_file train.npz --validation_file test.npz \
        --validation_image_key x --validation_label_key y --output_dir runs/cifar
    python scripts/run_image_classification.py --train_dir data/train --validation_dir data/val --output_dir runs/f
    python scripts/run_image_classification.py --dataset_name uoft-cs/cifar10 --image_column_name img \
        --depth 110 --num_train_epochs 164 --lr_scheduler_type multistep --output_dir runs/c10

All the work is done by ``hf_rskip.training.image_classification.ImageClassificationJob``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from hf_rskip.training.cli import main  # noqa: E402
from hf_rskip.training.image_classification import run_image_classification  # noqa: E402

if __name__ == "__main__":
    main(run_image_classification, "run_image_classification.py")
