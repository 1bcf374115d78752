"""End-to-end tests of scripts/run_translation.py: bad input, the built-in task, checkpoint averaging, the saved
folder (Auto classes, pipeline, model card, TensorBoard), consent for remote code, DDP, Seq2SeqTrainer, real data.
What both scripts share (exact resume, the output folder's rules, non-finite losses) is in test_job.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_rskip.training.checkpointing import list_checkpoints, read_checkpoint_weights

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run_translation.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}

# A small, fast run of the built-in task (the defaults train for ~3 minutes; tests need seconds).
TINY = ["--preset", "tiny", "--builtin_num_train", "400", "--builtin_num_valid", "16", "--builtin_num_test", "16",
        "--vocab_size", "200", "--max_tokens", "256", "--num_beams", "2", "--num_warmup_steps", "4",
        "--logging_steps", "2", "--per_device_eval_batch_size", "16", "--threads", "1"]


def run_script(*args: str, timeout: int = 300, check: bool = True, launcher: list[str] | None = None):
    cmd = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-6000:]}")
    return proc


def _free_port() -> int:
    with socket.socket() as sock:  # other test runs may share the machine: no fixed port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _main():
    from hf_rskip.training.cli import main
    from hf_rskip.training.translation import run_translation

    return lambda argv: main(run_translation, "run_translation.py", argv)


# ------------------------------------------------------------------------------------------------
# Bad input: a clear message naming the file/line/key/option and exit code 2, before any training.
# ------------------------------------------------------------------------------------------------

def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    "case",
    ["line_counts", "utf8", "json_key", "missing_file", "options", "lambda", "resume", "grad_norms", "no_lang",
     "blank_validation", "empty_test", "folder_as_file", "max_tokens", "optim"],
)
def test_bad_input_fails_before_training_with_a_clear_message(case: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    lang = ["--source_lang", "en", "--target_lang", "de"]
    if case == "line_counts":
        _write(tmp_path / "train.en", "a\nb\nc\n")
        _write(tmp_path / "train.de", "x\ny\n")
        argv, expected = ["--train_file", str(tmp_path / "train"), *lang], [
            f"{tmp_path / 'train.en'} has 3 lines", f"{tmp_path / 'train.de'} has 2 lines"]
    elif case == "utf8":
        _write(tmp_path / "bad.en", b"fine\nbroken \xff here\n")
        _write(tmp_path / "bad.de", "gut\nkaputt\n")
        argv, expected = ["--train_file", str(tmp_path / "bad"), *lang], [
            f"{tmp_path / 'bad.en'}: line 2 is not valid UTF-8"]
    elif case == "json_key":
        _write(tmp_path / "train.jsonl", '{"translation": {"en": "a", "de": "b"}}\n{"translation": {"en": "c"}}\n')
        argv, expected = ["--train_file", str(tmp_path / "train.jsonl"), *lang], [
            "train.jsonl: line 2", "no key 'de'"]
    elif case == "missing_file":
        argv, expected = ["--train_file", str(tmp_path / "nope"), *lang], [
            "no 'en' side for prefix", str(tmp_path / "nope.en")]
    elif case == "options":
        argv, expected = ["--checkpointing_steps", "none", "--average_checkpoints", "3"], [
            "--average_checkpoints 3: needs checkpoints"]
    elif case == "lambda":
        argv, expected = ["--residual_scheme", "rskip_ln", "--skip_lambda", "1.5"], ["--skip_lambda", "integer >= 1"]
    elif case == "optim":
        argv, expected = ["--optim", "lion"], ["--optim", "invalid choice: 'lion'", "adamw", "adafactor"]
    elif case == "grad_norms":
        argv, expected = ["--log_grad_norms_every", "5"], ["--log_grad_norms_every 5: needs --with_tracking"]
    elif case == "resume":
        argv, expected = ["--resume_from_checkpoint", str(tmp_path / "checkpoint-7")], [
            "--resume_from_checkpoint", "checkpoint-7 does not exist"]
    elif case == "no_lang":
        _write(tmp_path / "t.en", "a\n")
        _write(tmp_path / "t.de", "b\n")
        argv, expected = ["--train_file", str(tmp_path / "t")], ["--source_lang and --target_lang are required"]
    elif case in ("blank_validation", "empty_test", "max_tokens"):
        _write(tmp_path / "t.en", "a small dog runs .\ntwo cats sit .\n")
        _write(tmp_path / "t.de", "ein kleiner hund rennt .\nzwei katzen sitzen .\n")
        _write(tmp_path / "blank.en", "\n \n\n")
        _write(tmp_path / "blank.de", "\n\n \n")
        _write(tmp_path / "empty.en", "")
        _write(tmp_path / "empty.de", "")
        argv = ["--train_file", str(tmp_path / "t"), *lang]
        if case == "blank_validation":  # found before training, not after it
            argv, expected = argv + ["--validation_file", str(tmp_path / "blank")], [
                "--validation_file", "blank holds no pair with text on both sides"]
        elif case == "empty_test":
            argv, expected = argv + ["--test_file", str(tmp_path / "empty")], [
                "--test_file", "empty holds no pair with text on both sides"]
        else:
            argv, expected = argv + ["--max_tokens", "4"], [
                "--max_tokens 4: 1 training pairs are longer than a whole batch", "raise --max_tokens to at least"]
    else:
        (tmp_path / "train").mkdir()
        argv, expected = ["--train_file", str(tmp_path / "train"), *lang], [
            "--train_file", "is a folder; give a file, or the prefix P of P.<lang> files"]
    with pytest.raises(SystemExit) as exit_info:
        _main()(["--output_dir", str(out), *TINY, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("run_translation.py: error: ")
    for text in expected:
        assert text in err, err
    assert not (out / "model.safetensors").exists() and not (out / "checkpoints").exists()


def test_empty_pairs_are_dropped_and_long_ones_truncated_and_counted(tmp_path: Path) -> None:
    pairs = [("a small dog runs .", "ein kleiner hund rennt ."), ("", "leer"), ("two cats sit .", "  "),
             ("the red house is big .", "das rote haus ist groß ."),
             (" ".join(["word"] * 40), " ".join(["wort"] * 40))] * 8
    (tmp_path / "d.en").write_text("\n".join(p[0] for p in pairs) + "\n", encoding="utf-8")
    (tmp_path / "d.de").write_text("\n".join(p[1] for p in pairs) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_script("--output_dir", str(out), "--train_file", str(tmp_path / "d"), "--validation_file",
               str(tmp_path / "d"), "--source_lang", "en", "--target_lang", "de", *TINY,
               "--max_source_length", "12", "--max_target_length", "12", "--max_train_steps", "2",
               "--eval_steps", "none", "--max_eval_samples", "8")
    results = json.loads((out / "results.json").read_text())
    assert results["train_dropped_empty"] == 16 and results["train_pairs"] == 24
    assert results["train_truncated"] == 8
    # --max_eval_samples selects first (8 rows), then the 4 empty ones among them are dropped.
    assert results["validation_dropped_empty"] == 4
    assert results["validation_pairs"] == 4 and results["eval_num_sentences"] == 4


# ------------------------------------------------------------------------------------------------
# One trained folder shared by the tests that inspect what a run leaves behind.
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("builtin") / "out"
    proc = run_script("--output_dir", str(out), *TINY, "--max_train_steps", "12", "--checkpointing_steps", "4",
                      "--average_checkpoints", "2", "--eval_steps", "6", "--with_tracking",
                      "--log_grad_norms_every", "5",
                      "--hub_model_id", "someone/rskip-tiny")
    return out, proc


def test_run_writes_results_predictions_checkpoints_and_tensorboard(trained) -> None:
    out, proc = trained
    results = json.loads((out / "results.json").read_text())
    for key in ("eval_bleu", "eval_chrf", "test_bleu", "test_chrf", "eval_bleu_signature", "test_bleu_signature",
                "eval_chrf_signature", "train_tokens_per_second", "train_runtime"):
        assert key in results, key
    # the built-in task is whitespace-tokenized by construction: BLEU on its tokens, and no sacreBLEU warning
    assert results["test_bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:none")
    assert "forgot to detokenize" not in proc.stderr + proc.stdout
    assert results["train_steps"] == 12 and results["averaged_checkpoints"] == ["checkpoint-8", "checkpoint-12"]
    assert results["residual_scheme"] == "rskip_ln" and results["skip_lambda"] == 2
    assert results["train_tokens_per_second"] > 0
    assert len((out / "test_predictions.txt").read_text().splitlines()) == 16
    assert len((out / "eval_predictions.txt").read_text().splitlines()) == 16
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"checkpoint-{s}" for s in (4, 8, 12)]
    assert "step 6: eval_nll=" in proc.stdout and "eval_bleu=" in proc.stdout  # validation during training
    events = list((out / "runs").rglob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 100 for e in events), events  # no empty events file beside the real one
    # --log_grad_norms_every 5: per-layer gradient norms and their per-stack ratios at steps 0, 5 and 10
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(out / "runs")).Reload()  # the scalars; hparams go to a subfolder
    scalars = logged.Tags()["scalars"]
    for tag in ("grad_norm/encoder.layers.0", "grad_norm/decoder.layers.1",
                "grad_norm_summary/decoder/first_over_last"):
        assert tag in scalars, (tag, scalars)
    steps = [e.step for e in logged.Scalars("grad_norm/encoder.layers.0")]
    assert steps == [0, 5, 10]
    # evaluation and test figures are namespaced, the final (averaged) scores are logged, the epoch moves
    for tag in ("eval/bleu", "eval/nll", "test/bleu", "test/chrf", "train/loss", "train/nll", "train/epoch",
                "train/tokens_per_second"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in logged.Scalars("eval/bleu")] == [6, 12] and logged.Scalars("test/bleu")[0].step == 12
    assert logged.Scalars("test/bleu")[0].value == pytest.approx(results["test_bleu"], rel=1e-5)
    assert logged.Scalars("train/epoch")[-1].value > 0
    assert re.search(r"loss=\d", proc.stderr) and "tokens_per_second=" in proc.stderr  # the progress bar


def test_saved_weights_are_the_average_of_the_last_checkpoints(trained) -> None:
    out, _ = trained
    saved = load_file(str(out / "model.safetensors"))
    last = [read_checkpoint_weights(out / "checkpoints" / f"checkpoint-{s}") for s in (8, 12)]
    for key, value in saved.items():
        if key in last[0] and value.is_floating_point():
            torch.testing.assert_close(value, (last[0][key] + last[1][key]) / 2, rtol=1e-6, atol=1e-7, msg=key)
    assert not torch.equal(saved["model.shared.weight"], last[1]["model.shared.weight"])


def test_folder_loads_with_auto_classes_pipeline_and_remote_code(trained) -> None:
    out, _ = trained
    import hf_rskip  # noqa: F401
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "RSkipForConditionalGeneration"
    assert model.generation_config.num_beams == 2
    assert model.generation_config.bad_words_ids == [[tokenizer.pad_token_id]]
    translator = pipeline("rskip-translation", model=str(out))
    assert isinstance(translator("the dog sees a cat .")[0]["translation_text"], str)
    # Where the package is not importable, the folder's own code loads it (remote code).
    probe = textwrap.dedent(
        f"""
        import sys
        sys.modules['hf_rskip'] = None  # `import hf_rskip` fails, wherever the package is installed
        from transformers import AutoModelForSeq2SeqLM
        m = AutoModelForSeq2SeqLM.from_pretrained({str(out)!r}, trust_remote_code=True)
        print(type(m).__module__, m.config.residual_scheme)
        """
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd="/",
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transformers_modules" in proc.stdout and "rskip_ln" in proc.stdout


def test_model_card_has_model_index_and_its_snippet_runs(trained) -> None:
    from huggingface_hub import ModelCard

    out, _ = trained
    card = ModelCard.load(out / "README.md")
    results = json.loads((out / "results.json").read_text())
    index = {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}
    assert index[("test", "sacrebleu")].metric_value == round(results["test_bleu"], 2)
    assert index[("validation", "chrf")].metric_value == round(results["eval_chrf"], 2)
    assert index[("test", "sacrebleu")].metric_config == results["test_bleu_signature"]
    assert card.data.model_name == "someone/rskip-tiny" and card.data.license == "unknown"
    assert card.data.datasets is None  # generated data, not a Hub dataset
    assert {"rskip_ln", "translation"} <= set(card.data.tags)
    assert "| rskip_ln | 2 | layer |" in card.text and "python scripts/run_translation.py" in card.text
    assert "`inverse_sqrt` schedule with 4 warm-up steps" in card.text and "(0 epochs)" not in card.text
    assert f"- test BLEU: `{results['test_bleu_signature']}`" in card.text  # each signature says what it signs
    assert "license: not given by the trainer" in card.text
    # The card's code blocks (the pipeline; remote code), pointed at the local folder, run.
    snippets = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert len(snippets) == 2
    assert str(out) not in "".join(snippets)  # no local absolute path: the Hub id names the model
    assert 'AutoTokenizer.from_pretrained("someone/rskip-tiny", trust_remote_code=True)' in snippets[1]
    for snippet, expected in zip(snippets, ("translation_text", "[")):
        proc = subprocess.run([sys.executable, "-c", snippet.replace("someone/rskip-tiny", str(out))],
                              capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert expected in proc.stdout


def test_seq2seq_trainer_trains_and_evaluates_a_saved_rskip_folder(trained, tmp_path: Path) -> None:
    """transformers' own tools: Seq2SeqTrainer with predict_with_generate, the model loaded as remote code."""
    out, _ = trained
    from hf_rskip.data import builtin_translation_task

    task = builtin_translation_task(64, 16, 0, seed=5)
    for split in ("train", "validation"):
        rows = [{"src": r["translation"]["en"], "tgt": r["translation"]["xx"]} for r in task[split]]
        (tmp_path / f"{split}.json").write_text(json.dumps(rows))
    script = textwrap.dedent(
        f"""
        import json, math, sys
        import numpy as np, sacrebleu, torch
        from datasets import Dataset
        from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                                  Seq2SeqTrainingArguments)
        folder, work = {str(out)!r}, {str(tmp_path)!r}
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
        before = model.get_input_embeddings().weight.detach().clone()
        def load(split):
            ds = Dataset.from_list(json.load(open(f"{{work}}/{{split}}.json")))
            return ds.map(lambda b: tok(b["src"], text_target=b["tgt"], truncation=True, max_length=64),
                          batched=True, remove_columns=["src", "tgt"])
        def compute_metrics(pred):
            preds, labels = pred
            labels = np.where(labels != -100, labels, tok.pad_token_id)
            hyps = tok.batch_decode(preds, skip_special_tokens=True)
            refs = tok.batch_decode(labels, skip_special_tokens=True)
            return {{"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score}}
        args = Seq2SeqTrainingArguments(output_dir=f"{{work}}/trainer", max_steps=4, per_device_train_batch_size=16,
                                        per_device_eval_batch_size=16, learning_rate=1e-3, predict_with_generate=True,
                                        generation_max_length=40, generation_num_beams=2, report_to=[], use_cpu=True,
                                        save_strategy="no", logging_steps=2, label_smoothing_factor=0.1)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=load("train"), eval_dataset=load("validation"),
                                 data_collator=DataCollatorForSeq2Seq(tok, model=model), processing_class=tok,
                                 compute_metrics=compute_metrics)
        train = trainer.train()
        metrics = trainer.evaluate()
        changed = not torch.equal(before, model.get_input_embeddings().weight.detach())
        print("RESULT", json.dumps({{"module": type(model).__module__, "loss": train.training_loss,
                                    "eval_bleu": metrics["eval_bleu"], "changed": changed}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["module"].startswith("transformers_modules") and result["changed"]
    assert result["loss"] == result["loss"] and result["eval_bleu"] >= 0.0  # finite loss, BLEU computed


def test_evaluation_only_run_reproduces_the_saved_test_bleu(trained, tmp_path: Path) -> None:
    """No training data and --model_name_or_path: the same evaluation path scores the saved model again."""
    out, _ = trained
    from hf_rskip.data import builtin_translation_task

    test = builtin_translation_task(400, 16, 16, seed=0)["test"]  # the trained run's test split (seed 0)
    for lang in ("en", "xx"):
        (tmp_path / f"test.{lang}").write_text("".join(r["translation"][lang] + "\n" for r in test), encoding="utf-8")
    again = tmp_path / "again"
    run_script("--output_dir", str(again), "--model_name_or_path", str(out), "--test_file", str(tmp_path / "test"),
               "--source_lang", "en", "--target_lang", "xx", "--num_beams", "2", "--per_device_eval_batch_size", "5",
               "--bleu_tokenize", "none")
    before, after = json.loads((out / "results.json").read_text()), json.loads((again / "results.json").read_text())
    assert after["train_steps"] == 0 and after["test_split_name"] == "test"
    assert after["test_bleu"] == before["test_bleu"] and after["test_chrf"] == before["test_chrf"]
    assert (again / "test_predictions.txt").read_text() == (out / "test_predictions.txt").read_text()


def test_marian_folder_is_converted_and_fine_tuned(tmp_path: Path) -> None:
    from transformers import MarianConfig, MarianMTModel

    from hf_rskip.data import builtin_translation_task, special_token_ids, train_tokenizer

    task = builtin_translation_task(200, 8, 8, seed=0)
    tokenizer = train_tokenizer((p[k] for p in task["train"]["translation"] for k in ("en", "xx")), 200)
    marian = MarianMTModel(MarianConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                        max_position_embeddings=128, **special_token_ids(tokenizer)))
    marian.save_pretrained(tmp_path / "marian")
    tokenizer.save_pretrained(tmp_path / "marian")
    out = tmp_path / "out"
    run_script("--output_dir", str(out), "--model_name_or_path", str(tmp_path / "marian"), "--residual_scheme",
               "rskip_ln", "--skip_lambda", "2", *TINY, "--builtin_num_train", "200", "--builtin_num_valid", "8",
               "--builtin_num_test", "8", "--max_train_steps", "2", "--eval_steps", "none")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rskip" and config["residual_scheme"] == "rskip_ln" and config["skip_lambda"] == 2
    assert config["d_model"] == 32 and json.loads((out / "results.json").read_text())["train_steps"] == 2
    # A saved RSkip model keeps its scheme: asking for another one is an error, not a silent change.
    proc = run_script("--output_dir", str(tmp_path / "o2"), "--model_name_or_path", str(out), "--residual_scheme",
                      "post_ln", *TINY, check=False)
    assert proc.returncode == 2 and "--residual_scheme" in proc.stderr and "keeps its scheme" in proc.stderr


# ------------------------------------------------------------------------------------------------
# Several processes: DDP over gloo on CPU.
# accelerate 1.x runs `accelerate launch --cpu --num_processes 2` as ONE process unless an MPI hostfile is
# given (its simple launcher); the torchrun launcher (`--multi_gpu`) starts two, and the script's Accelerator
# falls back to CPU DDP when the machine has no accelerator device.
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("accelerate.commands.launch") is None, reason="accelerate launch missing")
def test_accelerate_launch_two_processes(tmp_path: Path) -> None:
    if torch.accelerator.is_available():
        pytest.skip("this test checks CPU DDP; the machine has an accelerator")
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    run_script("--output_dir", str(out), *TINY, "--max_train_steps", "4", "--checkpointing_steps", "2",
               "--eval_steps", "none", launcher=launcher, timeout=400)
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2 and results["train_steps"] == 4
    # Every validation/test sentence is translated once, by one of the two processes, then gathered.
    assert results["eval_num_sentences"] == 16 and results["test_num_sentences"] == 16
    assert len((out / "test_predictions.txt").read_text().splitlines()) == 16
    ckpt = list_checkpoints(out / "checkpoints")[-1]
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert not any(k.startswith("module.") for k in load_file(str(out / "model.safetensors")))


# ------------------------------------------------------------------------------------------------
# Real data (skipped where ../shared/data is absent).
# ------------------------------------------------------------------------------------------------

def test_multi30k_trains_and_evaluates_on_test_2016_flickr(shared_data: Path, tmp_path: Path) -> None:
    m30k = shared_data / "multi30k"
    out = tmp_path / "m30k"
    run_script("--output_dir", str(out), "--train_file", str(m30k / "train"), "--validation_file", str(m30k / "val"),
               "--test_file", str(m30k / "test_2016_flickr"), "--source_lang", "en", "--target_lang", "de",
               "--preset", "tiny", "--vocab_size", "2000", "--max_tokens", "1024", "--max_train_steps", "6",
               "--num_warmup_steps", "3", "--num_beams", "1", "--eval_steps", "none", "--max_eval_samples", "32",
               "--max_length_a", "0", "--max_length_b", "16",  # an untrained model never stops by itself
               timeout=400)
    results = json.loads((out / "results.json").read_text())
    assert results["train_pairs"] == 29000 and results["test_pairs"] == 1000
    assert results["test_num_sentences"] == 1000 and results["test_split_name"] == "test_2016_flickr"
    assert "tok:13a" in results["test_bleu_signature"] and results["test_bleu"] >= 0.0
    assert len((out / "test_predictions.txt").read_text(encoding="utf-8").splitlines()) == 1000


def test_iwslt15_tst2013_goes_through_the_same_path_with_tokenized_bleu(shared_data: Path, tmp_path: Path) -> None:
    iwslt = shared_data / "iwslt15_en_vi"
    out = tmp_path / "iwslt"
    run_script("--output_dir", str(out), "--train_file", str(iwslt / "tst2012"), "--test_file",
               str(iwslt / "tst2013"), "--source_lang", "en", "--target_lang", "vi", "--bleu_tokenize", "none",
               "--preset", "tiny", "--vocab_size", "1000", "--max_tokens", "1024", "--max_train_steps", "3",
               "--num_warmup_steps", "2", "--num_beams", "1", "--eval_steps", "none",
               "--max_length_a", "0", "--max_length_b", "16", timeout=400)
    results = json.loads((out / "results.json").read_text())
    assert results["test_num_sentences"] == 1268 and results["test_split_name"] == "tst2013"
    assert "tok:none" in results["test_bleu_signature"]
    assert results["validation_held_out_from_train"] == 77  # no --validation_file: 5% of tst2012


# ------------------------------------------------------------------------------------------------
# Consent: code shipped inside a model folder runs only with --trust_remote_code.
# ------------------------------------------------------------------------------------------------

def test_code_in_a_model_folder_runs_only_with_trust_remote_code(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "someones_model", "architectures": ["SomeModel"],
        "auto_map": {"AutoConfig": "configuration_some.SomeConfig"}}))
    (folder / "configuration_some.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from transformers import PretrainedConfig
        Path({str(marker)!r}).write_text("ran")  # what a hostile folder could do
        class SomeConfig(PretrainedConfig):
            model_type = "someones_model"
        """))
    proc = run_script("--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(folder), *TINY, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--model_name_or_path" in proc.stderr and "pass --trust_remote_code" in proc.stderr
    assert not marker.exists(), "the folder's code ran without consent"
    proc = run_script("--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(folder), *TINY,
                      "--trust_remote_code", check=False)
    assert marker.exists() and proc.returncode == 2  # with consent it runs; the model is then not a translation one
    assert "holds a 'someones_model' model" in proc.stderr


# ------------------------------------------------------------------------------------------------
# The T5 family: trained from scratch with a task prefix, and a T5 checkpoint converted and fine-tuned.
# ------------------------------------------------------------------------------------------------

def test_the_t5_family_trains_from_scratch_with_a_source_prefix(tmp_path: Path) -> None:
    out = tmp_path / "t5"
    run_script("--output_dir", str(out), *TINY, "--model_type", "rskip_t5", "--num_layers", "2",
               "--num_decoder_layers", "3", "--feed_forward_proj", "gated-gelu", "--source_prefix",
               "translate English to Invented: ", "--max_train_steps", "3", "--eval_steps", "no")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rskip_t5" and config["residual_norm"] == "rms"
    assert (config["num_layers"], config["num_decoder_layers"], config["feed_forward_proj"]) == (2, 3, "gated-gelu")
    results = json.loads((out / "results.json").read_text())
    assert results["options"]["source_prefix"] == "translate English to Invented: " and results["train_steps"] == 3
    assert (results["options"]["optim"], results["options"]["learning_rate"]) == ("adafactor", 5e-2)  # T5's own
    import hf_rskip  # noqa: F401
    from transformers import AutoModelForSeq2SeqLM

    assert type(AutoModelForSeq2SeqLM.from_pretrained(out)).__name__ == "RSkipT5ForConditionalGeneration"
    proc = run_script("--output_dir", str(tmp_path / "bad"), *TINY, "--num_layers", "3", check=False)
    assert proc.returncode == 2 and "--num_layers 3: is not an option of --model_type rskip" in proc.stderr


def test_a_t5_folder_is_converted_to_rskip_and_fine_tuned(tmp_path: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from hf_rskip.data import builtin_translation_task, special_token_ids, train_tokenizer

    task = builtin_translation_task(200, 8, 8, seed=0)
    tokenizer = train_tokenizer((p[k] for p in task["train"]["translation"] for k in ("en", "xx")), 200)
    ids = special_token_ids(tokenizer)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=ids["vocab_size"], d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                             num_heads=4, pad_token_id=ids["pad_token_id"],
                                             eos_token_id=ids["eos_token_id"],
                                             decoder_start_token_id=ids["pad_token_id"]))
    t5.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    out = tmp_path / "out"
    run_script("--output_dir", str(out), "--model_name_or_path", str(tmp_path / "t5"), "--residual_scheme",
               "rskip_ln", "--skip_lambda", "2", *TINY, "--builtin_num_train", "200", "--max_train_steps", "2",
               "--eval_steps", "no")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "rskip_t5" and config["residual_scheme"] == "rskip_ln" and config["skip_lambda"] == 2
    assert config["d_model"] == 32 and json.loads((out / "results.json").read_text())["train_steps"] == 2


