"""The trainability map: which residual scheme trains at which depth and learning rate.

Liu et al.'s argument is about gradients and depth: Post-LN distorts gradients as stacks grow, and the recursive
skip with LN is meant to keep deep stacks trainable. The map tests that mechanism where it should show: for each
scheme, encoder-decoder stacks from shallow to deep (6, 12, 24 layers per stack at a small width) × learning rates
from where every scheme trains to where they diverge, each cell over several seeds, a fixed step budget with a
short warm-up, on real Multi30k batches. Per run it records the final validation NLL, whether the run diverged
(a non-finite loss or gradient, or a final training loss above the first), and the ratio of the first to the last
layer's gradient norm at initialization and at the end (per stack).

Runs go through the same sweep machinery as :mod:`experiments.reproduce` (one JSON per run, resumable, several
worker processes) and the package's own loop (:func:`hf_rskip.training.train`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

#: Cell colours of the heat maps: validation NLL, one scale for every scheme; diverged cells are hatched.
NLL_RANGE: tuple[float, float] = (2.5, 7.0)


def map_specs(settings: Mapping[str, Any]) -> list[Any]:
    """Every cell × seed of the map as a :class:`experiments.reproduce.RunSpec` (task ``"map"``)."""
    from .reproduce import RunSpec, _variants

    return [
        RunSpec("map", f"{layers}+{layers}", variant, lr, seed, "map", settings["steps"])
        for layers in settings["depths"]
        for variant in _variants(settings["variants"])
        for lr in settings["lr_grid"]
        for seed in settings["seeds"]
    ]


def _size(settings: Mapping[str, Any], layers: int) -> dict[str, int]:
    d = settings["d_model"]
    return dict(d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=settings["heads"],
                decoder_attention_heads=settings["heads"], encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d)


def _grad_ratios(model: torch.nn.Module, probe: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """First-over-last layer gradient norm per stack on a fixed batch, dropout off (NaN where not finite)."""
    from hf_rskip.diagnostics import measure_grad_norms, summarize_norms

    was_training = model.training
    model.eval()
    profile = measure_grad_norms(model, probe)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    summary = summarize_norms(profile.param)
    return {stack: (value if math.isfinite(value) else math.nan) for stack, value in
            ((key.split("/")[0], summary[key]) for key in summary if key.endswith("first_over_last"))}


def train_map_run(spec: Any, settings: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """Trains one cell of the map for ``spec.steps`` steps and measures it.

    Returns:
        ``valid_nll``, ``diverged`` (and ``diverged_at``, the step), ``first_loss``, ``final_loss``,
        ``grad_ratio_init`` / ``grad_ratio_end`` (``{"encoder": ..., "decoder": ...}``), ``train_seconds``.
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForSeq2Seq

    from hf_rskip.data import TokenBatchSampler, token_lengths
    from hf_rskip.models import RSkipForConditionalGeneration
    from hf_rskip.training import LoopConfig, NonFiniteLossError, TranslationTask, train
    from hf_rskip.training.optim import build_optimizer, build_scheduler

    from .reproduce import _accelerator, text_config

    layers = int(spec.depth.split("+")[0])
    accelerator = _accelerator()
    set_seed(spec.seed)
    model = RSkipForConditionalGeneration(text_config(_size(settings, layers), spec.variant, data.tokenizer,
                                                      dropout=settings["dropout"]))
    collator = DataCollatorForSeq2Seq(data.tokenizer, model=model, label_pad_token_id=-100)
    sampler = TokenBatchSampler(data.train_lengths, settings["max_tokens"], shuffle=True, seed=spec.seed)
    loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collator,
                        generator=torch.Generator().manual_seed(spec.seed))
    valid_sampler = TokenBatchSampler(token_lengths(data.valid), settings["max_tokens"], shuffle=False)
    valid_loader = DataLoader(data.valid, batch_sampler=valid_sampler, collate_fn=collator)
    probe = collator([data.train[i] for i in range(settings["probe_pairs"])])  # the same batch for every cell
    out: dict[str, Any] = {"task": "map", "num_parameters": model.num_parameters(),
                           "grad_ratio_init": _grad_ratios(model, probe)}
    optimizer = build_optimizer(model, learning_rate=spec.learning_rate, weight_decay=settings["weight_decay"])
    model, optimizer, loader, valid_loader = accelerator.prepare(model, optimizer, loader, valid_loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer, lr_scheduler_type="inverse_sqrt",
                                                    num_warmup_steps=settings["warmup_steps"],
                                                    num_training_steps=spec.steps))
    task = TranslationTask(settings["label_smoothing"], eval_dataloader=valid_loader, accelerator=accelerator)
    config = LoopConfig(max_train_steps=spec.steps, num_train_epochs=math.ceil(spec.steps / max(1, len(loader))),
                        max_grad_norm=settings["max_grad_norm"], logging_steps=settings["logging_steps"],
                        show_progress=False)
    try:
        result = train(accelerator, model, optimizer, scheduler, loader, task, config)
    except NonFiniteLossError as err:
        out.update(diverged=True, diverged_at=err.step, valid_nll=math.nan, final_loss=math.nan,
                   first_loss=math.nan, grad_ratio_end={}, selection_score=math.nan)
        return out
    losses = [record["loss"] for record in result.history if "loss" in record]
    valid = task.validation_nll(model)["eval_nll"]
    unwrapped = accelerator.unwrap_model(model)
    out.update(
        valid_nll=valid, selection_score=valid, first_loss=losses[0], final_loss=losses[-1],
        diverged=not math.isfinite(valid) or losses[-1] > losses[0], diverged_at=None,
        grad_ratio_end=_grad_ratios(unwrapped, {k: v.to(accelerator.device) for k, v in probe.items()}),
        train_seconds=result.state.train_seconds, history=[{k: r[k] for k in ("step", "loss") if k in r}
                                                           for r in result.history],
    )
    return out


