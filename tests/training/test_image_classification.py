"""scripts/run_image_classification.py end to end on tiny budgets: digits, .npz (real CIFAR-10), image folders, a
Hub-style dataset; the saved folder works with the pipeline; bad input fails before training. What both scripts
share (exact resume, the output folder's rules, non-finite losses) is in test_job.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import load_file

from hf_rskip.training import image_classification
from hf_rskip.training.cli import main

#: A model and budget small enough for seconds on a CPU.
TINY = ["--depth", "8", "--hidden_sizes", "4", "8", "8", "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32", "--logging_steps", "1"]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each run builds its own Accelerator; the singletons must not carry settings over."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _one_thread():
    """These tiny models gain nothing from a second thread, and on a shared CPU an oversubscribed OpenMP pool
    makes them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*argv: str) -> dict:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return main(image_classification.run_image_classification, "run_image_classification.py", [*TINY, *argv])


def test_digits_without_data_arguments(tmp_path) -> None:
    from transformers import pipeline

    from hf_rskip.models import register_auto_classes

    out = tmp_path / "digits"
    results = run("--output_dir", str(out), "--image_size", "8", "--max_train_samples", "96",
                  "--max_train_steps", "4", "--eval_steps", "2", "--with_tracking", "--log_grad_norms_every", "2")
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_samples"] == 360
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(out / "runs")).Reload()  # the scalars; hparams go to a subfolder
    assert [e.step for e in logged.Scalars("grad_norm/stages.0.layers.0")] == [0, 2]
    assert "grad_norm_summary/blocks/first_over_last" in logged.Tags()["scalars"], logged.Tags()["scalars"]
    assert results["train_steps"] == 4 and results["train_images_per_second"] > 0
    assert results["dataset"] == "scikit-learn digits" and results["num_labels"] == 10
    assert "eval/accuracy" in logged.Tags()["scalars"]
    assert [e.step for e in logged.Scalars("eval/accuracy")] == [2, 4]  # every 2 steps, and the final model
    saved = json.loads((out / "results.json").read_text())
    assert saved["eval_accuracy"] == results["eval_accuracy"] and saved["command"].startswith("python scripts/")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md",
                 "modeling_rskip_resnet.py", "residual.py"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "PreAct-ResNet-8" in card
    assert f"{100 * results['eval_accuracy']:.2f}" in card

    # the saved folder is a working image classifier whose accuracy is the one reported
    register_auto_classes()
    from hf_rskip.data.images import load_digits_splits

    _, held_out, _ = load_digits_splits(image_size=8)
    classifier = pipeline("image-classification", model=str(out))
    predictions = classifier([Image.fromarray(a) for a in held_out.images], top_k=1, batch_size=64)
    accuracy = np.mean([p[0]["label"] == str(y) for p, y in zip(predictions, held_out.labels)])
    assert accuracy == pytest.approx(results["eval_accuracy"])


def test_short_run_on_real_cifar10_learns(tmp_path, shared_data) -> None:
    subset = shared_data / "cifar10" / "lossless_subset" / "cifar10_lossless_subset.npz"
    # the default keys x_train / y_train / x_test / y_test are this file's
    results = run(
        "--train_file", str(subset), "--validation_file", str(subset),
        "--label_names", "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck",
        "--max_train_samples", "512", "--num_train_epochs", "8", "--hidden_sizes", "8", "16", "32",
        "--per_device_train_batch_size", "32", "--eval_steps", "no", "--output_dir", str(tmp_path / "cifar"),
    )
    assert results["train_samples"] == 512 and results["eval_samples"] == 1000
    assert results["train_steps"] == 128 and results["residual_scheme"] == "rskip_ln"
    # 128 steps of a 20K-parameter model: clearly above chance (10%) on the 1,000 exact test images
    assert results["eval_accuracy"] > 0.2, results["eval_accuracy"]
    config = json.loads((tmp_path / "cifar" / "config.json").read_text())
    assert config["id2label"]["3"] == "cat"


def write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folders_with_bf16_mixed_precision(tmp_path) -> None:
    write_folder(tmp_path / "train", {"cat": 12, "dog": 12})
    write_folder(tmp_path / "val", {"cat": 3, "dog": 5}, seed=1)
    results = run("--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"),
                  "--image_size", "8", "--max_train_steps", "2", "--mixed_precision", "bf16",
                  "--residual_scheme", "xskip", "--skip_lambda", "1", "--output_dir", str(tmp_path / "out"))
    assert results["eval_samples"] == 8 and results["num_labels"] == 2 and results["mixed_precision"] == "bf16"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "cat", "1": "dog"}
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["size"] == {"height": 8, "width": 8}


