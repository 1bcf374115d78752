"""Translation evaluation: beam-search generation and sacreBLEU BLEU / chrF with their signatures.

Two kinds of BLEU appear in the literature and they are not comparable:

* detokenized sacreBLEU (``bleu_tokenize="13a"``, the default): references are plain text, sacreBLEU
  tokenizes hypotheses and references itself. This is the number to report for WMT'14 EN-DE, Multi30k
  and any raw-text corpus, together with its signature.
* tokenized BLEU (``bleu_tokenize="none"``): for corpora distributed pre-tokenized, such as the Stanford
  IWSLT'15 EN-VI files, papers run ``multi-bleu.perl`` on the tokenized references. sacreBLEU with
  ``tokenize="none"`` computes the same thing: it splits on whitespace only. Train on the tokenized files,
  decode (the tokenizer restores the tokenized spacing), and score against the tokenized references.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from sacrebleu.metrics import BLEU, CHRF

BLEU_TOKENIZERS: tuple[str, ...] = tuple(BLEU.TOKENIZERS)
"""Values accepted by ``bleu_tokenize`` (sacreBLEU's tokenizers: ``13a``, ``none``, ``intl``, ``char``, ...)."""

TRANSLATION_METRIC_PATH: Path = Path(__file__).resolve().parent / "metrics" / "translation_scores"
"""The ``evaluate`` metric module shipped with the package: :func:`score_translations` as an ``evaluate.Metric``."""


def score_translations(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    bleu_tokenize: str = "13a",
    lowercase: bool = False,
) -> dict[str, Any]:
    """Corpus BLEU and chrF with sacreBLEU (one reference per sentence).

    Args:
        hypotheses: system outputs, one per sentence.
        references: references, aligned with ``hypotheses``.
        bleu_tokenize: sacreBLEU tokenizer for BLEU: ``"13a"`` for detokenized text, ``"none"`` for
            pre-tokenized text (tokenized BLEU as multi-bleu.perl computes it), or any of
            :data:`BLEU_TOKENIZERS`.
        lowercase: case-insensitive BLEU.

    Returns:
        ``bleu``, ``chrf`` (0-100), ``bleu_signature``, ``chrf_signature`` and ``bleu_score_string``
        (precisions, brevity penalty, lengths).
    """
    if bleu_tokenize not in BLEU_TOKENIZERS:
        raise ValueError(
            f"bleu_tokenize={bleu_tokenize!r} is not a sacreBLEU tokenizer; accepted: {list(BLEU_TOKENIZERS)}"
        )
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    # tokenize="none" declares the text tokenized already: sacreBLEU's "forgot to detokenize?" warning does not apply
    bleu = BLEU(tokenize=bleu_tokenize, lowercase=lowercase, force=bleu_tokenize == "none")
    chrf = CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_score_string": bleu_score.format(),
    }


def load_translation_metric(**load_kwargs: Any) -> Any:
    """``evaluate.load`` of the package's metric module: BLEU and chrF with their signatures, the numbers of
    :func:`score_translations`. It loads from the installed package, so it works offline, where
    ``evaluate.load("sacrebleu")`` needs the Hub.

    Args:
        **load_kwargs: passed to ``evaluate.load`` (``experiment_id``, ``num_process``, ``process_id``, ...).

    Returns:
        An ``evaluate.EvaluationModule``; ``compute(predictions=..., references=..., bleu_tokenize="13a",
        lowercase=False)`` gives ``bleu``, ``chrf``, their signatures and ``bleu_score_string``.
    """
    import evaluate

    return evaluate.load(str(TRANSLATION_METRIC_PATH), **load_kwargs)