def test_model_card_of_a_local_corpus_without_a_hub_id(tmp_path: Path) -> None:
    """Local files in a folder named for the corpus: the card names the corpus (not "train"), the model by its
    folder name (never an absolute path), the schedule actually used, and says no license was given."""
    from huggingface_hub import ModelCard

    corpus = tmp_path / "mycorpus"
    lines = ["a b c", "d e f", "g h i", "j k l"] * 10
    corpus.mkdir()
    for split in ("train", "valid"):
        _write(corpus / f"{split}.en", "\n".join(lines) + "\n")
        _write(corpus / f"{split}.de", "\n".join(reversed(lines)) + "\n")
    out = tmp_path / "my-model"
    _main()(["--output_dir", str(out), "--train_file", str(corpus / "train"), "--validation_file",
             str(corpus / "valid"), "--source_lang", "en", "--target_lang", "de", "--preset", "tiny", "--vocab_size",
             "60", "--max_tokens", "256", "--num_beams", "1", "--num_warmup_steps", "1", "--threads", "1",
             "--max_train_steps", "2", "--lr_scheduler_type", "linear", "--eval_steps", "no"])
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "my-model" and card.data.datasets is None  # not a Hub dataset id
    assert {r.dataset_name for r in card.data.eval_results} == {"mycorpus"}
    assert card.data.license == "unknown" and "license: not given by the trainer" in card.text
    assert "`linear` schedule" in card.text and "inverse_sqrt" not in card.text
    snippets = "".join(re.findall(r"```python\n(.*?)```", card.text, re.S))
    assert snippets and str(tmp_path) not in snippets  # the training command is recorded; the snippets use the id


