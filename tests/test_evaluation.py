"""Tests for hf_rskip.evaluation: sacreBLEU / chrF with signatures, tokenized BLEU, batched generation."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from hf_rskip import RSkipForConditionalGeneration
from hf_rskip.evaluation import evaluate_translation, generate_translations, score_translations
from tests.conftest import tiny_text_config
from tests.test_pipeline import word_tokenizer


def multi_bleu(hypotheses: list[str], references: list[str]) -> float:
    """BLEU as multi-bleu.perl computes it: whitespace tokens, clipped 1-4-gram precisions, brevity penalty."""
    matches, totals = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            h_ngrams = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            r_ngrams = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, r_ngrams[g]) for g, c in h_ngrams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = min(0.0, 1 - ref_len / hyp_len)
    return 100 * math.exp(log_precision + brevity)


def _perturb(sentences: list[str]) -> list[str]:
    """A deterministic 'system output': drop every 5th word, swap some neighbours, cut every 7th sentence short."""
    out = []
    for i, s in enumerate(sentences):
        words = [w for j, w in enumerate(s.split()) if j % 5 != 4]
        if i % 3 == 0 and len(words) > 3:
            words[1], words[2] = words[2], words[1]
        if i % 7 == 0:
            words = words[: max(1, len(words) // 2)]
        out.append(" ".join(words))
    return out


def test_scores_and_signatures() -> None:
    refs = ["The cat sat on the mat.", "A dog barked at the mailman, twice!"]
    perfect = score_translations(refs, refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert "tok:13a" in perfect["bleu_signature"] and "nrefs:1" in perfect["bleu_signature"]
    assert perfect["chrf_signature"].startswith("nrefs:1") and "nc:6" in perfect["chrf_signature"]
    worse = score_translations(["The cat sat on a mat .", "A dog barked ."], refs)
    assert 0 < worse["bleu"] < 100 and 0 < worse["chrf"] < 100
    assert "BP =" in worse["bleu_score_string"]
    # 13a splits "mat." into "mat ." ; none does not, so the same text scores differently.
    assert score_translations(["The cat sat on the mat ."], refs[:1])["bleu"] == pytest.approx(100.0)
    assert score_translations(["The cat sat on the mat ."], refs[:1], bleu_tokenize="none")["bleu"] < 100
    with pytest.raises(ValueError, match="bleu_tokenize='moses'"):
        score_translations(refs, refs, bleu_tokenize="moses")
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        score_translations(refs[:1], refs)


def test_tokenize_none_is_multi_bleu_on_synthetic_text() -> None:
    refs = [f"w{i} w{i + 1} , w{(i * 7) % 13} w{i % 5} w{i % 3} w{i} ." for i in range(60)]
    hyps = _perturb(refs)
    got = score_translations(hyps, refs, bleu_tokenize="none")
    assert got["bleu"] == pytest.approx(multi_bleu(hyps, refs), abs=1e-6)
    assert "tok:none" in got["bleu_signature"]


def test_iwslt15_tst2013_tokenized_bleu_is_multi_bleu(shared_data: Path) -> None:
    # The pre-tokenized Stanford files: tokenized BLEU (literature) = sacreBLEU with tokenize none.
    refs = (shared_data / "iwslt15_en_vi" / "tst2013.vi").read_text(encoding="utf-8").splitlines()
    assert len(refs) == 1268
    hyps = _perturb(refs)
    tokenized = score_translations(hyps, refs, bleu_tokenize="none")
    assert tokenized["bleu"] == pytest.approx(multi_bleu(hyps, refs), abs=1e-6)
    assert 10 < tokenized["bleu"] < 90
    # 13a re-tokenizes the already tokenized text and gives another number: the two must not be mixed.
    assert abs(score_translations(hyps, refs)["bleu"] - tokenized["bleu"]) > 0.01


@pytest.fixture
def model_and_tokenizer():
    tokenizer = word_tokenizer()
    model = RSkipForConditionalGeneration(tiny_text_config(vocab_size=len(tokenizer), dropout=0.0)).eval()
    return model, tokenizer


SOURCES = ["a dog runs on the mat", "two men talk", "the small cat sits on the red mat big house", "a cat"]


def test_generation_is_batch_invariant_and_keeps_order(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    batched = generate_translations(model, tokenizer, SOURCES, num_beams=2, batch_size=3, max_length_a=0.5,
                                    max_length_b=3)
    single = generate_translations(model, tokenizer, SOURCES, num_beams=2, batch_size=1, max_length_a=0.5,
                                   max_length_b=3)
    assert batched == single
    # Each output is what generate gives for that sentence alone (order restored after length sorting).
    n = math.ceil(0.5 * max(len(tokenizer(s)["input_ids"]) for s in SOURCES) + 3)
    for source, text in zip(SOURCES, single):
        ids = tokenizer(source, return_tensors="pt")
        direct = model.generate(**ids, num_beams=2, max_new_tokens=n, early_stopping=True)
        assert text == tokenizer.decode(direct[0], skip_special_tokens=True).strip()
    assert model.training is False
    model.train()
    generate_translations(model, tokenizer, SOURCES[:1], num_beams=1, max_length_b=2)
    assert model.training is True  # the mode is restored


def test_evaluate_translation_writes_predictions_and_prefixed_metrics(model_and_tokenizer, tmp_path: Path) -> None:
    model, tokenizer = model_and_tokenizer
    out = evaluate_translation(model, tokenizer, SOURCES, SOURCES, prefix="test", predictions_file=tmp_path / "p.txt",
                               num_beams=1, max_length_b=4)
    lines = (tmp_path / "p.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(SOURCES) + 1 and lines[-1] == ""
    assert out["test_num_sentences"] == 4
    assert set(out) >= {"test_bleu", "test_chrf", "test_bleu_signature", "test_chrf_signature"}
    assert out["test_bleu"] == pytest.approx(score_translations(lines[:-1], SOURCES)["bleu"])
    with pytest.raises(ValueError, match="4 sources but 3 references"):
        evaluate_translation(model, tokenizer, SOURCES, SOURCES[:3])


# --- the `evaluate` metric module and the Seq2SeqTrainer hook ----------------------------------------

HYPOTHESES = ["The cat sat on a mat .", "A dog barked .", "two men are talking", "Ein Hund läuft."]
REFERENCES = ["The cat sat on the mat.", "A dog barked at the mailman, twice!", "Two men talk.", "Ein Hund rennt."]


@pytest.mark.parametrize("options", [{}, {"bleu_tokenize": "none"}, {"bleu_tokenize": "intl", "lowercase": True}])
def test_the_metric_module_gives_score_translations_numbers(options) -> None:
    from hf_rskip.evaluation import load_translation_metric

    metric = load_translation_metric()
    got = metric.compute(predictions=HYPOTHESES, references=REFERENCES, **options)
    assert got == score_translations(HYPOTHESES, REFERENCES, **options)
    # evaluate's batch interface gives the same
    for hyp, ref in zip(HYPOTHESES, REFERENCES):
        metric.add(prediction=hyp, reference=ref)
    assert metric.compute(**options) == got


def test_the_metric_module_names_bad_options() -> None:
    from hf_rskip.evaluation import load_translation_metric

    with pytest.raises(ValueError, match="bleu_tokenize='moses'"):
        load_translation_metric().compute(predictions=HYPOTHESES, references=REFERENCES, bleu_tokenize="moses")


def test_the_metric_module_loads_offline_in_a_fresh_process(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys
    import textwrap

    from hf_rskip.evaluation import TRANSLATION_METRIC_PATH

    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["hf_rskip"] = None  # the metric module stands alone
        import evaluate
        metric = evaluate.load({str(TRANSLATION_METRIC_PATH)!r})
        print("OUT" + json.dumps(metric.compute(predictions={HYPOTHESES!r}, references={REFERENCES!r})))
        """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.split("OUT", 1)[1]) == score_translations(HYPOTHESES, REFERENCES)


