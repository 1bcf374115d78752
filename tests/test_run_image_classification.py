"""scripts/run_image_classification.py end to end on tiny budgets: digits, .npz (real CIFAR-10), image folders; the
saved folder works with the pipeline; exact resume; bad input fails before training; the schedules and SGD."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import load_file

from hf_rskip.vision_training import build_lr_scheduler, build_sgd, lr_factor

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "run_image_classification.py"
spec = importlib.util.spec_from_file_location("run_image_classification", SCRIPT)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

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
    return script.main([*TINY, *argv])


def test_digits_without_data_arguments(tmp_path) -> None:
    from transformers import pipeline

    from hf_rskip.modeling_rskip_resnet import register_auto_classes

    out = tmp_path / "digits"
    results = run("--output_dir", str(out), "--image_size", "8", "--max_train_samples", "96",
                  "--max_train_steps", "4", "--eval_steps", "2", "--with_tracking", "--log_grad_norms_every", "2")
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_samples"] == 360
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(out / "runs")).Reload()  # the scalars; hparams go to a subfolder
    assert [e.step for e in logged.Scalars("grad_norm/stages.0.layers.0")] == [0, 2]
    assert "grad_norm_summary/blocks/first_over_last" in logged.Tags()["scalars"], logged.Tags()["scalars"]
    assert results["train_steps"] == 4 and results["train_images"] == 64
    assert results["dataset"] == "scikit-learn digits" and results["num_labels"] == 10
    assert [r["step"] for r in results["history"]] == [2]  # evaluation every 2 steps, not at the last one
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
    from hf_rskip.vision_data import load_digits_splits

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

    from .test_vision_data import make_hf_dataset

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


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path) -> None:
    common = ["--image_size", "8", "--max_train_samples", "80", "--max_eval_samples", "16", "--max_train_steps", "8",
              "--checkpointing_steps", "3", "--eval_steps", "no"]
    run(*common, "--output_dir", str(tmp_path / "a"))
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == [
        "checkpoint-3", "checkpoint-6", "checkpoint-8"]
    # a run "killed" after step 3 (mid-epoch: 5 batches per epoch), resumed from its checkpoint
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-3", tmp_path / "b" / "checkpoints" / "checkpoint-3")
    results = run(*common, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest")
    assert results["resumed_from"].endswith("checkpoint-3") and results["train_steps"] == 8
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # starting again over existing checkpoints needs a decision
    with pytest.raises(SystemExit, match=r"--output_dir: .*already holds checkpoints"):
        run(*common, "--output_dir", str(tmp_path / "a"))


# --- bad input: one clear message, before any training -----------------------------------------------------

def test_bad_data_fails_before_training(tmp_path, monkeypatch) -> None:
    import hf_rskip.vision_training as vision_training

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(vision_training, "train_image_classifier", no_training)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "mismatch.npz", x_train=images, y_train=np.zeros(19, int))
    np.savez(tmp_path / "train.npz", x_train=images, y_train=np.arange(20) % 4)
    np.savez(tmp_path / "val.npz", x_test=images[:5], y_test=np.array([0, 1, 2, 3, 4]))
    write_folder(tmp_path / "folder", {"a": 2, "b": 2})
    (tmp_path / "folder" / "b" / "bad.png").write_bytes(b"\x89PNG garbage")
    cases = [
        (["--train_file", str(tmp_path / "mismatch.npz")], r"mismatch\.npz: 20 images under 'x_train' but 19 labels"),
        (["--train_file", str(tmp_path / "train.npz"), "--validation_file", str(tmp_path / "val.npz")],
         r"val\.npz \[x_test, y_test\]: label 4 at index 4 is outside \[0, 4\)"),
        (["--train_file", str(tmp_path / "train.npz"), "--label_names", "a,b,c"],
         r"train\.npz \[x_train, y_train\]: label 3 at index 3 is outside \[0, 3\)"),
        (["--train_dir", str(tmp_path / "folder")], r"b/bad\.png: unreadable image"),
        (["--train_file", str(tmp_path / "train.npz"), "--train_image_key", "images"],
         r"image key 'images' not found; keys in this file: \['x_train', 'y_train'\]"),
        (["--train_file", str(tmp_path / "train.npz"), "--depth", "21"], r"depth=21 .*6n\+2"),
        (["--train_file", str(tmp_path / "train.npz"), "--residual_scheme", "rskip_ln", "--skip_lambda", "1.5"],
         r"skip_lambda=1.5"),
        (["--train_file", str(tmp_path / "train.npz"), "--train_dir", str(tmp_path / "folder")],
         r"--train_file: choose one data source"),
        (["--validation_file", str(tmp_path / "val.npz")], r"--validation_file: needs --train_file"),
        (["--learning_rate", "0"], r"--learning_rate: 0.0 must be > 0"),
        (["--log_grad_norms_every", "0", "--with_tracking"], r"--log_grad_norms_every: 0 must be an integer >= 1"),
        (["--log_grad_norms_every", "3"], r"--log_grad_norms_every: needs --with_tracking"),
        (["--push_to_hub"], r"--hub_model_id: --push_to_hub needs"),
        (["--resume_from_checkpoint", str(tmp_path / "nowhere")], r"--resume_from_checkpoint: .*nowhere"),
    ]
    for argv, pattern in cases:
        with pytest.raises(SystemExit, match=pattern):
            run(*argv, "--output_dir", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_built_in_task_defaults_give_way_to_data_and_to_the_command_line() -> None:
    builtin = script.parse_args(["--output_dir", "x"])
    assert (builtin.image_size, builtin.random_crop_padding) == (16, 2)
    cifar = script.parse_args(["--output_dir", "x", "--train_file", "t.npz"])
    assert (cifar.image_size, cifar.random_crop_padding) == (32, 4)
    mine = script.parse_args(["--output_dir", "x", "--image_size", "24"])
    assert (mine.image_size, mine.random_crop_padding) == (24, 2)


def test_argument_names_follow_transformers() -> None:
    options = {a.dest for a in script.build_parser()._actions}
    assert {"output_dir", "seed", "num_train_epochs", "max_train_steps", "per_device_train_batch_size",
            "learning_rate", "checkpointing_steps", "resume_from_checkpoint", "dataset_name", "train_dir",
            "validation_dir", "image_column_name", "label_column_name", "push_to_hub", "hub_model_id",
            "depth", "residual_scheme", "skip_lambda", "residual_norm"} <= options


# --- optimizer and schedules ---------------------------------------------------------------------------------

def test_he_schedule_divides_by_ten_at_half_and_three_quarters() -> None:
    factors = [lr_factor(s, schedule="he", num_training_steps=100) for s in range(100)]
    assert factors[49] == 1.0 and factors[50] == pytest.approx(0.1) and factors[74] == pytest.approx(0.1)
    assert factors[75] == pytest.approx(0.01) and factors[99] == pytest.approx(0.01)
    warm = [lr_factor(s, schedule="he", num_training_steps=100, num_warmup_steps=4) for s in range(5)]
    assert warm == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_schedule_and_scheduler_steps() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_sgd(model, learning_rate=0.2, weight_decay=5e-4)
    scheduler = build_lr_scheduler(optimizer, schedule="cosine", num_training_steps=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.2) and rates[5] == pytest.approx(0.1) and rates[-1] < 0.01
    assert all(a > b for a, b in zip(rates, rates[1:]))
    with pytest.raises(ValueError, match=r"lr_scheduler_type='step'.*\['he', 'cosine', 'constant'\]"):
        build_lr_scheduler(optimizer, schedule="step", num_training_steps=10)


def test_sgd_decays_conv_and_linear_weights_only() -> None:
    from hf_rskip.configuration_rskip_resnet import RSkipResNetConfig
    from hf_rskip.modeling_rskip_resnet import RSkipResNetForImageClassification

    model = RSkipResNetForImageClassification(RSkipResNetConfig(depth=8, hidden_sizes=[4, 8, 8], num_labels=3))
    optimizer = build_sgd(model, learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0 and decayed["momentum"] == 0.9
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 4 or names[id(p)] == "classifier.weight" for p in decayed["params"])
    assert any("residual.norms" in names[id(p)] for p in plain["params"])  # rSkip's norms are not decayed
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
