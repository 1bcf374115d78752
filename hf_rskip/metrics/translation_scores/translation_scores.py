"""Corpus BLEU and chrF with sacreBLEU and their signatures, as an `evaluate` metric module.

Load it by path, which needs no Hub (``evaluate.load("sacrebleu")`` does)::

    from hf_rskip.evaluation import load_translation_metric

    metric = load_translation_metric()  # evaluate.load(<this folder>)
    metric.compute(predictions=["The cat sat ."], references=["The cat sat on the mat ."], bleu_tokenize="13a")

The numbers, signatures and score string are those of ``hf_rskip.evaluation.score_translations``. The module stands
alone (it imports ``sacrebleu`` and ``evaluate`` only), so ``evaluate`` can load it where this package is absent.
"""

from __future__ import annotations

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_DESCRIPTION = """\
Corpus BLEU (sacreBLEU, one reference per sentence) and chrF, with the sacreBLEU signatures that make a score
reproducible. `bleu_tokenize="13a"` (the default) is detokenized BLEU, the number to report for raw-text corpora
(WMT, Multi30k); `bleu_tokenize="none"` is tokenized BLEU as multi-bleu.perl computes it, for pre-tokenized corpora
such as Stanford's IWSLT'15 EN-VI files. The two are not comparable.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[str]`): system outputs, one per sentence.
    references (`list[str]`): one reference per sentence, aligned with `predictions`.
    bleu_tokenize (`str`, defaults to `"13a"`): sacreBLEU's tokenizer for BLEU (`"13a"`, `"none"`, `"intl"`, `"char"`,
        `"zh"`, `"ja-mecab"`, ...).
    lowercase (`bool`, defaults to `False`): case-insensitive BLEU.
Returns:
    `bleu` and `chrf` (0-100), `bleu_signature`, `chrf_signature`, and `bleu_score_string` (precisions, brevity
    penalty, lengths).
Example:
    >>> metric = evaluate.load("path/to/translation_scores")  # doctest: +SKIP
    >>> metric.compute(predictions=["The cat sat on the mat."], references=["The cat sat on the mat."])["bleu"]
    100.00000000000004
"""

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    pages = "392--395",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TranslationScores(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions: list[str], references: list[str], bleu_tokenize: str = "13a",
                 lowercase: bool = False) -> dict:
        if bleu_tokenize not in BLEU.TOKENIZERS:
            raise ValueError(
                f"bleu_tokenize={bleu_tokenize!r} is not a sacreBLEU tokenizer; accepted: {list(BLEU.TOKENIZERS)}"
            )
        # tokenize="none" declares the text tokenized already: sacreBLEU's "forgot to detokenize?" warning does not apply
        bleu = BLEU(tokenize=bleu_tokenize, lowercase=lowercase, force=bleu_tokenize == "none")
        chrf = CHRF()
        bleu_score = bleu.corpus_score(list(predictions), [list(references)])
        chrf_score = chrf.corpus_score(list(predictions), [list(references)])
        return {
            "bleu": float(bleu_score.score),
            "chrf": float(chrf_score.score),
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()),
            "bleu_score_string": bleu_score.format(),
        }