@pytest.mark.parametrize("saved, given, expected", [
    # a saved rSkip config keeps its scheme and λ when no scheme is given
    ({"model_type": "rskip_t5", "residual_scheme": "pre_ln"}, [], ("pre_ln", 1)),
    ({"model_type": "rskip", "residual_scheme": "rskip_ln", "skip_lambda": 3}, [], ("rskip_ln", 3)),
    # a scheme given replaces the saved one, and the saved λ (made for the other scheme) gives way to its default
    ({"model_type": "rskip_t5", "residual_scheme": "pre_ln"}, ["--residual_scheme", "rskip_ln"], ("rskip_ln", 2)),
    ({"model_type": "rskip", "residual_scheme": "rskip_ln", "skip_lambda": 3}, ["--residual_scheme", "xskip_ln",
                                                                                "--skip_lambda", "1.5"],
     ("xskip_ln", 1.5)),
    # a T5 config has no scheme: rskip_ln, as for a fresh model
    ({"model_type": "t5"}, [], ("rskip_ln", 2)),
], ids=["t5-pre_ln-kept", "marian-lambda-kept", "scheme-given", "scheme-and-lambda-given", "plain-t5-config"])
def test_config_name_keeps_the_saved_scheme_unless_one_is_given(saved: dict, given: list, expected: tuple,
                                                                 tmp_path: Path) -> None:
    from transformers import T5Config

    from hf_rskip.models import RSkipConfig, RSkipT5Config

    kind = saved.pop("model_type")
    small = dict(d_model=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, d_ff=64)
    config = {"rskip_t5": lambda: RSkipT5Config(**small, **saved), "t5": lambda: T5Config(**small),
              "rskip": lambda: RSkipConfig.from_preset("tiny", **saved)}[kind]()
    config.save_pretrained(tmp_path / "cfg")
    model_type = "rskip" if kind == "rskip" else "rskip_t5"
    out = tmp_path / "out"
    run_script("--output_dir", str(out), *TINY, "--model_type", model_type, "--config_name", str(tmp_path / "cfg"),
               *given, "--max_train_steps", "1", "--eval_steps", "no", "--max_predict_samples", "2")
    written = json.loads((out / "config.json").read_text())
    assert (written["residual_scheme"], written["skip_lambda"]) == expected
    assert written["d_model"] == (32 if kind != "rskip" else config.d_model)


def test_resuming_with_another_optimizer_is_refused_and_older_checkpoints_still_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["--output_dir", str(out), *TINY, "--eval_steps", "no", "--checkpointing_steps", "1",
            "--max_predict_samples", "2"]
    run_script(*base, "--max_train_steps", "2")
    proc = run_script(*base, "--max_train_steps", "3", "--resume_from_checkpoint", "latest", "--optim", "adafactor",
                      check=False)
    assert proc.returncode == 2 and "--optim: 'adamw' in the checkpoint, 'adafactor' now" in proc.stderr, proc.stderr
    # a checkpoint written before --optim existed records no optimizer: it resumes with the same options
    import hashlib

    for options in (out / "checkpoints").glob("*/run_options.json"):
        saved = json.loads(options.read_text())
        saved.pop("optim")
        options.write_text(json.dumps(saved))
        manifest_path = options.parent / "checkpoint_complete.json"  # as the older version wrote it, checksums too
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["run_options.json"] = {"sha256": hashlib.sha256(options.read_bytes()).hexdigest(),
                                                 "size": options.stat().st_size}
        manifest_path.write_text(json.dumps(manifest))
    run_script(*base, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")
    assert json.loads((out / "results.json").read_text())["train_steps"] == 3
