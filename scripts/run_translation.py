#!/usr/bin/env python
"""Train an rSkip Transformer for translation and report sacreBLEU / chrF.

Modelled on transformers' ``run_translation_no_trainer.py`` (the same option names where they exist), on
Accelerate. ``--help`` lists every option with its default; options may also be given as one JSON or YAML file.

    python scripts/run_translation.py --output_dir runs/builtin          # the built-in task: no download
    python scripts/run_translation.py --recipe multi30k_rskip --output_dir runs/m30k   # a named recipe
    python scripts/run_translation.py --train_file data/train --validation_file data/val --test_file data/test \
        --source_lang en --target_lang de --output_dir runs/ende        # P.<lang> files, .json/.jsonl or .csv
    python scripts/run_translation.py args.json                         # the same options from a file
    accelerate launch [--multi_gpu --num_processes N] scripts/run_translation.py ...

All the work is done by ``hf_rskip.training.translation.TranslationJob``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from hf_rskip.training.cli import main  # noqa: E402
from hf_rskip.training.translation import run_translation  # noqa: E402

if __name__ == "__main__":
    main(run_translation, "run_translation.py")