def test_hub_dataset_and_push_to_hub(tmp_path, monkeypatch) -> None:
    """--dataset_name goes through datasets.load_dataset (here a local Parquet dataset: no network), and
    --push_to_hub uploads the finished folder (the upload itself is replaced: no network)."""
    import hf_rskip.hub

    from tests.data.test_images import make_hf_dataset

    (tmp_path / "data" / "data").mkdir(parents=True)
    make_hf_dataset(24).to_parquet(str(tmp_path / "data" / "data" / "train-00000-of-00001.parquet"))
    make_hf_dataset(9, seed=1).to_parquet(str(tmp_path / "data" / "data" / "test-00000-of-00001.parquet"))
    pushed = []

    def fake_push(folder, repo_id, **kwargs):
        pushed.append((Path(folder), repo_id, sorted(p.name for p in Path(folder).iterdir())))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(hf_rskip.hub, "push_folder_to_hub", fake_push)
    out = tmp_path / "out"
    results = run("--dataset_name", str(tmp_path / "data"), "--image_column_name", "img", "--image_size", "8",
                  "--cache_dir", str(tmp_path / "cache"), "--max_train_steps", "2", "--output_dir", str(out),
                  "--push_to_hub", "--hub_model_id", "me/rskip-test")
    assert (results["train_samples"], results["eval_samples"], results["num_labels"]) == (24, 9, 3)
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert len(pushed) == 1 and pushed[0][:2] == (out, "me/rskip-test")
    assert {"model.safetensors", "preprocessor_config.json", "README.md", "results.json"} <= set(pushed[0][2])


# --- bad input: one clear message, before any training -----------------------------------------------------

def test_bad_data_fails_before_training(tmp_path, monkeypatch, capsys) -> None:
    import hf_rskip.training.job as job

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(job, "train", no_training)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "mismatch.npz", x_train=images, y_train=np.zeros(19, int))
    np.savez(tmp_path / "train.npz", x_train=images, y_train=np.arange(20) % 4)
    np.savez(tmp_path / "val.npz", x_test=images[:5], y_test=np.array([0, 1, 2, 3, 4]))
    np.savez(tmp_path / "typo.npz", x_train=images, y_train=np.r_[np.arange(19) % 4, 999999])
    np.savez(tmp_path / "ragged.npz", x_train=np.array([np.zeros((8, 8, 3)), np.zeros((4, 4, 3))], dtype=object),
             y_train=np.array([0, 1]))
    write_folder(tmp_path / "folder", {"a": 2, "b": 2})
    (tmp_path / "folder" / "b" / "bad.png").write_bytes(b"\x89PNG garbage")
    cases = [
        (["--train_file", str(tmp_path / "mismatch.npz")], r"mismatch\.npz: 20 images under 'x_train' but 19 labels"),
        (["--train_file", str(tmp_path / "train.npz"), "--validation_file", str(tmp_path / "val.npz")],
         r"val\.npz \[x_test, y_test\]: labels range over 0..4, but there are 4 classes"),
        (["--train_file", str(tmp_path / "train.npz"), "--label_names", "a,b,c"],
         r"train\.npz \[x_train, y_train\]: labels range over 0..3, but there are 3 classes"),
        (["--train_file", str(tmp_path / "typo.npz")],
         r"typo\.npz \[x_train, y_train\]: the labels \(5 distinct values: 0, 1, 2, 3, 999999\) would make 1000000 "
         r"classes, 999995 of them without a single training image \(a mistyped label\?\)"),
        (["--train_file", str(tmp_path / "ragged.npz")], r"ragged\.npz.*'x_train'"),
        (["--train_dir", str(tmp_path / "folder")], r"b/bad\.png: unreadable image"),
        (["--train_file", str(tmp_path / "train.npz"), "--train_image_key", "images"],
         r"image key 'images' not found; keys in this file: \['x_train', 'y_train'\]"),
        (["--train_file", str(tmp_path / "train.npz"), "--depth", "21"], r"--depth 21: is not a CIFAR-style .*6n\+2"),
        (["--train_file", str(tmp_path / "train.npz"), "--residual_scheme", "rskip_ln", "--skip_lambda", "1.5"],
         r"--skip_lambda 1.5: is not valid for residual_scheme='rskip_ln'"),
        (["--train_file", str(tmp_path / "train.npz"), "--train_dir", str(tmp_path / "folder")],
         r"--train_file .*: choose one data source; got --train_dir, --train_file"),
        (["--train_file", str(tmp_path / "folder")], r"--train_file .*folder': is a folder; give a .npz file"),
        (["--validation_file", str(tmp_path / "val.npz")], r"--validation_file .*: needs --train_file"),
        (["--learning_rate", "0"], r"--learning_rate 0.0: must be a finite number > 0"),
        (["--log_grad_norms_every", "0", "--with_tracking"], r"--log_grad_norms_every 0: must be an integer >= 1"),
        (["--log_grad_norms_every", "3"], r"--log_grad_norms_every 3: needs --with_tracking"),
        (["--push_to_hub"], r"--push_to_hub True: needs --hub_model_id"),
        (["--resume_from_checkpoint", str(tmp_path / "nowhere")], r"--resume_from_checkpoint .*nowhere"),
    ]
    for argv, pattern in cases:
        with pytest.raises(SystemExit) as exit_info:
            run(*argv, "--output_dir", str(tmp_path / "out"))
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert re.search(pattern, err), (pattern, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "model.safetensors").exists()