def test_seq2seq_trainer_evaluates_bleu_and_chrf(model_and_tokenizer, tmp_path: Path) -> None:
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from hf_rskip.evaluation import seq2seq_compute_metrics

    model, tokenizer = model_and_tokenizer
    model.generation_config.max_new_tokens, model.generation_config.num_beams = 6, 1
    references = ["a dog runs", "two men talk on the mat", "the cat", "a red house"]
    features = [{"input_ids": tokenizer(s)["input_ids"], "labels": tokenizer(text_target=r)["input_ids"]}
                for s, r in zip(SOURCES, references)]
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, predict_with_generate=True,
                                    report_to=[], use_cpu=True, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=features,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                             compute_metrics=seq2seq_compute_metrics(tokenizer))
    metrics = trainer.evaluate()
    # the same model decoded by hand, scored by score_translations
    hypotheses = []
    with torch.no_grad():
        for source in SOURCES:
            out = model.generate(**tokenizer(source, return_tensors="pt"), max_new_tokens=6, num_beams=1)
            hypotheses.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
    expected = score_translations(hypotheses, references)
    assert metrics["eval_bleu"] == pytest.approx(expected["bleu"]) and metrics["eval_chrf"] == pytest.approx(
        expected["chrf"])
    assert expected["chrf"] > 0
