"""Crash-safe training checkpoints on top of Accelerate, and fairseq-style checkpoint averaging.

A checkpoint is a folder ``<output_dir>/checkpoint-<step>`` holding everything
:meth:`accelerate.Accelerator.save_state` writes (model safetensors, optimizer, scheduler, grad scaler,
per-process RNG states, registered objects) plus two files of ours:

* ``trainer_state.json``: the caller's ``extra_state`` (step, epoch, position in the epoch, ...),
* ``checkpoint_complete.json``: the completion marker, written last, listing every file with its size.

Atomicity: the folder is first written as ``checkpoint-<step>.tmp``, every file and the folder are
fsync-ed, and only then is it renamed with :func:`os.replace` (atomic on POSIX). A crash at any point
leaves either no ``checkpoint-<step>`` at all or a complete one; leftover ``*.tmp`` folders are
ignored by :func:`list_checkpoints` and removed by the next save. The marker is a second line of
defence, e.g. against a folder copied by hand or a filesystem that lost a file: a checkpoint counts as
complete only when its marker exists and every listed file is there with its size.

Multi-process: every process calls :func:`save_checkpoint` (Accelerate requires all processes in
``save_state``; each writes its own RNG file), only the main process prepares, seals and renames the
folder, and barriers order the steps. The output folder must be shared by all processes of a node
(the usual case); for several nodes without a shared filesystem use Accelerate's
``save_on_each_node``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

CHECKPOINT_PREFIX = "checkpoint-"
"""Final checkpoint folders are named ``checkpoint-<step>``."""

STATE_NAME = "trainer_state.json"
"""The caller's ``extra_state`` inside a checkpoint."""

MARKER_NAME = "checkpoint_complete.json"
"""The completion marker, written last (after fsync of everything else)."""

MODEL_WEIGHTS_NAME = "model.safetensors"
"""What ``Accelerator.save_state`` names the first model's weights (safe serialization)."""

_FINAL_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
_TMP_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}\d+\.(tmp|old)")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or incomplete; the message names the path and what is wrong."""


class ResumableState:
    """Mixin for a training loop's dataclass state saved as a checkpoint's ``extra_state`` (JSON).

    ``from_dict`` ignores keys the dataclass does not know, so a checkpoint written by a newer loop
    with more counters still resumes an older one.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in names})


def _fsync_path(path: Path) -> None:
    """Flushes one file or folder to disk (folders matter: a rename lives in its parent's entry)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on some platforms; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_durably(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes JSON via a temporary file + fsync + rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _manifest(folder: Path) -> dict[str, int]:
    """Relative path → size in bytes of every file under ``folder`` except the marker."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER_NAME
    }


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step encoded in a final checkpoint folder's name, or None for any other name."""
    match = _FINAL_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a sealed checkpoint: marker present and every listed file intact."""
    try:
        check_checkpoint(path)
    except CheckpointError:
        return False
    return True


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Checks a checkpoint folder and returns its marker.

    Args:
        path: a ``checkpoint-<step>`` folder.

    Raises:
        CheckpointError: naming ``path`` and the problem (missing folder, no marker, a lost or truncated file).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a folder)")
    marker = path / MARKER_NAME
    if not marker.is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete: no {MARKER_NAME} (the save was interrupted or the folder was not "
            "written by hf_rskip.checkpointing.save_checkpoint)"
        )
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete: {marker} is unreadable ({err})") from err
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is listed in {MARKER_NAME} but missing")
        if f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {f.stat().st_size} bytes, {MARKER_NAME} says {size}"
            )
    return info


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-<step>`` folders in ``output_dir``, oldest (lowest step) first.

    Temporary folders from interrupted saves and folders without a valid marker are left out.

    Args:
        output_dir: the training output folder (need not exist).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if is_complete_checkpoint(p)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or None when there is none.

    Args:
        output_dir: the training output folder.
    """
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_checkpoint(spec: str | os.PathLike, output_dir: str | os.PathLike) -> Path | None:
    """Turns a ``--resume_from_checkpoint`` value into a checkpoint folder.

    Args:
        spec: ``"latest"`` (the newest complete checkpoint in ``output_dir``; None when there is none, so a
            first run and a restarted run can use the same command) or a path to a checkpoint folder.
        output_dir: where ``"latest"`` looks.

    Raises:
        CheckpointError: when ``spec`` is a path that is not a complete checkpoint.
    """
    if str(spec) == "latest":
        return find_latest_checkpoint(output_dir)
    path = Path(spec)
    check_checkpoint(path)
    return path


def clean_stale_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Removes leftovers of interrupted saves (``checkpoint-<n>.tmp*`` / ``.old*``) and unsealed folders.

    Only call this on the main process while no save is in flight.

    Args:
        output_dir: the training output folder.

    Returns:
        The removed folders.
    """
    output_dir = Path(output_dir)
    removed = []
    if not output_dir.is_dir():
        return removed
    for p in output_dir.iterdir():
        stale_tmp = _TMP_RE.match(p.name) is not None
        unsealed = checkpoint_step(p) is not None and p.is_dir() and not is_complete_checkpoint(p)
        if p.is_dir() and (stale_tmp or unsealed):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    extra_state: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = None,
) -> Path:
    """Saves the full training state atomically to ``<output_dir>/checkpoint-<step>``.

    Must be called by every process (as ``Accelerator.save_state`` requires).

    Args:
        accelerator: the ``accelerate.Accelerator`` whose prepared model(s), optimizer(s), scheduler(s),
            dataloaders and registered objects are saved.
        output_dir: the training output folder; checkpoints are its sub-folders.
        step: the optimizer step count; it names the folder.
        extra_state: JSON-serializable state of the caller's loop (epoch, batches consumed in the epoch,
            sampler seed, ...), returned by :func:`load_checkpoint`. ``step`` is added to it.
        keep_last: when given, keep only this many newest complete checkpoints (older ones are deleted
            after the new one is sealed, so there is always at least one complete checkpoint on disk).

    Returns:
        The sealed checkpoint folder.
    """
    if step < 0:
        raise ValueError(f"step={step!r} must be >= 0")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r} must be >= 1 or None")
    output_dir = Path(output_dir)
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    # Same name on every process, so all of them write into one folder; a leftover from a crash is removed.
    tmp = output_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_checkpoints(output_dir)
        tmp.mkdir()
    accelerator.wait_for_everyone()

    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        state = {**dict(extra_state or {}), "step": int(step)}
        _write_json_durably(tmp / STATE_NAME, state)
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync_path(p)
        _write_json_durably(tmp / MARKER_NAME, {"step": int(step), "files": _manifest(tmp)})
        _fsync_path(tmp)
        if final.exists():
            # Re-saving a step (e.g. after a resume): move the old one aside first; a crash between the two
            # renames leaves a `.old` folder plus a sealed `.tmp`, both cleaned by the next save.
            old = output_dir / f"{CHECKPOINT_PREFIX}{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(output_dir)
        if keep_last is not None:
            for stale in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restores a checkpoint written by :func:`save_checkpoint` into the prepared objects.

    Args:
        accelerator: the ``accelerate.Accelerator`` with the same objects prepared (and registered) in the
            same order as when saving.
        path: the ``checkpoint-<step>`` folder.

    Returns:
        The ``extra_state`` saved with it (including ``step``).

    Raises:
        CheckpointError: naming ``path`` when it is missing or incomplete.
    """
    path = Path(path)
    check_checkpoint(path)
    accelerator.load_state(str(path))
    return json.loads((path / STATE_NAME).read_text(encoding="utf-8"))