# --------------------------------------------------------------------------------------------------
# Aggregation, table and heat maps
# --------------------------------------------------------------------------------------------------


def aggregate_map(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, depth, lr): mean valid NLL over the seeds that did not diverge, how many diverged,
    and the median gradient ratios."""
    from .reproduce import Variant

    cells: dict[tuple[str, str, float], dict[str, Any]] = {}
    for r in results:
        spec = r["spec"]
        key = (spec["variant"], spec["depth"], spec["learning_rate"])
        cell = cells.setdefault(key, {"variant": spec["variant"], "label": Variant.parse(spec["variant"]).label,
                                      "depth": spec["depth"], "learning_rate": spec["learning_rate"], "nll": [],
                                      "seeds": [], "diverged": 0, "ratio_init": [], "ratio_end": []})
        cell["seeds"].append(spec["seed"])
        if r.get("diverged"):
            cell["diverged"] += 1
        elif math.isfinite(r.get("valid_nll", math.nan)):
            cell["nll"].append(r["valid_nll"])
        for name, source in (("ratio_init", "grad_ratio_init"), ("ratio_end", "grad_ratio_end")):
            ratios = r.get(source) or {}
            cell[name].append({k: v for k, v in ratios.items()})
    rows = []
    for cell in cells.values():
        n = len(cell["seeds"])
        cell["n"] = n
        cell["mean_nll"] = sum(cell["nll"]) / len(cell["nll"]) if cell["nll"] else math.nan
        for name in ("ratio_init", "ratio_end"):
            for stack in ("encoder", "decoder"):
                values = sorted(v[stack] for v in cell[name] if math.isfinite(v.get(stack, math.nan)))
                cell[f"{name}_{stack}"] = values[len(values) // 2] if values else math.nan
            del cell[name]
        rows.append(cell)
    return rows


def map_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per scheme, depth × learning rate, each cell ``NLL`` (mean of the seeds that trained) and the count
    of diverged seeds."""
    lines = []
    rates = sorted({r["learning_rate"] for r in rows})
    depths = sorted({r["depth"] for r in rows}, key=lambda d: int(d.split("+")[0]))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        label = next(r["label"] for r in rows if r["variant"] == variant)
        lines += [f"#### {label}", "", "| layers | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
                  "|---|" + "---|" * len(rates)]
        for depth in depths:
            cells = []
            for lr in rates:
                row = next((r for r in rows if r["variant"] == variant and r["depth"] == depth
                            and r["learning_rate"] == lr), None)
                if row is None:
                    cells.append("–")
                    continue
                nll = "—" if math.isnan(row["mean_nll"]) else f"{row['mean_nll']:.2f}"
                mark = f" ({row['diverged']}/{row['n']} div.)" if row["diverged"] else ""
                cells.append(nll + mark)
            lines.append(f"| {depth} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def ratio_table(rows: Sequence[Mapping[str, Any]], lr: float) -> str:
    """Markdown: first-over-last layer gradient ratio (decoder; encoder) at init and at the end, at one rate."""
    lines = [f"| scheme | layers | decoder ratio init | decoder ratio end | encoder ratio init | encoder ratio end |",
             "|---|---|---|---|---|---|"]

    def fmt(value: float) -> str:
        return "—" if not math.isfinite(value) else f"{value:.3g}"

    for r in rows:
        if r["learning_rate"] != lr:
            continue
        lines.append(f"| {r['label']} | {r['depth']} | {fmt(r['ratio_init_decoder'])} | {fmt(r['ratio_end_decoder'])} "
                     f"| {fmt(r['ratio_init_encoder'])} | {fmt(r['ratio_end_encoder'])} |")
    return "\n".join(lines) + "\n"


def plot_map(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """One heat map per scheme (rows: layers per stack; columns: learning rate), one colour scale for all: the mean
    validation NLL; a cell where any seed diverged shows the count, one where all did is hatched."""
    from .reproduce import _pyplot

    plt = _pyplot()
    if plt is None or not rows:
        return None
    import numpy as np

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    rates = sorted({r["learning_rate"] for r in rows})
    depths = sorted({r["depth"] for r in rows}, key=lambda d: int(d.split("+")[0]))
    cols = min(3, len(variants))
    fig, axes = plt.subplots(math.ceil(len(variants) / cols), cols, figsize=(4.2 * cols, 3.2 * math.ceil(
        len(variants) / cols)), squeeze=False, layout="constrained")
    image = None
    for ax, variant in zip(axes.flat, variants):
        grid = np.full((len(depths), len(rates)), np.nan)
        for r in rows:
            if r["variant"] == variant:
                grid[depths.index(r["depth"]), rates.index(r["learning_rate"])] = r["mean_nll"]
        image = ax.imshow(grid, cmap="viridis_r", vmin=NLL_RANGE[0], vmax=NLL_RANGE[1], aspect="auto", origin="lower")
        for r in rows:
            if r["variant"] != variant:
                continue
            i, j = depths.index(r["depth"]), rates.index(r["learning_rate"])
            if r["diverged"] == r["n"]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", color="crimson"))
            label = "div." if math.isnan(r["mean_nll"]) else f"{r['mean_nll']:.3g}" if r["mean_nll"] > 99 else \
                f"{r['mean_nll']:.2f}"
            if r["diverged"] and r["diverged"] < r["n"]:
                label += f"\n{r['diverged']}/{r['n']} div."
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color="white" if label != "div." else "crimson")
        ax.set_title(next(r["label"] for r in rows if r["variant"] == variant), fontsize=10)
        ax.set_xticks(range(len(rates)), [f"{lr:g}" for lr in rates], fontsize=7)
        ax.set_yticks(range(len(depths)), depths, fontsize=8)
        ax.set_xlabel("peak learning rate", fontsize=8)
        ax.set_ylabel("layers (enc+dec)", fontsize=8)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="validation NLL (lower is better)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["aggregate_map", "map_specs", "map_table", "plot_map", "ratio_table", "train_map_run"]
