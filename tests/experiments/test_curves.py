"""Time-to-BLEU curves read a finished run's checkpoints, off the clock."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.state import AcceleratorState, GradientState

from experiments.curves import checkpoint_curve, plot_curves
from hf_rskip.training.cli import main
from hf_rskip.training.translation import run_translation


def test_every_checkpoint_gives_a_point_with_its_training_time(tmp_path: Path) -> None:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path / "run"
    main(run_translation, "run_translation.py", [
        "--output_dir", str(out), "--preset", "tiny", "--builtin_num_train", "200", "--builtin_num_valid", "8",
        "--builtin_num_test", "8", "--vocab_size", "200", "--max_tokens", "384", "--num_beams", "1",
        "--max_train_steps", "4", "--checkpointing_steps", "2", "--eval_steps", "no", "--threads", "1"])
    hypotheses = json.loads((out / "results.json").read_text())
    assert hypotheses["train_steps"] == 4
    sources, references = ["a b c", "d e"], ["x y z", "w v"]
    curve = checkpoint_curve(out, sources, references)
    assert [point["step"] for point in curve] == [2, 4]
    assert all(point["train_seconds"] > 0 and 0 <= point["bleu"] <= 100 for point in curve)
    assert curve[0]["train_seconds"] < curve[1]["train_seconds"]
    assert plot_curves({"tiny": curve}, tmp_path / "c.png").stat().st_size > 0
