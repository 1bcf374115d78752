"""Time-to-BLEU curves from a training run's checkpoints.

Every checkpoint records the training time spent to reach it (``train_seconds`` in its loop state), so a run's
quality over wall time is read after training, off the clock: each checkpoint's weights translate the test set
and sacreBLEU scores them. Used for the Multi30k recipe's curves (``scripts/reproduce.py --part recipe``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _state(checkpoint: Path) -> dict[str, Any]:
    for name in ("loop_state.json", "trainer_state.json"):  # the second: checkpoints of hf_rskip 0.1
        if (checkpoint / name).is_file():
            return json.loads((checkpoint / name).read_text(encoding="utf-8"))
    return {}


def checkpoint_curve(
    run_dir: str | Path,
    sources: Sequence[str],
    references: Sequence[str],
    *,
    num_beams: int = 1,
    batch_size: int = 64,
    bleu_tokenize: str = "13a",
    max_length_a: float = 1.5,
    max_length_b: int = 10,
) -> list[dict[str, Any]]:
    """BLEU of every checkpoint of a finished translation run, against the training time that reached it.

    Args:
        run_dir: a ``run_translation.py`` output folder (its model config and tokenizer, and ``checkpoints/``).
        sources, references: the test set.
        num_beams: decoding of the curve's points (greedy by default: the curve is about the trend).
        batch_size: sentences per generation batch.
        bleu_tokenize: sacreBLEU's tokenizer.
        max_length_a, max_length_b: the generation bound (see :func:`hf_rskip.evaluation.generate_translations`).

    Returns:
        One record per checkpoint, in step order: ``step``, ``train_seconds``, ``bleu``, ``chrf``.
    """
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hf_rskip.evaluation import generate_translations, score_translations
    from hf_rskip.training.checkpointing import checkpoint_folders, load_weights_into, read_weights_file

    run_dir = Path(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir).eval()
    curve = []
    for checkpoint in checkpoint_folders(run_dir / "checkpoints"):
        weights = read_weights_file(checkpoint / "model.safetensors")
        load_weights_into(model, weights)
        model.tie_weights()
        with torch.no_grad():
            hypotheses = generate_translations(model, tokenizer, list(sources), num_beams=num_beams,
                                               batch_size=batch_size, max_length_a=max_length_a,
                                               max_length_b=max_length_b)
        scores = score_translations(hypotheses, list(references), bleu_tokenize=bleu_tokenize)
        state = _state(checkpoint)
        curve.append({"step": int(state.get("step", state.get("completed_steps", 0))),
                      "train_seconds": float(state.get("train_seconds", math.nan)),
                      "bleu": scores["bleu"], "chrf": scores["chrf"]})
    return curve


__all__ = ["checkpoint_curve"]
