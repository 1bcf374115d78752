"""What every training script shares (hf_rskip.training.job and its loop), tested on both: an exact resume after
SIGKILL, checkpoints that are model folders, the output folder's rules, resuming a finished run, non-finite losses,
a changed model on resume, one run per folder, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from hf_rskip.training.checkpointing import list_checkpoints
from hf_rskip.training.cli import main
from hf_rskip.training.image_classification import run_image_classification
from hf_rskip.training.translation import run_translation

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

TASKS = {
    "translation": dict(
        script="run_translation.py", run=run_translation, auto="AutoModelForSeq2SeqLM",
        tiny=["--preset", "tiny", "--builtin_num_train", "300", "--builtin_num_valid", "8", "--builtin_num_test", "8",
              "--vocab_size", "200", "--max_tokens", "384", "--num_beams", "1", "--num_warmup_steps", "4",
              "--logging_steps", "2", "--eval_steps", "no", "--threads", "1"],
        diverge=["--residual_scheme", "xskip", "--skip_lambda", "1e30"],
        other_lambda=["--skip_lambda", "3"]),
    "image": dict(
        script="run_image_classification.py", run=run_image_classification, auto="AutoModelForImageClassification",
        tiny=["--depth", "8", "--hidden_sizes", "4", "8", "8", "--per_device_train_batch_size", "16", "--image_size", "8",
              "--max_train_samples", "96", "--max_eval_samples", "32", "--logging_steps", "2", "--eval_steps", "no",
              "--threads", "1"],
        # (xskip's λ·x does not overflow here: every stage's pre-activation BatchNorm rescales it)
        diverge=["--learning_rate", "1e38"],
        other_lambda=["--skip_lambda", "3"]),
}


def run_in_process(task: str, *argv: str):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    spec = TASKS[task]
    return main(spec["run"], spec["script"], [*spec["tiny"], *argv])


def run_script(task: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    spec = TASKS[task]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / spec["script"]), *spec["tiny"], *argv],
                          capture_output=True, text=True, timeout=400, env=ENV, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def weights_equal(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("task", list(TASKS))
def test_sigkill_then_resume_latest_gives_the_weights_of_an_uninterrupted_run(task: str, tmp_path: Path) -> None:
    args = ["--max_train_steps", "24", "--checkpointing_steps", "4", "--seed", "7"]
    full = tmp_path / "full"
    run_script(task, "--output_dir", str(full), *args)

    part = tmp_path / "part"
    spec = TASKS[task]
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / spec["script"]), *spec["tiny"],
                             "--output_dir", str(part), *args], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not list_checkpoints(part / "checkpoints"):  # only sealed checkpoints count
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (part / "results.json").exists(), "the run finished before the kill; the test proves nothing"
    killed_at = [p.name for p in list_checkpoints(part / "checkpoints")]
    assert killed_at and killed_at[-1] != "checkpoint-24"

    run_script(task, "--output_dir", str(part), *args, "--resume_from_checkpoint", "latest")
    results = json.loads((part / "results.json").read_text())
    full_results = json.loads((full / "results.json").read_text())
    assert results["resumed_from"].endswith(killed_at[-1]) and results["train_steps"] == 24
    weights_equal(full, part)
    unit = "tokens" if task == "translation" else "images"
    # the throughput counts of the whole run were kept in the checkpoints
    assert results[f"train_{unit}_per_second"] > 0 and results["train_loss"] == pytest.approx(full_results["train_loss"])
    key = "test_bleu" if task == "translation" else "eval_accuracy"
    assert results[key] == full_results[key]


@pytest.mark.parametrize("task", list(TASKS))
def test_checkpoints_load_as_models_and_a_finished_run_resumes_without_damage(task: str, tmp_path: Path) -> None:
    import transformers

    import hf_rskip  # noqa: F401

    out = tmp_path / "out"
    first = run_in_process(task, "--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2")
    for step in (2, 4):
        model = getattr(transformers, TASKS[task]["auto"]).from_pretrained(out / "checkpoints" / f"checkpoint-{step}")
        assert type(model).__module__.startswith("hf_rskip.models")
    if task == "translation":  # complete for a pipeline: the tokenizer is in every checkpoint
        assert (out / "checkpoints" / "checkpoint-2" / "tokenizer.json").is_file()
    else:
        assert (out / "checkpoints" / "checkpoint-2" / "preprocessor_config.json").is_file()
    again = run_in_process(task, "--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
                           "--resume_from_checkpoint", "latest")
    assert again["train_loss"] == first["train_loss"]  # kept from the checkpoint, not NaN
    assert json.loads((out / "results.json").read_text())["train_loss"] == first["train_loss"]


@pytest.mark.parametrize("task", list(TASKS))
def test_a_finished_run_is_never_lost(task: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # run into it without a decision: refused before anything is written
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2")
    assert exit_info.value.code == 2 and "holds a finished run" in capsys.readouterr().err
    # a run that fails (here: it diverges) changes nothing
    with pytest.raises(SystemExit):
        run_in_process(task, "--output_dir", str(out), "--overwrite_output_dir", *TASKS[task]["diverge"],
                       "--max_train_steps", "3")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".hf_rskip")}
    assert after == {k: v for k, v in before.items() if not k.startswith(".hf_rskip")}
    # with --overwrite_output_dir a successful run replaces it
    run_in_process(task, "--output_dir", str(out), "--overwrite_output_dir", "--max_train_steps", "3")
    assert json.loads((out / "results.json").read_text())["train_steps"] == 3


@pytest.mark.parametrize("task", list(TASKS))
def test_a_full_disk_while_publishing_the_model_exits_1_and_keeps_the_finished_run(task: str, tmp_path: Path,
                                                                                   capsys, monkeypatch) -> None:
    """safetensors reports a full disk as a SafetensorError, not an OSError: it reads as a full disk, exit 1, one
    line, and the finished run in the folder is as it was."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "out"
    run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".hf_rskip")}
    capsys.readouterr()

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(out), "--overwrite_output_dir", "--max_train_steps", "2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("error:") == 1 and "Traceback" not in err, err
    assert "could not write the trained model: no space left on the device while writing" in err, err
    assert "files published before this are intact" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".hf_rskip")}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]


