"""Tests of hf_rskip.training.run_folder: one run per folder, finished runs refused, outputs published whole."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_rskip.training.run_folder import OUTPUTS_NAME, RunFolder, RunFolderError

REPO = Path(__file__).resolve().parents[2]


def _publish(folder: RunFolder, files: dict[str, str], *, replace_previous: bool = True) -> list[str]:
    staging = folder.stage("test")
    for name, text in files.items():
        (staging / name).write_text(text)
    return folder.publish(staging, replace_previous=replace_previous)


def test_a_second_run_on_the_same_folder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with RunFolder(tmp_path / "out"):
        probe = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(REPO)!r})
            from hf_rskip.training.run_folder import RunFolder, RunFolderError
            try:
                RunFolder({str(tmp_path / 'out')!r}).open()
            except RunFolderError as err:
                print(err)
            """)
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        import os

        assert f"is in use by another run (process {os.getpid()})" in proc.stdout, proc.stdout + proc.stderr
    # released with the first run: the folder can be used again
    with RunFolder(tmp_path / "out"):
        pass


def test_a_finished_run_or_its_checkpoints_are_refused_without_a_decision(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunFolder(out) as folder:
        _publish(folder, {"config.json": "{}", "results.json": "{}"})
    with pytest.raises(RunFolderError, match=r"holds a finished run \(config.json, results.json\); pass "
                                             r"--overwrite_output_dir"):
        RunFolder(out).open()
    with RunFolder(out, overwrite=True):
        pass
    with RunFolder(out, resuming=True):
        pass
    other = tmp_path / "other"
    (other / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    with pytest.raises(RunFolderError, match=r"holds checkpoints \(checkpoint-4\); pass --resume_from_checkpoint "
                                             r"latest"):
        RunFolder(other).open()
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunFolderError, match=r"--output_dir .*file is a file, not a folder"):
        RunFolder(file).open()


def test_publishing_replaces_the_previous_run_and_only_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunFolder(out) as folder:
        _publish(folder, {"model.safetensors": "old", "test_predictions.txt": "old"})
    (out / "notes.txt").write_text("the user's own file")
    with RunFolder(out, overwrite=True) as folder:
        assert (out / "model.safetensors").read_text() == "old"  # intact until the new run publishes
        _publish(folder, {"model.safetensors": "new"})
        _publish(folder, {"results.json": "{}"}, replace_previous=False)
    assert (out / "model.safetensors").read_text() == "new"
    assert not (out / "test_predictions.txt").exists()  # the old run's, not replaced: removed
    assert (out / "notes.txt").read_text() == "the user's own file"  # never ours: kept
    assert json.loads((out / OUTPUTS_NAME).read_text())["files"] == ["model.safetensors", "results.json"]
    assert not list(out.glob(".staging-*"))


def test_a_failure_while_staging_leaves_the_old_outputs_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunFolder(out) as folder:
        _publish(folder, {"model.safetensors": "old"})
    with pytest.raises(OSError):
        with RunFolder(out, overwrite=True) as folder:
            staging = folder.stage("model")
            (staging / "model.safetensors").write_text("half")
            raise OSError(28, "No space left on device")
    assert (out / "model.safetensors").read_text() == "old"
    assert not list(out.glob(".staging-*"))  # the staging folder is cleaned up with the run


@pytest.mark.parametrize("script", ["run_translation.py", "run_image_classification.py"])
def test_an_output_dir_that_is_a_file_is_refused_at_parse_time_in_one_line(script: str, tmp_path: Path,
                                                                          capsys) -> None:
    from hf_rskip.training.cli import main
    from hf_rskip.training.image_classification import run_image_classification
    from hf_rskip.training.translation import run_translation

    file = tmp_path / "file"
    file.write_text("kept")
    run = run_translation if script == "run_translation.py" else run_image_classification
    with pytest.raises(SystemExit) as exit_info:
        main(run, script, ["--output_dir", str(file)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip() == f"{script}: error: --output_dir {str(file)!r}: is a file, " \
                                                         "not a folder", err
    assert file.read_text() == "kept"


def test_overwrite_says_which_checkpoints_it_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("checkpoint-4", "checkpoint-8"):
        (out / "checkpoints" / name).mkdir(parents=True)
    messages: list[str] = []
    with RunFolder(out, overwrite=True, log=messages.append) as folder:
        folder.clear_checkpoints()
    assert not (out / "checkpoints").exists()
    assert messages == [f"--overwrite_output_dir: removed the previous run's checkpoints in {out / 'checkpoints'} "
                        "(checkpoint-4, checkpoint-8)"]
