"""Model cards for trained models, written with ``huggingface_hub`` from Jinja templates.

The metadata (YAML header) comes from :class:`huggingface_hub.ModelCardData`, with a ``model-index`` built from
:class:`huggingface_hub.EvalResult` entries, so the Hub shows the scores; the body comes from a template in the
package's ``model_cards/`` folder (or the folder named by ``HF_RSKIP_MODEL_CARDS``, searched first) rendered with
the run's results and options.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATES_ENV = "HF_RSKIP_MODEL_CARDS"
"""Environment variable naming an extra folder searched first for card templates."""


def template_dirs() -> list[Path]:
    """The folders searched for card templates, in order: ``$HF_RSKIP_MODEL_CARDS``, the package's own."""
    dirs = [Path(os.environ[TEMPLATES_ENV])] if os.environ.get(TEMPLATES_ENV) else []
    return dirs + [Path(__file__).resolve().parent / "model_cards"]


def find_template(template_name: str) -> Path:
    """Finds a card template by file name (e.g. ``"translation.md"``) or returns an existing path as is.

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


def _model_id(args: Any) -> str:
    """How the card's snippets name the model: its Hub id, else the folder name (never a local absolute path)."""
    return args.hub_model_id or Path(args.output_dir).resolve().name


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def translation_card(folder: Path, results: Mapping[str, Any], *, job: Any) -> ModelCard:
    """The card of a translation run (``model_cards/translation.md``), from its results and options."""
    args, margs = job.args, job.model_args
    model = job.accelerator.unwrap_model(job.model, keep_torch_compile=False) if hasattr(job, "model") else None
    config = model.config if model is not None else None
    src, tgt = results["source_lang"], results["target_lang"]
    score_rows = [{"split": results[f"{p}_split_name"], "bleu": _fmt(results.get(f"{p}_bleu")),
                   "chrf": _fmt(results.get(f"{p}_chrf"))} for p in ("eval", "test") if f"{p}_bleu" in results]
    signatures = [{"split": results[f"{p}_split_name"], "metric": name, "signature": results[f"{p}_{m}_signature"]}
                  for p in ("eval", "test") for m, name in (("bleu", "BLEU"), ("chrf", "chrF"))
                  if f"{p}_{m}_signature" in results]
    example = job.raw["test" if "test" in job.raw else "validation"][0]["translation"][src]
    dataset = results.get("dataset")
    t5 = getattr(config, "model_type", "") == "rskip_t5"
    size = {"family": "T5-style" if t5 else "Marian-style", "d_model": config.d_model,
            "encoder_layers": config.num_layers if t5 else config.encoder_layers,
            "decoder_layers": config.num_decoder_layers if t5 else config.decoder_layers,
            "heads": config.num_heads if t5 else config.encoder_attention_heads,
            "ffn": config.d_ff if t5 else config.encoder_ffn_dim} if config is not None else {}
    return write_model_card(
        folder, template_name="translation.md",
        card_data_kwargs=dict(
            model_name=args.hub_model_id or Path(args.output_dir).resolve().name, language=[src, tgt],
            license=args.license or "unknown", library_name="transformers", pipeline_tag="translation",
            datasets=[dataset] if dataset and dataset not in ("builtin", "local files") else None,
            tags=["translation", "hf_rskip", "rskip", results["residual_scheme"]], metrics=["bleu", "chrf"]),
        eval_results=translation_eval_results(results, dataset_type=str(dataset),
                                              dataset_name=results["dataset_name"],
                                              dataset_config=results.get("dataset_config"), source_lang=src,
                                              target_lang=tgt),
        model_id=_model_id(args), license_given=args.license is not None, config=config, size=size, results=results,
        args=args, model_args=margs, data_args=job.data_args, score_rows=score_rows, signatures=signatures,
        example_source=example.replace('"', "'"), command=results.get("command") or "",
    )


def image_classification_card(folder: Path, results: Mapping[str, Any], *, job: Any) -> ModelCard:
    """The card of an image-classification run (``model_cards/image_classification.md``)."""
    args = job.args
    return write_model_card(
        folder, template_name="image_classification.md",
        card_data_kwargs=dict(
            model_name=args.hub_model_id or Path(args.output_dir).resolve().name,
            license=args.license or "unknown", library_name="transformers", pipeline_tag="image-classification",
            datasets=[job.data_args.dataset_name] if job.data_args.dataset_name else None,
            tags=["image-classification", "hf_rskip", "rskip", "preact-resnet", results["residual_scheme"]],
            metrics=["accuracy"]),
        eval_results=[dict(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=results["dataset"], dataset_name=results["dataset_name"],
            dataset_config=results.get("dataset_config"), dataset_split=Path(results["eval_source"]).name,
            metric_type="accuracy", metric_name="accuracy", metric_value=round(results["eval_accuracy"], 4))],
        model_id=_model_id(args), license_given=args.license is not None, results=results, args=args,
        eval_accuracy=f"{100 * results['eval_accuracy']:.2f}", eval_loss=f"{results['eval_loss']:.4f}",
        command=results.get("command") or "",
    )


__all__ = [
    "TEMPLATES_ENV",
    "image_classification_card",
    "translation_card",
    "find_template",
    "template_dirs",
    "translation_eval_results",
    "write_model_card",
]
