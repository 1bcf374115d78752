"""Model cards for trained models, written with ``huggingface_hub`` from Jinja templates in ``model_cards/``.

The metadata (YAML header) comes from :class:`huggingface_hub.ModelCardData`, with a ``model-index``
built from :class:`huggingface_hub.EvalResult` entries, so the Hub shows the scores; the body comes
from a template such as ``model_cards/translation.md`` rendered with the run's variables.

Where the templates are found (first hit wins, see :func:`find_template`):

1. the folder named by the environment variable ``HF_RSKIP_MODEL_CARDS`` (your own templates),
2. ``model_cards/`` beside the ``hf_rskip`` package folder: a source checkout or an editable install
   (``pip install -e .``),
3. ``<sys.prefix>/share/hf_rskip/model_cards/``, where a regular install puts them when ``setup.py`` lists
   them in ``data_files``,
4. ``hf_rskip/model_cards/`` inside the package (``package_data``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATES_ENV = "HF_RSKIP_MODEL_CARDS"
"""Environment variable naming an extra folder searched first for card templates."""


def template_dirs() -> list[Path]:
    """The folders searched for card templates, in order (see the module docstring)."""
    package_dir = Path(__file__).resolve().parent
    dirs = []
    if os.environ.get(TEMPLATES_ENV):
        dirs.append(Path(os.environ[TEMPLATES_ENV]))
    dirs += [
        package_dir.parent / "model_cards",
        Path(sys.prefix) / "share" / "hf_rskip" / "model_cards",
        package_dir / "model_cards",
    ]
    return dirs


def find_template(template_name: str) -> Path:
    """Finds a card template by file name (e.g. ``"translation.md"``) or returns an existing path as is.

    Args:
        template_name: a file name looked up in :func:`template_dirs`, or a path to a template file.

    Raises:
        FileNotFoundError: naming the template and every folder searched.
    """
    as_path = Path(template_name)
    if as_path.is_file():
        return as_path
    searched = template_dirs()
    for folder in searched:
        candidate = folder / template_name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"model card template {template_name!r} not found; searched: {', '.join(str(d) for d in searched)}. "
        f"Point {TEMPLATES_ENV} at a folder holding it, or pass a path."
    )


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    template_name: str,
    card_data_kwargs: Mapping[str, Any],
    eval_results: Sequence[EvalResult | Mapping[str, Any]] = (),
    **template_vars: Any,
) -> ModelCard:
    """Renders a template into ``<output_dir>/README.md`` with metadata and a model-index.

    Args:
        output_dir: the model folder (created if needed).
        template_name: a template file name in ``model_cards/`` (``"translation.md"``,
            ``"image_classification.md"``) or a path.
        card_data_kwargs: keyword arguments of :class:`huggingface_hub.ModelCardData` (``model_name``,
            ``language``, ``license``, ``datasets``, ``tags``, ``pipeline_tag``, ``library_name``, ...; extra
            keys go to the YAML header as they are).
        eval_results: model-index entries: :class:`huggingface_hub.EvalResult` objects or dicts of its fields
            (``task_type``, ``dataset_type``, ``dataset_name``, ``metric_type``, ``metric_value``, optional
            ``dataset_config``, ``dataset_split``, ``metric_name``, ``metric_config``, ...). Entries whose
            ``metric_value`` is None are left out (a metric that was not measured is not reported).
        **template_vars: variables for the Jinja template (``card_data`` is the YAML header; every key of
            ``card_data_kwargs`` is available too, e.g. ``model_name``).

    Returns:
        The written :class:`huggingface_hub.ModelCard`.
    """
    results = [r if isinstance(r, EvalResult) else EvalResult(**r) for r in eval_results]
    results = [r for r in results if r.metric_value is not None]
    kwargs = dict(card_data_kwargs)
    if results:
        if not kwargs.get("model_name"):
            raise ValueError(
                "card_data_kwargs needs a 'model_name' when eval_results are given (it names the model-index)"
            )
        kwargs["eval_results"] = results
    card_data = ModelCardData(**kwargs)
    # The metadata fields are template variables too (`model_name` would otherwise vanish into the model-index).
    variables = {**{k: v for k, v in card_data_kwargs.items() if k != "eval_results"}, **template_vars}
    card = ModelCard.from_template(card_data, template_path=str(find_template(template_name)), **variables)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / "README.md")
    return card


def translation_eval_results(
    results: Mapping[str, Any],
    *,
    dataset_type: str,
    dataset_name: str,
    dataset_config: str | None = None,
    source_lang: str,
    target_lang: str,
) -> list[dict[str, Any]]:
    """Model-index entries for BLEU and chrF on validation and test from a ``results.json`` dict.

    Args:
        results: holds ``eval_bleu``, ``eval_chrf``, ``test_bleu``, ``test_chrf`` (any may be missing) and the
            signatures ``eval_bleu_signature``, ... (recorded as ``metric_config`` so the score can be trusted).
        dataset_type: a Hub dataset id (or a short name for local files).
        dataset_name: a readable dataset name.
        dataset_config: the dataset configuration, if any.
        source_lang: source language code.
        target_lang: target language code.
    """
    entries = []
    for split, split_name in (("eval", "validation"), ("test", "test")):
        for metric, metric_name in (("bleu", "BLEU"), ("chrf", "chrF")):
            value = results.get(f"{split}_{metric}")
            if value is None:
                continue
            entries.append(
                dict(
                    task_type="translation",
                    task_name=f"Translation {source_lang}-{target_lang}",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_config=dataset_config,
                    dataset_split=results.get(f"{split}_split_name", split_name),
                    metric_type="sacrebleu" if metric == "bleu" else "chrf",
                    metric_name=f"{split_name} {metric_name}",
                    metric_value=round(float(value), 2),
                    metric_config=results.get(f"{split}_{metric}_signature"),
                )
            )
    return entries


__all__ = [
    "TEMPLATES_ENV",
    "find_template",
    "template_dirs",
    "translation_eval_results",
    "write_model_card",
]
