"""Time-to-BLEU curves from a training run's checkpoints.

Every checkpoint records the training time spent to reach it (``train_seconds`` in its loop state), so a run's
quality over wall time is read after training, off the clock: each checkpoint's weights translate the test set
and sacreBLEU scores them. Used for the Multi30k recipe's curves:

    python -m experiments.curves RUN_DIR [RUN_DIR ...] --labels "Post-LN" "rSkip+LN λ=2" \
        --recipe local_multi30k_en_de --output results/recipe/curves

writes ``curves.json`` (every checkpoint's step, training seconds, BLEU and chrF, per run) and ``time_to_bleu.png``
(BLEU against training minutes and against steps, one line per run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *, title: str = "") -> Path:
    """BLEU against training minutes and against steps, one line per run (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, curve in curves.items():
        bleu = [c["bleu"] for c in curve]
        axes[0].plot([c["train_seconds"] / 60 for c in curve], bleu, marker="o", label=label)
        axes[1].plot([c["step"] for c in curve], bleu, marker="o", label=label)
    axes[0].set_xlabel("training time (minutes)")
    axes[1].set_xlabel("optimizer steps")
    axes[0].set_ylabel("test BLEU (greedy, each checkpoint)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from hf_rskip.data import clean_pairs, load_recipe
    from hf_rskip.data.recipes import DATASET_RECIPES

    parser = argparse.ArgumentParser(description="Time-to-BLEU curves from run_translation.py checkpoints.",
                                     allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, help="run_translation.py output folders")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    parser.add_argument("--recipe", default="local_multi30k_en_de", help="whose test split is translated")
    parser.add_argument("--num_beams", type=int, default=1, help="decoding of each point (default: greedy)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True, help="folder for curves.json and time_to_bleu.png")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
    torch.set_num_threads(args.threads)
    recipe = DATASET_RECIPES[args.recipe]
    src, tgt = recipe["source_lang"], recipe["target_lang"]
    test, _ = clean_pairs(load_recipe(args.recipe)["test"], src, tgt)
    sources = [pair[src] for pair in test["translation"]]
    references = [pair[tgt] for pair in test["translation"]]
    args.output.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict[str, Any]]] = {}
    for label, run in zip(labels, args.runs):
        curves[label] = checkpoint_curve(run, sources, references, num_beams=args.num_beams)
        print(label, [(c["step"], round(c["bleu"], 2)) for c in curves[label]], flush=True)
        (args.output / "curves.json").write_text(json.dumps(curves, indent=1), encoding="utf-8")
    plot_curves(curves, args.output / "time_to_bleu.png", title=f"{args.recipe}: time to BLEU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["checkpoint_curve", "main", "plot_curves"]
