"""Tests for hf_rskip.checkpointing: atomic saves, completeness checks, exact restore, averaging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from hf_rskip.checkpointing import (
    MARKER_NAME,
    STATE_NAME,
    CheckpointError,
    average_checkpoints,
    check_checkpoint,
    clean_stale_checkpoints,
    find_latest_checkpoint,
    list_checkpoints,
    load_averaged_weights,
    load_checkpoint,
    read_checkpoint_weights,
    resolve_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


class TiedNet(nn.Module):
    """A small model with a tied weight, like the translation model's shared embedding / output head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.hidden = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("counter", torch.tensor(3, dtype=torch.long))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.emb(ids))))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = TiedNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler


def _train_step(model, optimizer, scheduler) -> None:
    ids = torch.randint(0, 11, (4, 5))
    loss = model(ids).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_save_then_load_restores_weights_optimizer_scheduler_and_extra_state(tmp_path: Path) -> None:
    accelerator, model, optimizer, scheduler = _setup()
    _train_step(model, optimizer, scheduler)
    ckpt = save_checkpoint(accelerator, tmp_path, 1, {"epoch": 0, "batches_in_epoch": 7})
    assert ckpt == tmp_path / "checkpoint-1"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_lr = scheduler.get_last_lr()
    # The RNG continues from here in an uninterrupted run; a resumed one must see the same draws.
    expected_draw = torch.rand(3)

    _train_step(model, optimizer, scheduler)
    _train_step(model, optimizer, scheduler)
    state = load_checkpoint(accelerator, ckpt)

    assert state == {"epoch": 0, "batches_in_epoch": 7, "step": 1}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert scheduler.get_last_lr() == saved_lr
    assert optimizer.state_dict()["state"][0]["step"].item() == 1
    torch.testing.assert_close(torch.rand(3), expected_draw, rtol=0, atol=0)


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
    assert list_checkpoints(tmp_path) == [first]
    assert find_latest_checkpoint(tmp_path) == first
    assert resolve_checkpoint("latest", tmp_path) == first
    with pytest.raises(CheckpointError, match="checkpoint-2.tmp"):
        load_checkpoint(accelerator, tmp_path / "checkpoint-2.tmp")

    # The next save cleans the debris and seals a new checkpoint.
    second = save_checkpoint(accelerator, tmp_path, 3)
    assert not (tmp_path / "checkpoint-2.tmp").exists()
    assert list_checkpoints(tmp_path) == [first, second]


def test_sigkill_during_save_leaves_only_the_previous_checkpoint(tmp_path: Path) -> None:
    # A real process death between writing the state and sealing it: the first fsync kills the process.
    script = textwrap.dedent(
        f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from accelerate import Accelerator
        from hf_rskip import checkpointing
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(torch.nn.Linear(3, 3))
        checkpointing.save_checkpoint(accelerator, {str(tmp_path)!r}, 5)
        checkpointing._fsync_path = lambda path: os.kill(os.getpid(), signal.SIGKILL)
        checkpointing.save_checkpoint(accelerator, {str(tmp_path)!r}, 10)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "checkpoint-10.tmp" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoint-10").exists()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def test_unsealed_or_truncated_folders_are_rejected_with_their_path(tmp_path: Path) -> None:
    accelerator, *_ = _setup()
    ckpt = save_checkpoint(accelerator, tmp_path, 4)
    info = check_checkpoint(ckpt)
    assert "model.safetensors" in info["files"] and STATE_NAME in info["files"]

    # A folder that looks like a checkpoint but was never sealed.
    fake = tmp_path / "checkpoint-9"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"junk")
    assert find_latest_checkpoint(tmp_path) == ckpt
    with pytest.raises(CheckpointError, match=r"checkpoint-9 is incomplete: no checkpoint_complete.json"):
        load_checkpoint(accelerator, fake)

    # A sealed folder whose file lost bytes afterwards.
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"checkpoint-4 is corrupt: model.safetensors has"):
        check_checkpoint(ckpt)
    assert find_latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "checkpoint-77", tmp_path)
    assert resolve_checkpoint("latest", tmp_path / "nowhere") is None

    removed = clean_stale_checkpoints(tmp_path)
    assert set(removed) == {fake, ckpt}


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
    snapshots = []
    paths = []
    for step in (1, 2, 3):
        _train_step(model, optimizer, scheduler)
        snapshots.append({k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()})
        paths.append(save_checkpoint(accelerator, tmp_path, step))

    avg = average_checkpoints(paths)
    assert set(read_checkpoint_weights(paths[0])) == set(avg)
    for key, tensor in avg.items():
        if tensor.is_floating_point():
            expected = torch.stack([s[key] for s in snapshots]).mean(0)
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7)
            assert tensor.dtype == snapshots[0][key].dtype
        else:
            assert torch.equal(tensor, snapshots[-1][key])
    # The three snapshots differ, so the mean is not any one of them.
    assert not torch.equal(avg["hidden.weight"], snapshots[-1]["hidden.weight"])

    fresh = TiedNet()
    load_averaged_weights(fresh, avg)
    torch.testing.assert_close(fresh.head.weight, avg["emb.weight"])  # the tie survives
    torch.testing.assert_close(fresh.hidden.bias, avg["hidden.bias"])

    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])
    with pytest.raises(ValueError, match="unexpected keys"):
        load_averaged_weights(fresh, {**avg, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not tied"):
        load_averaged_weights(fresh, {k: v for k, v in avg.items() if k != "hidden.bias"})


def test_save_checkpoint_rejects_bad_arguments(tmp_path: Path) -> None:
    accelerator, *_ = _setup()
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(accelerator, tmp_path, 1, keep_last=0)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(accelerator, tmp_path, -1)
    assert os.listdir(tmp_path) == []