@pytest.mark.parametrize("task", list(TASKS))
def test_weights_that_overflow_after_the_last_step_are_never_published(task: str, tmp_path: Path, capsys,
                                                                       monkeypatch) -> None:
    """No checkpoint after the last step and weights that are no longer finite: exit 1, nothing published."""
    from hf_rskip.training import job

    real = job.model_state_dict

    def overflowed(accelerator, model):
        state = real(accelerator, model)
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = torch.full_like(state[name], float("inf"))
        return state

    monkeypatch.setattr(job, "model_state_dict", overflowed)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "the trained weights are not finite" in err and "nothing was published" in err
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("task", list(TASKS))
def test_a_failing_final_evaluation_says_where_the_saved_model_is(task: str, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    spec_job = {"translation": "hf_rskip.training.translation.TranslationJob",
                "image": "hf_rskip.training.image_classification.ImageClassificationJob"}[task]
    module_name, class_name = spec_job.rsplit(".", 1)
    import importlib

    cls = getattr(importlib.import_module(module_name), class_name)

    def broken(self, model, folder):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(cls, "final_evaluation", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2")
    assert f"the final evaluation failed; the trained model is saved in {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize("task", list(TASKS))
def test_a_diverging_run_stops_with_a_message_and_saves_no_non_finite_weights(task: str, tmp_path: Path,
                                                                              capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(out), *TASKS[task]["diverge"], "--max_train_steps", "6",
                       "--checkpointing_steps", "1")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err
    assert " is nan at step " in err or " is inf at step " in err, err
    assert "training stopped and nothing after it was saved" in err
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()
    for checkpoint in list_checkpoints(out / "checkpoints"):  # whatever was saved before is finite
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "model.safetensors")).values())


