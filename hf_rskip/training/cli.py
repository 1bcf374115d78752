"""One exit convention for every script: what a user sees when a run cannot start, fails or is stopped.

* a bad option, file, checkpoint or output folder: one line ``<script>: error: <message>``, exit code 2, before
  any training (nothing written is lost);
* training diverged (a non-finite loss or gradient): the message and where the last good checkpoint is, exit 1;
* Ctrl-C: where the last checkpoint is and how to resume, exit 130 (no traceback);
* the disk filled up while saving: the message, exit 1 (what was published before is intact).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

BAD_INPUT_EXIT = 2
FAILED_EXIT = 1
INTERRUPTED_EXIT = 130


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command as a user would type it, recorded in results and model cards."""
    return f"python scripts/{script} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def main(run: Callable[..., Any], script: str, argv: Sequence[str] | None = None) -> Any:
    """Runs ``run(argv, command=...)`` under the exit convention above."""
    from ..data.errors import DataError
    from .arguments import ArgumentError
    from .checkpointing import CheckpointError, describe_os_error
    from .loop import NonFiniteLossError, TrainingInterrupted
    from .run_folder import RunFolderError

    _quiet_library_progress_bars()

    def fail(message: str, code: int) -> None:
        print(f"{script}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(code)

    try:
        return run(None if argv is None else list(argv), command=command_line(script, argv))
    except (ArgumentError, DataError, CheckpointError, RunFolderError) as err:
        fail(str(err), BAD_INPUT_EXIT)
    except NonFiniteLossError as err:
        fail(str(err), FAILED_EXIT)
    except TrainingInterrupted as err:
        where = (f"the last checkpoint is {err.last_checkpoint}; continue with --resume_from_checkpoint latest"
                 if err.last_checkpoint else "no checkpoint was saved (set --checkpointing_steps to keep progress)")
        fail(f"interrupted at step {err.step}; {where}", INTERRUPTED_EXIT)
    except KeyboardInterrupt:
        fail("interrupted before training started; nothing was written", INTERRUPTED_EXIT)
    except OSError as err:
        fail(f"{describe_os_error(err)}; files published before this are intact", FAILED_EXIT)
    return None


def _quiet_library_progress_bars() -> None:
    """One progress bar (the loop's): not one per ``datasets.map`` call or per saved weights file."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()


__all__ = ["BAD_INPUT_EXIT", "FAILED_EXIT", "INTERRUPTED_EXIT", "command_line", "main"]