def read_checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights saved in one checkpoint (first model), on CPU.

    Keys are the unwrapped model's parameter names: a ``module.`` prefix left by DDP wrapping is removed.
    Tied weights appear once (as safetensors stores them).

    Args:
        path: a complete ``checkpoint-<step>`` folder.
    """
    path = Path(path)
    check_checkpoint(path)
    weights_file = path / MODEL_WEIGHTS_NAME
    if not weights_file.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MODEL_WEIGHTS_NAME} (saved without safe serialization?)")
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(weights_file), framework="pt", device="cpu") as f:
        for key in f.keys():
            state[key.removeprefix("module.")] = f.get_tensor(key)
    return state


def average_checkpoints(paths: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Averages model parameters over checkpoints, as fairseq's ``scripts/average_checkpoints.py`` does.

    Floating-point tensors are summed in float64 and divided by the count, then cast back to their dtype;
    integer buffers (e.g. counters) are taken from the last checkpoint.

    Args:
        paths: complete checkpoint folders (typically the last N of :func:`list_checkpoints`).

    Returns:
        Parameter name → averaged tensor, ready for :func:`load_averaged_weights`.

    Raises:
        ValueError: when ``paths`` is empty or the checkpoints hold different parameter names or shapes.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):
        state = read_checkpoint_weights(path)
        if i and set(state) != set(last):
            raise ValueError(
                f"checkpoint {path} has different parameters than {paths[0]}: "
                f"{sorted(set(state) ^ set(last))[:5]} ..."
            )
        for key, tensor in state.items():
            if i and tensor.shape != last[key].shape:
                raise ValueError(
                    f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, {paths[0]} has {tuple(last[key].shape)}"
                )
            if tensor.is_floating_point():
                sums[key] = sums[key] + tensor.double() if key in sums else tensor.double()
        last = state
    return {key: (sums[key] / len(paths)).to(t.dtype) if key in sums else t for key, t in last.items()}


def load_averaged_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Loads a state dict from :func:`average_checkpoints` into an (unwrapped) model.

    Keys absent from ``state`` are allowed only when they are tied to a loaded parameter (safetensors
    stores shared tensors once); anything else missing or unexpected raises.

    Args:
        model: the unwrapped model (``accelerator.unwrap_model(model)``).
        state: parameter name → tensor.
    """
    result = model.load_state_dict(dict(state), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"averaged weights have unexpected keys: {result.unexpected_keys[:5]}")
    loaded_ptrs = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    untied = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"averaged weights miss keys that are not tied to a loaded one: {untied[:5]}")


__all__ = [
    "CheckpointError",
    "average_checkpoints",
    "check_checkpoint",
    "checkpoint_step",
    "clean_stale_checkpoints",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "list_checkpoints",
    "load_averaged_weights",
    "load_checkpoint",
    "read_checkpoint_weights",
    "resolve_checkpoint",
    "save_checkpoint",
]