@pytest.mark.parametrize("task", list(TASKS))
def test_resuming_with_another_lambda_is_an_error_naming_it(task: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    run_in_process(task, "--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
                       "--resume_from_checkpoint", "latest", *TASKS[task]["other_lambda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "was written by a different model (skip_lambda: 2 in the checkpoint, 3 now)" in err, err


def test_resuming_with_another_vocabulary_size_is_an_error_naming_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    run_in_process("translation", "--output_dir", str(out), "--max_train_steps", "2", "--checkpointing_steps", "2")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process("translation", "--output_dir", str(out), "--max_train_steps", "4", "--checkpointing_steps", "2",
                       "--resume_from_checkpoint", "latest", "--vocab_size", "300")
    assert exit_info.value.code == 2
    assert "--vocab_size: 200 in the checkpoint, 300 now" in capsys.readouterr().err


@pytest.fixture
def ctrl_c_delivered():
    """Ctrl-C as a terminal delivers it, for the test's duration. A shell without job control (a script) starts a
    background job (`cmd &`) with SIGINT ignored, and an ignored SIGINT stays ignored in every process started from
    it, so a test run launched that way would see no Ctrl-C at all: Python's handler is put back here (a process
    this one starts then gets the default action at exec, and Python installs its own handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_delivered")
def test_two_runs_on_one_folder_and_ctrl_c(tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "first.stderr"
    spec = TASKS["translation"]
    # stderr goes to a file, not a pipe nobody reads until the end (a full pipe would block the run's writes);
    # faulthandler lets a run that does not stop be asked where it is (SIGABRT below)
    with open(log, "w", encoding="utf-8") as stderr:
        first = subprocess.Popen([sys.executable, str(REPO / "scripts" / spec["script"]), *spec["tiny"],
                                  "--output_dir", str(out), "--max_train_steps", "100000", "--checkpointing_steps",
                                  "3"], env={**ENV, "PYTHONFAULTHANDLER": "1"}, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(out / "checkpoints"):
            assert first.poll() is None, log.read_text(encoding="utf-8")[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_script("translation", "--output_dir", str(out), "--max_train_steps", "2",
                            "--resume_from_checkpoint", "latest", check=False)
        assert second.returncode == 2
        assert f"is in use by another run (process {first.pid})" in second.stderr
        first.send_signal(signal.SIGINT)
        try:
            first.wait(timeout=120)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            first.wait(timeout=30)
            raise AssertionError("Ctrl-C did not stop the run within 120 s; where it was:\n"
                                 + log.read_text(encoding="utf-8")[-6000:]) from None
    finally:
        if first.poll() is None:
            first.kill()
    err = log.read_text(encoding="utf-8")
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = list_checkpoints(out / "checkpoints")[-1]
    assert f"the last checkpoint is {last}; continue with --resume_from_checkpoint latest" in err


def test_sentence_batches_and_options_from_a_json_file(tmp_path: Path) -> None:
    AcceleratorState._reset_state(True)
    results = main(run_translation, "run_translation.py",
                   [*[a for a in TASKS["translation"]["tiny"] if a not in ("--max_tokens", "384")],
                    "--output_dir", str(tmp_path / "a"), "--max_train_steps", "3", "--per_device_train_batch_size",
                    "32"])
    assert results["train_steps"] == 3 and results["options"]["per_device_train_batch_size"] == 32
    assert results["options"]["max_tokens"] is None
    file = tmp_path / "args.json"
    file.write_text(json.dumps({"output_dir": str(tmp_path / "b"), "max_train_steps": 2, "preset": "tiny",
                                "builtin_num_train": 200, "vocab_size": 200, "eval_steps": "no", "threads": "1"}))
    AcceleratorState._reset_state(True)
    results = main(run_translation, "run_translation.py", [str(file)])
    assert results["train_steps"] == 2 and (tmp_path / "b" / "model.safetensors").is_file()


@pytest.mark.parametrize("task, model_options", [
    ("translation", ["--residual_scheme", "xskip", "--skip_lambda", "2", "--encoder_layers", "6", "--decoder_layers",
                     "6"]),
    ("image", ["--residual_scheme", "xskip", "--skip_lambda", "2", "--depth", "32"]),
])
def test_fp16_meets_a_model_that_overflows_it_and_is_refused_before_training(task, model_options, tmp_path,
                                                                            capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(tmp_path / "out"), *model_options, "--mixed_precision", "fp16",
                       "--max_train_steps", "2")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--mixed_precision fp16: residual_scheme='xskip' with skip_lambda=2" in err and "Use bf16" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_damaged_model_folder_is_named_in_one_line(task, tmp_path: Path, capsys) -> None:
    """--model_name_or_path on a folder whose weights were damaged (header bytes overwritten, or the file cut short)
    names the weights file; a broken config.json is reported as a config problem even beside a working tokenizer."""
    run_in_process(task, "--output_dir", str(tmp_path / "trained"), "--max_train_steps", "1")
    capsys.readouterr()
    weights = tmp_path / "trained" / "model.safetensors"
    intact = weights.read_bytes()
    damages = {"header": intact[:8] + b"{" * 40 + intact[48:], "truncated": intact[: len(intact) // 2]}
    for damage, data in damages.items():
        weights.write_bytes(data)
        with pytest.raises(SystemExit) as exit_info:
            run_in_process(task, "--output_dir", str(tmp_path / damage), "--model_name_or_path",
                           str(tmp_path / "trained"), "--max_train_steps", "1")
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, (damage, err)
        assert f"{weights} cannot be read as safetensors (damaged or truncated)" in err, (damage, err)
    weights.write_bytes(intact)
    (tmp_path / "trained" / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(tmp_path / "config"), "--model_name_or_path",
                       str(tmp_path / "trained"), "--max_train_steps", "1")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "config" in err and "tokenizer" not in err and "config.json" in err, err


@pytest.mark.parametrize("task, option", [("image", "--model_name_or_path"), ("translation", "--tokenizer_name"),
                                          ("translation", "--model_name_or_path")])
def test_custom_code_in_a_folder_needs_consent_in_every_loader(task, option, tmp_path: Path, capsys) -> None:
    """The siblings of --model_name_or_path in run_translation.py: the image script's model and the translation
    script's tokenizer. Without --trust_remote_code: exit 2, one line naming the option and the flag; no code ran."""
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "someones_model", "auto_map": {"AutoConfig": "some.SomeConfig"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SomeTokenizer", "auto_map": {"AutoTokenizer": ["some.SomeTokenizer", None]}}))
    (folder / "some.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(SystemExit) as exit_info:
        run_in_process(task, "--output_dir", str(tmp_path / "out"), option, str(folder), "--max_train_steps", "1")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert option in err and "pass --trust_remote_code" in err, err
    assert not marker.exists()


def test_jobs_in_one_process_do_not_inherit_each_others_precision(tmp_path: Path) -> None:
    """A notebook (or a test session) that runs a job with --mixed_precision bf16 and then one without it gets the
    second job's precision, not Accelerate's 'already initialized' error."""
    spec = TASKS["translation"]
    first = main(spec["run"], spec["script"], [*spec["tiny"], "--output_dir", str(tmp_path / "a"),
                                               "--mixed_precision", "bf16", "--max_train_steps", "1"])
    second = main(spec["run"], spec["script"], [*spec["tiny"], "--output_dir", str(tmp_path / "b"),
                                                "--mixed_precision", "no", "--max_train_steps", "1",
                                                "--gradient_accumulation_steps", "2"])
    assert first["options"]["mixed_precision"] == "bf16" and second["options"]["mixed_precision"] == "no"
    assert second["train_steps"] == 1


def test_mixed_precision_auto_is_bf16_only_where_the_hardware_runs_it_fast(monkeypatch) -> None:
    from hf_rskip.training import job

    for fast in (True, False):
        monkeypatch.setattr(job, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert job.resolve_mixed_precision("auto", "cpu") == ("bf16" if fast else "no")
        assert job.resolve_mixed_precision("auto", "cuda") == "bf16"
        for given in ("no", "fp16", "bf16"):  # an explicit choice stands
            assert job.resolve_mixed_precision(given, "cpu") == given


@pytest.mark.parametrize("fast", [True, False])
def test_a_run_records_the_precision_auto_chose_and_its_card_names_it(fast, tmp_path: Path, monkeypatch) -> None:
    from hf_rskip.training import job

    monkeypatch.setattr(job, "cpu_has_fast_bf16", lambda: fast)
    results = run_in_process("translation", "--output_dir", str(tmp_path / "out"), "--mixed_precision", "auto",
                             "--max_train_steps", "1")
    expected = "bf16" if fast else "no"
    assert results["mixed_precision"] == expected and results["options"]["mixed_precision"] == "auto"
    model_name = job.cpu_model_name()  # run times depend on the CPU: results name it where the system does
    assert results["hardware"].startswith("1 × cpu (") and (model_name is None or model_name in results["hardware"])
    assert f"mixed precision `{expected}`" in (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def test_bf16_on_a_cpu_without_fast_bf16_warns_and_names_the_option(tmp_path: Path, monkeypatch, caplog) -> None:
    """An explicit --mixed_precision bf16 is kept (it is correct, only slow), with a warning that says why and what
    to pass instead; on a CPU with fast kernels there is no warning."""
    from hf_rskip.training import job

    for fast in (False, True):
        monkeypatch.setattr(job, "cpu_has_fast_bf16", lambda fast=fast: fast)
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_rskip.training.job"):
            results = run_in_process("translation", "--output_dir", str(tmp_path / f"out-{fast}"),
                                     "--mixed_precision", "bf16", "--max_train_steps", "1")
        assert results["mixed_precision"] == "bf16"
        warnings = [r.getMessage() for r in caplog.records if "no fast bfloat16 kernels" in r.getMessage()]
        assert len(warnings) == (0 if fast else 1), warnings
        if warnings:
            assert warnings[0].startswith("--mixed_precision bf16:") and "--mixed_precision auto or no" in warnings[0]


def test_the_multi30k_recipe_asks_for_bf16_only_where_it_is_fast() -> None:
    from hf_rskip.data.recipes import recipe_hparams

    assert recipe_hparams("local_multi30k_en_de")["mixed_precision"] == "auto"


@pytest.mark.compile
def test_translation_trains_with_torch_compile(tmp_path: Path) -> None:
    """--torch_compile trains the compiled model as eager trains it (no dropout, so both see the same numbers):
    the same loss and, to float tolerance, the same weights. Inductor: about 1-2 minutes on a 2-core CPU."""
    import torch._dynamo

    args = ["--max_train_steps", "4", "--residual_scheme", "rskip_ln", "--skip_lambda", "2", "--dropout", "0",
            "--seed", "3", "--checkpointing_steps", "4"]
    eager = run_in_process("translation", "--output_dir", str(tmp_path / "eager"), *args)
    torch._dynamo.reset()
    try:
        compiled = run_in_process("translation", "--output_dir", str(tmp_path / "compiled"), *args, "--torch_compile")
    finally:
        torch._dynamo.reset()
    assert compiled["train_steps"] == 4 and compiled["options"]["torch_compile"] is True
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    first, second = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("eager", "compiled"))
    assert first.keys() == second.keys()  # no '_orig_mod.' prefix: the saved folder loads the trained weights
    checkpoint = load_file(str(tmp_path / "compiled" / "checkpoints" / "checkpoint-4" / "model.safetensors"))
    assert checkpoint.keys() == first.keys()  # and so does every checkpoint
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-3, atol=1e-4, msg=key)
