"""Tests of hf_rskip.training.checkpointing: atomic saves that are model folders, checksums, exact restore,
no silent deletion, averaging."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.training.checkpointing import (
    MARKER_NAME,
    STATE_NAME,
    CheckpointError,
    StorageError,
    average_checkpoints,
    check_checkpoint,
    clean_leftovers,
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights_into,
    read_checkpoint_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from tests.conftest import tiny_text_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _setup(seed: int = 0, **config):
    """A tiny translation model (tied embeddings and head) with AdamW and a schedule, prepared."""
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = RSkipForConditionalGeneration(tiny_text_config(**config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> None:
    ids = torch.randint(3, 61, (4, 5))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_save_then_load_restores_weights_optimizer_scheduler_and_state(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    _train_step(model, optimizer, scheduler)
    ckpt = save_checkpoint(accelerator, tmp_path, 1, {"epoch": 0, "batches_in_epoch": 7})
    assert ckpt == tmp_path / "checkpoint-1"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_lr = scheduler.get_last_lr()
    expected_draw = torch.rand(3)  # a resumed run must see the draws an uninterrupted one sees

    _train_step(model, optimizer, scheduler)
    _train_step(model, optimizer, scheduler)
    state = load_checkpoint(accelerator, ckpt, config=model.config)

    assert state == {"epoch": 0, "batches_in_epoch": 7, "step": 1}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0, msg=k)
    assert model.model.shared.weight is model.lm_head.weight  # the tie survives the load
    assert scheduler.get_last_lr() == saved_lr
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)


def test_a_checkpoint_is_a_model_folder_and_saving_it_warns_about_nothing(tmp_path: Path, caplog) -> None:
    from transformers import AutoModelForSeq2SeqLM

    accelerator, model, optimizer, scheduler = _setup()
    _train_step(model, optimizer, scheduler)
    with caplog.at_level(logging.WARNING):
        ckpt = save_checkpoint(accelerator, tmp_path, 3)
    assert not [r for r in caplog.records if "shared" in r.getMessage().lower()], caplog.text
    assert {"config.json", "generation_config.json", "model.safetensors", STATE_NAME, MARKER_NAME} <= {
        p.name for p in ckpt.iterdir()}
    assert not (ckpt / "trainer_state.json").exists()  # transformers' Trainer file name means another format
    loaded = AutoModelForSeq2SeqLM.from_pretrained(ckpt)
    ids = torch.tensor([[5, 6, 7, 1]])
    torch.testing.assert_close(loaded(input_ids=ids, labels=ids).logits, model(input_ids=ids, labels=ids).logits)


def test_failure_mid_save_leaves_no_valid_looking_checkpoint(tmp_path: Path, monkeypatch) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    first = save_checkpoint(accelerator, tmp_path, 1)
    real_save_state = accelerator.save_state

    def dies_half_way(output_dir: str) -> None:
        real_save_state(output_dir)  # every file written, but the save is not sealed yet
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(accelerator, "save_state", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 2)
    monkeypatch.undo()

    assert not (tmp_path / "checkpoint-2").exists()
    assert (tmp_path / "checkpoint-2.tmp").is_dir()  # the debris is there, and must be ignored
    assert list_checkpoints(tmp_path) == [first] and find_latest_checkpoint(tmp_path) == first
    assert resolve_checkpoint("latest", tmp_path) == first
    with pytest.raises(CheckpointError, match="checkpoint-2.tmp"):
        load_checkpoint(accelerator, tmp_path / "checkpoint-2.tmp")

    # The next save removes its own debris, says so, and seals a new checkpoint.
    messages = []
    second = save_checkpoint(accelerator, tmp_path, 3)
    assert not (tmp_path / "checkpoint-2.tmp").exists()
    assert list_checkpoints(tmp_path) == [first, second]
    (tmp_path / "checkpoint-4.tmp").mkdir()
    clean_leftovers(tmp_path, log=messages.append)
    assert messages == [f"removed {tmp_path / 'checkpoint-4.tmp'}: the leftover of an interrupted checkpoint save"]


def test_a_full_disk_while_saving_says_so_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import errno

    accelerator, *_ = _setup()
    first = save_checkpoint(accelerator, tmp_path, 1)

    def no_space(output_dir: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", no_space)
    with pytest.raises(StorageError, match=r"could not save checkpoint .*checkpoint-2: no space left on the "
                                           r"device .*the previous checkpoints are intact"):
        save_checkpoint(accelerator, tmp_path, 2)
    assert list_checkpoints(tmp_path) == [first] and not (tmp_path / "checkpoint-2.tmp").exists()


@pytest.mark.parametrize("raised", [
    # what torch.save's zip writer and safetensors raise on a real full disk, instead of an OSError
    RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file "
                 "write failed"),
    RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4468736 vs 4468624"),
    "safetensors",
])
def test_a_full_disk_reported_by_torch_or_safetensors_reads_as_a_full_disk(raised, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from safetensors import SafetensorError

    if raised == "safetensors":
        raised = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                                 'space left on device" })')
    accelerator, *_ = _setup()
    first = save_checkpoint(accelerator, tmp_path, 1)

    def fails(output_dir: str) -> None:
        raise raised

    monkeypatch.setattr(accelerator, "save_state", fails)
    with pytest.raises(StorageError, match=r"could not save checkpoint .*checkpoint-2: no space left on the device "
                                           r"while writing .* MiB free there\); the previous checkpoints are intact"):
        save_checkpoint(accelerator, tmp_path, 2)
    assert list_checkpoints(tmp_path) == [first] and not (tmp_path / "checkpoint-2.tmp").exists()


def test_other_runtime_errors_while_saving_are_not_mistaken_for_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    accelerator, *_ = _setup()

    def fails(output_dir: str) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(accelerator, "save_state", fails)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        save_checkpoint(accelerator, tmp_path, 1)
    assert not (tmp_path / "checkpoint-1.tmp").exists()


def test_sigkill_during_save_leaves_only_the_previous_checkpoint(tmp_path: Path) -> None:
    # A real process death between writing the state and sealing it: the first fsync kills the process.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from accelerate import Accelerator
        from hf_rskip.training import checkpointing
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(torch.nn.Linear(3, 3))
        checkpointing.save_checkpoint(accelerator, {str(tmp_path)!r}, 5)
        checkpointing.fsync_path = lambda path: os.kill(os.getpid(), signal.SIGKILL)
        checkpointing.save_checkpoint(accelerator, {str(tmp_path)!r}, 10)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "checkpoint-10.tmp" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoint-10").exists()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def test_damaged_or_foreign_folders_are_named_never_deleted_never_resumed(tmp_path: Path) -> None:
    accelerator, *_ = _setup()
    ckpt = save_checkpoint(accelerator, tmp_path, 4)
    info = check_checkpoint(ckpt)
    assert set(info["files"]["model.safetensors"]) == {"size", "sha256"}

    # A folder that looks like a checkpoint but was never sealed by us: skipped, named, left alone.
    fake = tmp_path / "checkpoint-9"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"junk")
    assert find_latest_checkpoint(tmp_path) == ckpt
    with pytest.raises(CheckpointError, match=r"checkpoint-9 is incomplete: no checkpoint_complete.json"):
        load_checkpoint(accelerator, fake)
    warnings = []
    assert clean_leftovers(tmp_path, log=warnings.append) == [] and fake.is_dir()
    assert warnings == [f"{fake} is not a complete checkpoint (no valid {MARKER_NAME}); it is left alone and not "
                        "used"]

    # Weights damaged without changing their size: the checksum finds it before anything is loaded.
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is corrupt: model.safetensors does not match the "
                                              r"SHA-256"):
        load_checkpoint(accelerator, ckpt)
    # Asked to resume from "latest" with nothing usable: an error naming each problem; nothing is deleted.
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*checkpoint-9 is incomplete.*checkpoint-4 "
                                              r"is corrupt.*Nothing was deleted"):
        resolve_checkpoint("latest", tmp_path)
    assert fake.is_dir() and ckpt.is_dir()
    with pytest.raises(CheckpointError, match=r"there is no checkpoint in .*nowhere to resume from"):
        resolve_checkpoint("latest", tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "checkpoint-77", tmp_path)
    # A sealed folder whose file lost bytes afterwards is not even listed.
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is corrupt: model.safetensors has"):
        check_checkpoint(ckpt)
    assert find_latest_checkpoint(tmp_path) is None


def test_resuming_with_another_model_names_every_difference(tmp_path: Path) -> None:
    accelerator, *_ = _setup(residual_scheme="rskip_ln", skip_lambda=2)
    ckpt = save_checkpoint(accelerator, tmp_path, 1)
    AcceleratorState._reset_state(True)
    other, *_ = _setup(residual_scheme="rskip_ln", skip_lambda=3, d_model=64)
    model = other._models[0]
    with pytest.raises(CheckpointError, match=r"different model \(d_model: 32 in the checkpoint, 64 now; skip_lambda: 2 in "
                                              r"the checkpoint, 3 now\)"):
        load_checkpoint(other, ckpt, config=model.config)


def test_keep_last_and_resave_same_step(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    for step in (1, 2, 3, 4):
        _train_step(model, optimizer, scheduler)
        save_checkpoint(accelerator, tmp_path, step, {"tag": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]
    save_checkpoint(accelerator, tmp_path, 4, {"tag": "again"}, keep_last=2)
    state = json.loads((tmp_path / "checkpoint-4" / STATE_NAME).read_text())
    assert state["tag"] == "again"
    assert not any(".old" in p.name or ".tmp" in p.name for p in tmp_path.iterdir())
    assert (tmp_path / "checkpoint-4" / MARKER_NAME).is_file()


def test_average_checkpoints_is_the_mean_and_loads_into_the_model(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    snapshots, paths = [], []
    for step in (1, 2, 3):
        _train_step(model, optimizer, scheduler)
        snapshots.append({k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()})
        paths.append(save_checkpoint(accelerator, tmp_path, step))

    avg = average_checkpoints(paths)
    assert set(read_checkpoint_weights(paths[0])) == set(avg)
    assert "lm_head.weight" not in avg  # tied to the shared embedding, stored once
    for key, tensor in avg.items():
        if tensor.is_floating_point():
            expected = torch.stack([s[key] for s in snapshots]).mean(0)
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7)
            assert tensor.dtype == snapshots[0][key].dtype
        else:
            assert torch.equal(tensor, snapshots[-1][key])
    key = "model.encoder.layers.0.fc1.weight"
    assert not torch.equal(avg[key], snapshots[-1][key])  # the snapshots differ: the mean is none of them

    fresh = RSkipForConditionalGeneration(tiny_text_config())
    load_weights_into(fresh, avg)
    torch.testing.assert_close(fresh.lm_head.weight, avg["model.shared.weight"])  # the tie survives
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])
    with pytest.raises(CheckpointError, match="keys the model does not know"):
        load_weights_into(fresh, {**avg, "extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not tied"):
        load_weights_into(fresh, {k: v for k, v in avg.items() if k != key})


def test_save_checkpoint_rejects_bad_arguments(tmp_path: Path) -> None:
    accelerator, *_ = _setup()
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(accelerator, tmp_path, 1, keep_last=0)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(accelerator, tmp_path, -1)
    assert os.listdir(tmp_path) == []
