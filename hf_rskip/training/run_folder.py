"""The output folder of a run: one run at a time, nothing finished overwritten by accident, outputs published whole.

Rules (transformers' ``--overwrite_output_dir`` convention):

* a folder that holds a finished run (its model or ``results.json``) or checkpoints is refused unless the run
  resumes (``--resume_from_checkpoint``) or ``--overwrite_output_dir`` is given;
* the folder is locked (``fcntl.flock`` on ``.hf_rskip.lock``) while a run uses it; a second run is refused with the
  first one's process id, and the lock goes away with the process, even after ``kill -9``;
* final outputs are written into a staging folder inside the output folder and moved into place only when the run
  has produced them; a failure on the way (a bad option, an error, a full disk) leaves the previous run's files
  as they were. The files a run published are listed in ``.hf_rskip_outputs.json``, so the next publication
  removes the old run's files that it does not replace, and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpointing import checkpoint_folders, describe_os_error, fsync_path, write_json_durably

LOCK_NAME = ".hf_rskip.lock"
OUTPUTS_NAME = ".hf_rskip_outputs.json"
STAGING_PREFIX = ".staging-"


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked; the message names it and what to do."""


def _lock_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


class RunFolder:
    """The output folder of one run (call :meth:`open` on the main process only).

    Args:
        path: the ``--output_dir``.
        overwrite: ``--overwrite_output_dir`` was given.
        resuming: the run resumes from a checkpoint.
        checkpoint_dir: where the run's checkpoints live (default: ``path / "checkpoints"``).
        log: where messages about removed files go.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, resuming: bool = False,
                 checkpoint_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.resuming = resuming
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else self.path / "checkpoints"
        self.log = log
        self._lock_file: Any = None

    # -- opening ----------------------------------------------------------------------------------

    def open(self) -> "RunFolder":
        """Creates and locks the folder, and checks that this run may use it (see the module's rules)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"--output_dir {self.path} is a file, not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"--output_dir {self.path} cannot be created: {describe_os_error(err)}") from None
        self._lock()
        try:
            self._check_reuse()
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK_NAME
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RunFolderError(f"--output_dir {self.path} is in use by another run (process "
                                 f"{_lock_owner(lock_path)}); wait for it to finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _check_reuse(self) -> None:
        finished = self.published_files() or [name for name in ("results.json", "config.json", "model.safetensors")
                                               if (self.path / name).is_file()]
        checkpoints = checkpoint_folders(self.checkpoint_dir)
        if self.resuming or self.overwrite:
            return
        if finished:
            raise RunFolderError(
                f"--output_dir {self.path} holds a finished run ({', '.join(sorted(finished)[:4])}); pass "
                "--overwrite_output_dir to replace it (it stays intact until the new run has succeeded) or choose "
                "another folder")
        if checkpoints:
            raise RunFolderError(
                f"--output_dir {self.path} holds checkpoints ({', '.join(p.name for p in checkpoints[-3:])}); pass "
                "--resume_from_checkpoint latest to continue that run, or --overwrite_output_dir to start over")

    def clear_checkpoints(self) -> None:
        """Starting over with ``--overwrite_output_dir``: the old run's checkpoints must not be resumed or
        averaged; they are removed (and the removal is reported)."""
        folders = checkpoint_folders(self.checkpoint_dir)
        if self.checkpoint_dir.is_dir() and (folders or any(self.checkpoint_dir.iterdir())):
            shutil.rmtree(self.checkpoint_dir)
            self.log(f"--overwrite_output_dir: removed the previous run's checkpoints in {self.checkpoint_dir} "
                     f"({', '.join(p.name for p in folders) or 'no complete checkpoint'})")

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        for staging in self.path.glob(f"{STAGING_PREFIX}{os.getpid()}-*"):
            shutil.rmtree(staging, ignore_errors=True)
        self.close()

    # -- publishing -------------------------------------------------------------------------------

    def published_files(self) -> list[str]:
        """The files the last publication in this folder wrote (relative names)."""
        record = self.path / OUTPUTS_NAME
        if not record.is_file():
            return []
        try:
            return list(json.loads(record.read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError):
            return []

    def stage(self, name: str) -> Path:
        """A new, empty staging folder inside the output folder (same file system, so moves are renames)."""
        staging = self.path / f"{STAGING_PREFIX}{os.getpid()}-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return staging

    def publish(self, staging: Path, *, replace_previous: bool) -> list[str]:
        """Moves every file of ``staging`` into the output folder.

        Args:
            staging: a folder from :meth:`stage`, complete.
            replace_previous: the previous run's published files that ``staging`` does not hold are removed
                (the first publication of a run); otherwise they are kept (a later publication of the same run).

        Returns:
            The published files (relative names).
        """
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        for name in files:
            fsync_path(staging / name)
        previous = self.published_files()
        for name in files:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        kept = [] if replace_previous else [name for name in previous if name not in files]
        if replace_previous:
            for name in previous:
                if name not in files and (self.path / name).is_file():
                    (self.path / name).unlink()
        write_json_durably(self.path / OUTPUTS_NAME, {"files": sorted(set(files) | set(kept))})
        fsync_path(self.path)
        shutil.rmtree(staging, ignore_errors=True)
        return files


__all__ = ["LOCK_NAME", "OUTPUTS_NAME", "RunFolder", "RunFolderError"]
