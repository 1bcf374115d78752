"""Crash-safe training checkpoints that are also model folders, and fairseq-style checkpoint averaging.

A checkpoint is a folder ``<checkpoint_dir>/checkpoint-<step>`` holding:

* the model as ``save_pretrained`` writes it (``config.json``, ``generation_config.json`` where the model has one,
  ``model.safetensors`` with tied weights stored once, and the remote-code files), so
  ``AutoModelFor*.from_pretrained("checkpoint-<step>")`` loads it; the caller may add the tokenizer or image
  processor (``save_extras``), which makes the folder complete for a pipeline;
* everything else :meth:`accelerate.Accelerator.save_state` writes (optimizer, scheduler, grad scaler,
  per-process RNG states, sampler states);
* ``loop_state.json``: the training loop's own state (step, epoch, position in the epoch, running counts);
* ``checkpoint_complete.json``: the completion marker, written last: every file with its size and SHA-256.

The model is written by transformers, not by Accelerate: hooks registered on the ``Accelerator``
(:func:`register_model_hooks`) save and load it in transformers' format, so a checkpoint never warns about
shared tensors and its weights need no conversion to be used.

Atomicity: the folder is first written as ``checkpoint-<step>.tmp``, every file and the folder are fsync-ed,
and only then is it renamed with :func:`os.replace` (atomic on POSIX). A crash at any point leaves either no
``checkpoint-<step>`` or a complete one. ``*.tmp`` / ``*.old`` folders are this module's own leftovers and are
removed by the next save (with a message); a ``checkpoint-<step>`` folder without a valid marker was not written
here and is never deleted: it is skipped with a warning.

Multi-process: every process calls :func:`save_checkpoint` (Accelerate requires all processes in
``save_state``; each writes its own RNG file); only the main process seals and renames the folder, and barriers
order the steps. The folder must be shared by all processes of a node (the usual case).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
"""Final checkpoint folders are named ``checkpoint-<step>``."""

STATE_NAME = "loop_state.json"
"""The training loop's state inside a checkpoint (not transformers' ``trainer_state.json``: another format)."""

LEGACY_STATE_NAME = "trainer_state.json"
"""What checkpoints written by hf_rskip 0.1 called the loop state; still read."""

MARKER_NAME = "checkpoint_complete.json"
"""The completion marker, written last (after fsync of everything else)."""

MODEL_WEIGHTS_NAME = "model.safetensors"
"""The model weights inside a checkpoint (transformers' name and format)."""

_FINAL_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
_LEFTOVER_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}\d+\.(tmp|old)$")
_HASH_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, damaged or does not fit the run; the message names the path."""


class ResumableState:
    """Mixin for a loop's dataclass state saved in a checkpoint (JSON).

    ``from_dict`` ignores keys the dataclass does not know, so a checkpoint written by a newer loop with more
    counters still resumes an older one.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in names})


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flushes one file or folder to disk (folders matter: a rename lives in its parent's entry)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # folders cannot be opened on some platforms; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_durably(path: Path, payload: Any) -> None:
    """Writes JSON via a temporary file + fsync + rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path → size and SHA-256 of every file under ``folder`` except the marker."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER_NAME
    }


# --------------------------------------------------------------------------------------------------
# Finding and checking checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step encoded in a final checkpoint folder's name, or None for any other name."""
    match = _FINAL_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def check_checkpoint(path: str | os.PathLike, *, verify_contents: bool = False) -> dict[str, Any]:
    """Checks a checkpoint folder and returns its marker.

    Args:
        path: a ``checkpoint-<step>`` folder.
        verify_contents: also compare every file's SHA-256 with the marker's (reads every byte; done before a
            checkpoint is loaded). Without it, only presence and sizes are checked.

    Raises:
        CheckpointError: naming ``path`` and the problem (missing folder, no marker, a lost, truncated or
            altered file).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a folder)")
    marker = path / MARKER_NAME
    if not marker.is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete: no {MARKER_NAME} (the save was interrupted or the folder was not "
            "written by hf_rskip)"
        )
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(info["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete: {marker} is unreadable ({err})") from err
    for name, entry in files.items():
        expected = entry if isinstance(entry, dict) else {"size": entry}  # 0.1 markers held sizes only
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is listed in {MARKER_NAME} but missing")
        if f.stat().st_size != expected["size"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} has {f.stat().st_size} bytes, {MARKER_NAME} says "
                f"{expected['size']}"
            )
        if verify_contents and "sha256" in expected and file_sha256(f) != expected["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} does not match the SHA-256 in {MARKER_NAME} (the file was "
                "changed or damaged after it was saved)"
            )
    return info


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a sealed checkpoint: marker present and every listed file there at its size."""
    try:
        check_checkpoint(path)
    except CheckpointError:
        return False
    return True


def checkpoint_folders(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Every ``checkpoint-<step>`` folder in ``checkpoint_dir``, sealed or not, by step."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in checkpoint_dir.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None]
    return [p for _, p in sorted(found)]


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoint-<step>`` folders in ``checkpoint_dir``, oldest (lowest step) first.

    Leftovers of interrupted saves and folders without a valid marker are left out (and left alone).
    """
    return [p for p in checkpoint_folders(checkpoint_dir) if is_complete_checkpoint(p)]


def find_latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in ``checkpoint_dir``, or None when there is none."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def resolve_checkpoint(spec: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> Path:
    """Turns a ``--resume_from_checkpoint`` value into a checkpoint folder (checked, contents verified).

    Args:
        spec: ``"latest"`` (the newest complete checkpoint in ``checkpoint_dir``) or a checkpoint folder.
        checkpoint_dir: where ``"latest"`` looks.

    Raises:
        CheckpointError: nothing to resume from (``latest`` with no complete checkpoint: each damaged one is
            named with its problem) or ``spec`` is not a complete, intact checkpoint. Asked to resume, a run never
            silently starts over.
    """
    if str(spec) != "latest":
        path = Path(spec)
        check_checkpoint(path, verify_contents=True)
        return path
    folders = checkpoint_folders(checkpoint_dir)
    problems = []
    for path in reversed(folders):
        try:
            check_checkpoint(path, verify_contents=True)
            return path
        except CheckpointError as err:
            problems.append(str(err))
    if not folders:
        raise CheckpointError(f"--resume_from_checkpoint latest: there is no checkpoint in {checkpoint_dir} to resume "
                              "from (drop the option to start a new run)")
    raise CheckpointError(f"--resume_from_checkpoint latest: no usable checkpoint in {checkpoint_dir}: "
                          + "; ".join(problems) + ". Nothing was deleted; pass a folder to resume from one, or "
                          "--overwrite_output_dir to start over")


def clean_leftovers(checkpoint_dir: str | os.PathLike, *, log: Callable[[str], None] = logger.warning) -> list[Path]:
    """Removes this module's own leftovers of interrupted saves (``checkpoint-<n>.tmp`` / ``.old``), saying so.

    Folders named ``checkpoint-<n>`` without a marker are not touched (they may be someone's); a warning names
    them. Call on the main process only, while no save is in flight.

    Returns:
        The removed folders.
    """
    checkpoint_dir = Path(checkpoint_dir)
    removed: list[Path] = []
    if not checkpoint_dir.is_dir():
        return removed
    for p in sorted(checkpoint_dir.iterdir()):
        if p.is_dir() and _LEFTOVER_RE.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log(f"removed {p}: the leftover of an interrupted checkpoint save")
        elif p.is_dir() and checkpoint_step(p) is not None and not is_complete_checkpoint(p):
            log(f"{p} is not a complete checkpoint (no valid {MARKER_NAME}); it is left alone and not used")
    return removed


# --------------------------------------------------------------------------------------------------
# The model inside a checkpoint: saved and loaded by transformers, through Accelerate's hooks
# --------------------------------------------------------------------------------------------------


def register_model_hooks(accelerator: Any) -> None:
    """Makes ``accelerator.save_state`` / ``load_state`` write and read prepared transformers models with
    ``save_pretrained`` (config, generation config, ``model.safetensors``) instead of Accelerate's raw state dict.

    Models that are not transformers models (no ``save_pretrained``) keep Accelerate's own format. Call once per
    ``Accelerator``, after ``prepare``.
    """
    if getattr(accelerator, "_hf_rskip_model_hooks", False):
        return

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        keep_models, keep_weights = [], []
        for model, state in zip(models, weights):
            unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
            if not hasattr(unwrapped, "save_pretrained"):
                keep_models.append(model)
                keep_weights.append(state)
                continue
            unwrapped.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                                      save_function=accelerator.save, state_dict=model_state_dict(accelerator, model))
        weights[:] = keep_weights

    def load_hook(models: list[Any], input_dir: str) -> None:
        keep = []
        for model in models:
            unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
            if not hasattr(unwrapped, "save_pretrained"):
                keep.append(model)
                continue
            load_weights_into(unwrapped, read_weights_file(Path(input_dir) / MODEL_WEIGHTS_NAME))
        models[:] = keep

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    accelerator._hf_rskip_model_hooks = True


def model_state_dict(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """The full state dict of a prepared model under the unwrapped model's names: Accelerate gathers it (DDP, FSDP),
    and a ``torch.compile`` wrapper is looked through first, so no key carries its ``_orig_mod.`` prefix."""
    return accelerator.get_state_dict(getattr(model, "_orig_mod", model))


def pretrained_load_problem(path: str | Path, err: BaseException) -> str:
    """Why ``from_pretrained`` failed on ``path``, in one sentence: custom code that needs ``--trust_remote_code``, a
    damaged or truncated weights file (named), or the first line of the library's message."""
    if "trust_remote_code" in str(err):
        return "it holds custom code; pass --trust_remote_code to allow it to run (only for folders you trust)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    folder = Path(path)
    if not (isinstance(err, SafetensorError) or "safetensors" in text.lower()) or not folder.is_dir():
        return text
    for file in sorted(folder.glob("*.safetensors")):
        try:
            read_weights_file(file)
        except CheckpointError as damaged:
            return str(damaged)
    return text


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on CPU.

    Raises:
        CheckpointError: naming the file when it is missing, truncated or its header is damaged.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                state[key.removeprefix("module.")] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors (damaged or truncated): {err}") from None
    return state


def load_weights_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Loads weights saved by ``save_pretrained`` (or averaged) into an unwrapped model.

    Keys absent from ``state`` are allowed only when they are tied to a loaded parameter (safetensors stores
    shared tensors once) or the model declares them as not saved (``_keys_to_ignore_on_save``, e.g. sinusoidal
    position tables); anything else missing or unexpected raises.
    """
    result = model.load_state_dict(dict(state), strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"the saved weights have keys the model does not know: {result.unexpected_keys[:5]}")
    own = model.state_dict()
    loaded_ptrs = {t.data_ptr() for k, t in own.items() if k in state}
    not_saved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_ptrs and k not in not_saved]
    if untied:
        raise CheckpointError(f"the saved weights miss keys that are not tied to a loaded one: {untied[:5]}")


def read_checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights saved in one checkpoint, on CPU (the contents are verified first).

    Args:
        path: a complete ``checkpoint-<step>`` folder.
    """
    path = Path(path)
    check_checkpoint(path, verify_contents=True)
    return read_weights_file(path / MODEL_WEIGHTS_NAME)


def check_config_matches(path: str | os.PathLike, config: Any) -> None:
    """Checks that a checkpoint was written by a model with ``config`` (size, scheme, λ, vocabulary, ...).

    Raises:
        CheckpointError: naming every field that differs, e.g. ``skip_lambda: 2 in the checkpoint, 3 now``.
    """
    path = Path(path)
    saved_file = path / "config.json"
    if not saved_file.is_file():
        return  # a checkpoint of a model that is not a transformers model
    # the same class reads the saved file, so defaults left out of config.json compare equal
    saved = type(config).from_pretrained(str(path)).to_dict()
    current = config.to_dict()
    ignore = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype",
              "_attn_implementation_autoset", "use_cache", "output_hidden_states", "output_attentions",
              "return_dict", "problem_type"}
    differences = [f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
                   for key in sorted(set(saved) | set(current))
                   if key not in ignore and saved.get(key) != current.get(key)]
    if differences:
        raise CheckpointError(f"checkpoint {path} was written by a different model ({'; '.join(differences)}); "
                              "resume with the options of that run, or start a new run in another --output_dir")


# --------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------


def save_checkpoint(
    accelerator: Any,
    checkpoint_dir: str | os.PathLike,
    step: int,
    extra_state: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = None,
    save_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Saves the full training state atomically to ``<checkpoint_dir>/checkpoint-<step>``.

    Must be called by every process (as ``Accelerator.save_state`` requires).

    Args:
        accelerator: the ``Accelerator`` whose prepared models, optimizers, schedulers, data loaders and registered
            objects are saved (models through :func:`register_model_hooks`, registered here if needed).
        checkpoint_dir: the folder of the checkpoints.
        step: the optimizer step count; it names the folder.
        extra_state: JSON-serializable loop state, returned by :func:`load_checkpoint`. ``step`` is added.
        keep_last: keep only this many newest complete checkpoints (older ones are deleted after the new one is
            sealed, so there is always a complete checkpoint on disk).
        save_extras: called with the folder on the main process before sealing (e.g. to save the tokenizer).

    Returns:
        The sealed checkpoint folder.
    """
    if step < 0:
        raise ValueError(f"step={step!r} must be >= 0")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last={keep_last!r} must be >= 1 or None")
    register_model_hooks(accelerator)
    checkpoint_dir = Path(checkpoint_dir)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    # Same name on every process, so all of them write into one folder.
    tmp = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}.tmp"

    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        clean_leftovers(checkpoint_dir)
        tmp.mkdir()
    accelerator.wait_for_everyone()

    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if save_extras is not None:
                save_extras(tmp)
            write_json_durably(tmp / STATE_NAME, {**dict(extra_state or {}), "step": int(step)})
            for p in tmp.rglob("*"):
                if p.is_file():
                    fsync_path(p)
            write_json_durably(tmp / MARKER_NAME, {"step": int(step), "files": _manifest(tmp)})
            fsync_path(tmp)
            if final.exists():
                # Re-saving a step (after a resume): move the old one aside first; a crash between the two renames
                # leaves a `.old` folder plus a sealed `.tmp`, both removed by the next save.
                old = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            fsync_path(checkpoint_dir)
            if keep_last is not None:
                for stale in list_checkpoints(checkpoint_dir)[:-keep_last]:
                    shutil.rmtree(stale, ignore_errors=True)
    except (OSError, RuntimeError, SafetensorError) as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        storage = storage_problem(err, tmp)
        if storage is not None:  # the run failed; nothing about its input was wrong
            raise StorageError(f"could not save checkpoint {final}: {storage}; the previous checkpoints are "
                               "intact") from None
        if not isinstance(err, OSError):
            raise
        raise CheckpointError(f"could not save checkpoint {final}: {describe_os_error(err)}; the previous "
                              "checkpoints are intact") from None
    accelerator.wait_for_everyone()
    return final


class StorageError(OSError):
    """Writing failed because the storage is full (or a file-size limit was hit); the message says what was being
    written and what is intact. Scripts exit 1 on it (a failure, not bad input)."""


#: How libraries report a failed write without an ``OSError``: torch's zip writer ("unexpected pos", "file write
#: failed") and safetensors' Rust I/O errors (``Os { code: 28, kind: StorageFull }``; 27 is EFBIG).
_WRITE_FAILURE_SIGNS = ("unexpected pos", "file write failed", "no space left", "storagefull", "code: 28",
                        "code: 122", "code: 27", "filetoolarge", "file too large")


def storage_problem(err: BaseException, where: str | os.PathLike) -> str | None:
    """What a failed write means, in words, if it was the storage (full disk, quota, file-size limit); None
    otherwise. Reads ``OSError`` numbers and the texts torch and safetensors raise instead of an ``OSError``."""
    import errno

    if isinstance(err, OSError):
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return describe_os_error(err)
        return None
    text = str(err).strip()
    if not isinstance(err, (RuntimeError, SafetensorError)) or not any(
            sign in text.lower() for sign in _WRITE_FAILURE_SIGNS):
        return None
    first = text.splitlines()[0] if text else type(err).__name__
    try:
        probe = Path(where)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = f"; {shutil.disk_usage(probe).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    if any(sign in text.lower() for sign in ("code: 27", "filetoolarge", "file too large")):
        return f"file too large for the file system while writing {where} ({first})"
    return f"no space left on the device while writing {where} ({type(err).__name__}: {first}{free})"


@contextlib.contextmanager
def storage_errors(where: str | os.PathLike, what: str) -> Iterator[None]:
    """Turns a write that failed for lack of storage, however the library reports it (see :func:`storage_problem`),
    into a :class:`StorageError` naming ``what`` was being written; other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        problem = storage_problem(err, where)
        if problem is None:
            raise
        raise StorageError(f"could not write {what}: {problem}") from None


def describe_os_error(err: OSError) -> str:
    """An ``OSError`` in words a user acts on (a full disk says so)."""
    import errno

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device ({err})"
    if err.errno == errno.EFBIG:
        return f"file too large for the file system ({err})"
    return str(err)


def load_checkpoint(accelerator: Any, path: str | os.PathLike, *, config: Any | None = None) -> dict[str, Any]:
    """Restores a checkpoint written by :func:`save_checkpoint` into the prepared objects.

    Args:
        accelerator: the ``Accelerator`` with the same objects prepared in the same order as when saving.
        path: the ``checkpoint-<step>`` folder.
        config: when given, the model config the checkpoint must have been written with
            (:func:`check_config_matches`).

    Returns:
        The loop state saved with it (including ``step``).

    Raises:
        CheckpointError: naming ``path`` when it is missing, incomplete, damaged, or from another model.
    """
    path = Path(path)
    check_checkpoint(path, verify_contents=True)
    if config is not None:
        check_config_matches(path, config)
    register_model_hooks(accelerator)
    accelerator.load_state(str(path))
    state_file = path / STATE_NAME if (path / STATE_NAME).is_file() else path / LEGACY_STATE_NAME
    return json.loads(state_file.read_text(encoding="utf-8"))


def average_checkpoints(paths: Iterable[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Averages model parameters over checkpoints, as fairseq's ``scripts/average_checkpoints.py`` does.

    Floating-point tensors are summed in float64 and divided by the count, then cast back to their dtype;
    integer buffers (counters) are taken from the last checkpoint.

    Args:
        paths: complete checkpoint folders (typically the last N of :func:`list_checkpoints`).

    Returns:
        Parameter name → averaged tensor, ready for :func:`load_weights_into`.

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
                f"checkpoint {path} has different parameters than {paths[0]}: {sorted(set(state) ^ set(last))[:5]}"
            )
        for key, tensor in state.items():
            if i and tensor.shape != last[key].shape:
                raise ValueError(f"checkpoint {path}: {key} has shape {tuple(tensor.shape)}, {paths[0]} has "
                                 f"{tuple(last[key].shape)}")
            if tensor.is_floating_point():
                sums[key] = sums[key] + tensor.double() if key in sums else tensor.double()
        last = state
    return {key: (sums[key] / len(paths)).to(t.dtype) if key in sums else t for key, t in last.items()}


__all__ = [
    "CHECKPOINT_PREFIX",
    "MARKER_NAME",
    "MODEL_WEIGHTS_NAME",
    "STATE_NAME",
    "CheckpointError",
    "ResumableState",
    "average_checkpoints",
    "check_checkpoint",
    "check_config_matches",
    "checkpoint_folders",
    "checkpoint_step",
    "clean_leftovers",
    "describe_os_error",
    "StorageError",
    "storage_errors",
    "storage_problem",
    "find_latest_checkpoint",
    "is_complete_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "model_state_dict",
    "load_weights_into",
    "read_checkpoint_weights",
    "read_weights_file",
    "register_model_hooks",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_json_durably",
]