def seq2seq_compute_metrics(
    tokenizer: Any, *, bleu_tokenize: str = "13a", lowercase: bool = False
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` for ``Seq2SeqTrainer(..., args=Seq2SeqTrainingArguments(predict_with_generate=True))``.

    The returned function decodes the generated ids and the labels (``-100``, the Trainer's padding of both, is
    read as the pad token) and scores them with :func:`load_translation_metric`.

    Args:
        tokenizer: the tokenizer that decodes the model's outputs and the labels.
        bleu_tokenize: see :func:`score_translations`.
        lowercase: case-insensitive BLEU.

    Returns:
        ``compute_metrics(eval_prediction) -> {"bleu": float, "chrf": float}`` (the Trainer adds its prefix,
        ``eval_bleu``); the signatures of the last call are on its ``signatures`` attribute.
    """
    import numpy as np

    if bleu_tokenize not in BLEU_TOKENIZERS:
        raise ValueError(
            f"bleu_tokenize={bleu_tokenize!r} is not a sacreBLEU tokenizer; accepted: {list(BLEU_TOKENIZERS)}"
        )
    metric = load_translation_metric()
    pad = tokenizer.pad_token_id

    def decode(ids: Any) -> list[str]:
        ids = np.where(np.asarray(ids) != -100, ids, pad)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [t.strip() for t in texts]

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):  # (generated ids, ...) from some models
            predictions = predictions[0]
        scores = metric.compute(predictions=decode(predictions), references=decode(eval_prediction.label_ids),
                                bleu_tokenize=bleu_tokenize, lowercase=lowercase)
        compute_metrics.signatures = {"bleu": scores["bleu_signature"], "chrf": scores["chrf_signature"]}
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    compute_metrics.signatures = {}
    return compute_metrics


@torch.no_grad()
def generate_translations(
    model: torch.nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_source_length: int = 256,
    max_length_a: float = 1.5,
    max_length_b: int = 10,
    batch_size: int = 64,
    accelerator: Any | None = None,
    show_progress: bool = False,
) -> list[str]:
    """Translates ``sources`` with ``model.generate``, in length-sorted batches, split over processes.

    Args:
        model: a seq2seq model (possibly wrapped by Accelerate / DDP; it is unwrapped for generation).
        tokenizer: its tokenizer.
        sources: source sentences.
        num_beams: beam size (1 is greedy).
        length_penalty: beam-search length penalty (exponent on length; >1 favours longer outputs).
        max_source_length: sources are truncated to this many tokens.
        max_length_a: with ``max_length_b``, at most ``a * longest source + b`` new tokens (fairseq's
            ``--max-len-a/--max-len-b``). The longest source of the whole list, not of a batch, so that an
            output never depends on which sentences share its batch (or on the number of processes).
        max_length_b: see ``max_length_a``.
        batch_size: sentences per generation batch.
        accelerator: when given, each process translates a share and the results are gathered, so every
            process returns the full list.
        show_progress: a tqdm bar on the main process.

    Returns:
        One translation per source, in input order.
    """
    full_params = contextlib.nullcontext()
    if accelerator is not None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            # FSDP shards the weights; generation needs them whole on every process for its share of sentences.
            full_params = FullyShardedDataParallel.summon_full_params(model, writeback=False)
        model = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    max_positions = getattr(model.config, "max_position_embeddings", None) or 1024
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)

    encoded = tokenizer(list(sources), truncation=True, max_length=max_source_length)["input_ids"]
    longest = max((len(ids) for ids in encoded), default=0)
    max_new = max(1, min(int(math.ceil(max_length_a * longest + max_length_b)), max_positions - 1))
    # Longest first: similar lengths share a batch (less padding), and a memory problem shows at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))[rank::world]
    results: list[tuple[int, str]] = []
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if show_progress and (accelerator is None or accelerator.is_main_process):
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="translating", leave=False)
    try:
        with full_params:
            for idx in batches:
                features = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                output = model.generate(
                    input_ids=features["input_ids"].to(device),
                    attention_mask=features["attention_mask"].to(device),
                    num_beams=num_beams,
                    length_penalty=length_penalty,
                    max_new_tokens=max_new,
                    early_stopping=True if num_beams > 1 else False,
                    do_sample=False,
                )
                texts = tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                results.extend(zip(idx, (t.strip() for t in texts)))
    finally:
        model.train(was_training)

    if accelerator is not None and world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    ordered = dict(results)
    return [ordered[i] for i in range(len(sources))]


def write_lines(path: str | os.PathLike, lines: Sequence[str]) -> None:
    """Writes one line per item (newlines inside an item become spaces so the alignment holds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.replace("\n", " ").replace("\r", " ") + "\n")


def evaluate_translation(
    model: torch.nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    references: Sequence[str],
    *,
    prefix: str = "eval",
    bleu_tokenize: str = "13a",
    predictions_file: str | os.PathLike | None = None,
    accelerator: Any | None = None,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Generates translations for ``sources`` and scores them against ``references``.

    Args:
        model: the seq2seq model.
        tokenizer: its tokenizer.
        sources: source sentences.
        references: reference translations aligned with ``sources``.
        prefix: metric names start with it (``eval_bleu``, ``test_chrf``, ...).
        bleu_tokenize: see :func:`score_translations`.
        predictions_file: when given, the hypotheses are written there, one per line (main process only).
        accelerator: see :func:`generate_translations`.
        **generate_kwargs: passed to :func:`generate_translations` (``num_beams``, ``length_penalty``, ...).

    Returns:
        ``{prefix}_bleu``, ``{prefix}_chrf``, their signatures, ``{prefix}_bleu_score_string`` and
        ``{prefix}_num_sentences``.
    """
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    hypotheses = generate_translations(model, tokenizer, sources, accelerator=accelerator, **generate_kwargs)
    scores = score_translations(hypotheses, references, bleu_tokenize=bleu_tokenize)
    if predictions_file is not None and (accelerator is None or accelerator.is_main_process):
        write_lines(predictions_file, hypotheses)
    out = {f"{prefix}_{k}": v for k, v in scores.items()}
    out[f"{prefix}_num_sentences"] = len(hypotheses)
    return out


__all__ = [
    "BLEU_TOKENIZERS",
    "TRANSLATION_METRIC_PATH",
    "evaluate_translation",
    "generate_translations",
    "load_translation_metric",
    "score_translations",
    "seq2seq_compute_metrics",
    "write_lines",
]
