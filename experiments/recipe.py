"""The Multi30k recipe's runs side by side: ``results/recipe/table.md`` from the runs' ``results.json`` copies.

    python -m experiments.recipe results/recipe

Every ``<name>.json`` in the folder is a ``run_translation.py`` results file; a ``<name>.test.txt`` beside it holds
its test hypotheses (one per line, in test-set order). The table gives each run's scheme, rate, seed, test and
validation BLEU, chrF, training minutes, threads, precision and distinct test outputs (a run that collapsed
translates nearly every sentence the same), and its layers per stack (``--encoder_layers`` /
``--decoder_layers``, else the preset's: the recipe's is 3+3). Runs are only ever compared with runs of the same
layers and seed: runs with hypotheses with Post-LN's (at its chosen rate) by sacreBLEU's paired bootstrap (1,000
resamples; a pair whose runs trained in different precision, bf16 autocast against float32, is marked †); where
a scheme has several seeds, a second table gives its mean ± std, the seed-paired difference to Post-LN and the
seeds that collapsed, and a third sets schemes head to head, seed by seed, each at its chosen rate (most seeds,
then validation BLEU): rSkip+LN against xSkip+LN of the same λ (the paper's "the recursion helps"), against
rSkip+LN of the next smaller λ, and against Pre-LN; a fourth sets every run at another rate against its scheme's run
at the chosen rate, same seed (what the rate search found).
``<name>-ablation.json`` files (what averaging and beam search bought, from decoding the same run's checkpoints)
are listed under the tables. ``comparisons.png`` beside the table draws every run's test BLEU, one panel per depth:
each scheme's seeds at its chosen rate filled, with their mean, the other rates searched hollow; runs far below the
rest (a collapse) are drawn at the panel's floor with their score written beside them.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _runs(folder: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "test_bleu" in result:  # a run's results (ablation files hold decoding scores only)
            runs[path.stem] = result
    return runs


def _hypotheses(folder: Path, name: str) -> list[str] | None:
    path = folder / f"{name}.test.txt"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else None


def _lr(result: dict[str, Any]) -> str:
    options = result.get("options") or {}
    lr = options.get("learning_rate")
    if lr is None and "--learning_rate" in result.get("command", ""):
        lr = result["command"].split("--learning_rate")[1].split()[0]
    return f"{float(lr):g}" if lr is not None else "?"


def _lam(result: dict[str, Any]) -> str:
    """λ as written (xSkip's configs store a float, rSkip's an int: both print as ``2``)."""
    return f"{float(result['skip_lambda']):g}"


def _precision(result: dict[str, Any]) -> str:
    """The autocast precision the run used (``mixed_precision``; runs saved before it was recorded: their option,
    which was never ``auto`` then)."""
    used = result.get("mixed_precision") or (result.get("options") or {}).get("mixed_precision") or "?"
    return "fp32" if used == "no" else used


ACROSS_PRECISION = "†"
"""Marks a comparison between a run trained in bf16 autocast and one trained in float32 (:func:`_across`)."""


def _across(first: dict[str, Any], second: dict[str, Any]) -> str:
    """:data:`ACROSS_PRECISION` when two runs trained in different known precisions, else nothing: such a pair's
    difference carries the precision as well as the scheme."""
    mine, theirs = _precision(first), _precision(second)
    return ACROSS_PRECISION if "?" not in (mine, theirs) and mine != theirs else ""


def _layers(result: dict[str, Any]) -> str:
    """Layers per stack as ``encoder+decoder``: the run's ``--encoder_layers`` / ``--decoder_layers``, else its
    preset's (runs saved without options used the recipe's ``small`` preset)."""
    from hf_rskip import TEXT_PRESETS

    options = result.get("options") or {}
    preset = TEXT_PRESETS.get(options.get("preset") or "small", TEXT_PRESETS["small"])
    encoder = options.get("encoder_layers") or preset["encoder_layers"]
    decoder = options.get("decoder_layers") or preset["decoder_layers"]
    return f"{encoder}+{decoder}"


def _depth_order(layers: str) -> tuple[int, ...]:
    return tuple(int(part) for part in layers.split("+"))


Group = tuple[str, str, str, str]
"""(layers, scheme, λ, rate)."""


def _groups(runs: dict[str, dict[str, Any]]) -> dict[Group, list[str]]:
    """Run names by (layers, scheme, λ, rate), pilots left out, shallow stacks first: one group is one scheme's
    runs over seeds."""
    groups: dict[Group, list[str]] = {}
    for name, r in runs.items():
        if not name.startswith("pilot"):
            groups.setdefault((_layers(r), r["residual_scheme"], _lam(r), _lr(r)), []).append(name)
    return dict(sorted(groups.items(), key=lambda item: (_depth_order(item[0][0]), item[0][1:])))


def _chosen(runs: dict[str, dict[str, Any]], groups: dict[Group, list[str]], hypotheses: dict[str, list[str]],
            layers: str, scheme: str, lam: str) -> dict[Any, str]:
    """Seed → run name of a scheme at its chosen rate for one depth, among runs with test hypotheses: the rate
    run over the most seeds; between rates of equally many seeds, the best mean validation BLEU (the rule the rates
    were chosen by; the test set never chooses)."""
    import statistics

    by_rate = [{runs[n]["seed"]: n for n in names if n in hypotheses}
               for (depth, s, lm, _), names in groups.items() if (depth, s, lm) == (layers, scheme, lam)]
    by_rate = [seeds for seeds in by_rate if seeds]

    def rank(seeds: dict[Any, str]) -> tuple[int, float]:
        return len(seeds), statistics.fmean(runs[n].get("eval_bleu", float("-inf")) for n in seeds.values())

    return max(by_rate, key=rank) if by_rate else {}


COLLAPSED_BELOW = 0.1
"""The fraction of distinct test outputs under which :func:`_collapsed` calls a run collapsed."""


def _collapsed(distinct: int, sentences: int) -> bool:
    """Whether a run collapsed: fewer distinct test outputs than a tenth of the test sentences (the 6+6 runs that
    failed at 3e-3 gave one or two outputs for 1,000 sentences; every run that trained gives nearly 1,000)."""
    return distinct < COLLAPSED_BELOW * sentences


def _by_scheme(runs: dict[str, dict[str, Any]], groups: dict[Group, list[str]], baselines: dict[tuple[str, Any], str],
               versus_post_ln: dict[str, dict[str, float]], collapsed: set[str]) -> list[str]:
    """Runs of one depth, scheme, λ and rate over seeds (pilots left out): mean ± std of test BLEU and, against
    the Post-LN run of each seed and depth (``baselines``: (layers, seed) → run name), the paired difference over
    seeds and every seed's paired-bootstrap p-value (``versus_post_ln``: run name → the main table's bootstrap), and
    the seeds that collapsed (``collapsed``: run names, :func:`_collapsed`): a mean over seeds hides a scheme that
    fails in one of them."""
    import statistics

    if not any(len(names) > 1 for names in groups.values()):
        return []
    lines = ["", "By scheme, over seeds (mean ± sample std; the difference to Post-LN is paired by seed):", "",
             "| layers | scheme | λ | lr | seeds | test BLEU | vs Post-LN, paired by seed | paired bootstrap p per "
             f"seed | collapsed (under {COLLAPSED_BELOW:.0%} distinct test outputs) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (layers, scheme, lam, lr), names in groups.items():
        bleus = [runs[n]["test_bleu"] for n in names]
        spread = f" ± {statistics.stdev(bleus):.2f}" if len(bleus) > 1 else ""
        compared = [n for n in names if n in versus_post_ln]
        deltas = [runs[n]["test_bleu"] - runs[baselines[layers, runs[n]["seed"]]]["test_bleu"] for n in compared]
        p_values = [f"{versus_post_ln[n]['p_value']:.3f}{_across(runs[n], runs[baselines[layers, runs[n]['seed']]])}"
                    for n in compared]
        versus = ""
        if len(deltas) == 1:
            versus = f"{deltas[0]:+.2f} (1 seed)"
        elif deltas:
            versus = f"{statistics.fmean(deltas):+.2f} ± {statistics.stdev(deltas):.2f} ({len(deltas)} seeds)"
        seeds = ", ".join(str(runs[n]["seed"]) for n in names)
        failed_seeds = [str(runs[n]["seed"]) for n in names if n in collapsed]
        failed = (f"seed{'s' if len(failed_seeds) > 1 else ''} {', '.join(failed_seeds)} of {len(names)}"
                  if failed_seeds else "")
        lines.append(f"| {layers} | {scheme} | {lam} | {lr} | {seeds} | {statistics.fmean(bleus):.2f}{spread} | "
                     f"{versus} | {', '.join(p_values)} | {failed} |")
    return lines


def _head_to_head(runs: dict[str, dict[str, Any]], groups: dict[Group, list[str]], hypotheses: dict[str, list[str]],
                  references: list[str]) -> list[str]:
    """The comparisons the paper's claims turn on, besides the one with Post-LN, paired by seed within each depth:
    rSkip+LN against xSkip+LN of the same λ (the recursion), rSkip+LN of each λ against the next smaller λ (what λ
    buys) and rSkip+LN against Pre-LN. Each scheme at its chosen rate (:func:`_chosen`); per seed the BLEU
    difference and sacreBLEU's paired bootstrap on the test hypotheses, then the mean ± std over seeds."""
    import statistics

    from experiments.reproduce import Variant, paired_bootstrap

    lines: list[str] = []
    for layers in dict.fromkeys(group[0] for group in groups):  # groups come shallow stacks first
        rskip_lams = sorted({_lam(r) for r in runs.values()
                             if r["residual_scheme"] == "rskip_ln" and _layers(r) == layers}, key=float)
        pairs = [(("rskip_ln", lam), ("xskip_ln", lam), "the recursion") for lam in rskip_lams]
        pairs += [(("rskip_ln", big), ("rskip_ln", small), "λ") for small, big in zip(rskip_lams, rskip_lams[1:])]
        pairs += [(("rskip_ln", lam), ("pre_ln", "1"), "pre-norm") for lam in rskip_lams]
        for system, baseline, what in pairs:
            mine_runs = _chosen(runs, groups, hypotheses, layers, *system)
            their_runs = _chosen(runs, groups, hypotheses, layers, *baseline)
            seeds = sorted(set(mine_runs) & set(their_runs))
            if not seeds:
                continue
            if not lines:
                lines = ["", "Head to head, paired by seed and depth (each scheme at its rate with the most seeds, "
                         "then by validation BLEU): the recursion (rSkip+LN against xSkip+LN of the same λ), λ, and "
                         "Pre-LN:", "",
                         "| layers | comparison | lr | seed | first | second | difference | paired bootstrap p |",
                         "|---|---|---|---|---|---|---|---|"]
            mine_label, their_label = (Variant(scheme, float(lam)).label for scheme, lam in (system, baseline))
            label = f"{layers} | {mine_label} vs {their_label} ({what})"
            deltas = []
            for seed in seeds:
                mine, theirs = runs[mine_runs[seed]], runs[their_runs[seed]]
                test = paired_bootstrap(hypotheses[their_runs[seed]], hypotheses[mine_runs[seed]], references)
                deltas.append(mine["test_bleu"] - theirs["test_bleu"])
                lines.append(f"| {label} | {_lr(mine)} / {_lr(theirs)} | {seed} | {mine['test_bleu']:.2f} | "
                             f"{theirs['test_bleu']:.2f} | {deltas[-1]:+.2f} | {test['p_value']:.3f}"
                             f"{_across(mine, theirs)} |")
            if len(deltas) > 1:
                lines.append(f"| {label} | | all {len(deltas)} | | | {statistics.fmean(deltas):+.2f} ± "
                             f"{statistics.stdev(deltas):.2f} | |")
    return lines


SCHEME_ORDER = ("post_ln", "pre_ln", "xskip", "xskip_ln", "rskip_ln")
"""The order schemes stand in in :func:`plot_comparisons` (the paper's: the baselines, then the block without and
with the recursion)."""


def comparison_points(runs: dict[str, dict[str, Any]], hypotheses: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One point per run (pilots left out) for :func:`plot_comparisons`: its ``layers``, scheme ``label``, ``rate``,
    ``seed``, ``bleu`` (test), whether the rate is the scheme's ``chosen`` one at that depth (:func:`_chosen`) and
    whether it ``collapsed`` (:func:`_collapsed`; runs without test hypotheses count as not collapsed)."""
    from experiments.reproduce import Variant

    groups = _groups(runs)
    points = []
    for (layers, scheme, lam, rate), names in groups.items():
        chosen = set(_chosen(runs, groups, hypotheses, layers, scheme, lam).values())
        for name in names:
            outputs = hypotheses.get(name)
            points.append({"run": name, "layers": layers, "scheme": scheme, "lambda": float(lam),
                           "label": Variant(scheme, float(lam)).label, "rate": rate, "seed": runs[name]["seed"],
                           "bleu": runs[name]["test_bleu"], "chosen": name in chosen,
                           "collapsed": bool(outputs) and _collapsed(len(set(outputs)), len(outputs))})
    return points


def plot_comparisons(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test BLEU by scheme, one panel per depth (matplotlib, Agg): at each scheme's chosen rate one filled dot per
    seed and a bar at their mean, other rates hollow with the rate written beside them. The panels share a y range
    set by the runs that trained (1 BLEU below the lowest chosen-rate run that did not collapse); runs below it are
    drawn as triangles on the floor with their BLEU written beside them, so a collapse shows without flattening
    the differences between the others."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({p["layers"] for p in points}, key=_depth_order)
    if not depths:
        raise ValueError("no recipe runs to plot: the folder holds no run results (<name>.json with test_bleu)")
    trained = [p["bleu"] for p in points if p["chosen"] and not p["collapsed"]] or [p["bleu"] for p in points]
    floor, top = min(trained) - 1.0, max(p["bleu"] for p in points) + 0.6
    def order(variant: tuple[str, float]) -> tuple[int, float]:
        scheme, lam = variant
        return SCHEME_ORDER.index(scheme) if scheme in SCHEME_ORDER else len(SCHEME_ORDER), lam

    labels = {(p["scheme"], p["lambda"]): p["label"] for p in points}
    colours = {variant: f"C{i % 10}" for i, variant in enumerate(sorted(labels, key=order))}  # same in every panel
    fig, axes = plt.subplots(1, len(depths), figsize=(6 * len(depths), 4.6), sharey=True, squeeze=False)
    for ax, layers in zip(axes[0], depths):
        mine = [p for p in points if p["layers"] == layers]
        variants = sorted({(p["scheme"], p["lambda"]) for p in mine}, key=order)
        for x, (scheme, lam) in enumerate(variants):
            colour = colours[scheme, lam]
            runs = [p for p in mine if (p["scheme"], p["lambda"]) == (scheme, lam)]
            chosen = sorted((p for p in runs if p["chosen"]), key=lambda p: p["seed"])
            others = sorted((p for p in runs if not p["chosen"]), key=lambda p: (p["rate"], p["seed"]))
            for i, p in enumerate(chosen):
                dx = (i - (len(chosen) - 1) / 2) * 0.08
                _draw(ax, x + dx, p["bleu"], floor, colour, filled=True)
            if chosen:
                mean = statistics.fmean(p["bleu"] for p in chosen)
                if mean >= floor:
                    ax.hlines(mean, x - 0.22, x + 0.22, colors=colour, linewidth=2)
                else:  # a collapsed seed pulls the mean off the panel: say where it is
                    ax.annotate(f"mean {mean:.1f}", (x, floor), xytext=(0, 20), textcoords="offset points",
                                fontsize=6, color=colour, ha="center")
            for i, p in enumerate(others):
                _draw(ax, x + 0.3 + 0.05 * i, p["bleu"], floor, colour, filled=False,
                      note=f"lr {_short(p['rate'])}")
        ax.set_xticks(range(len(variants)), [labels[v] for v in variants], rotation=20, ha="right")
        ax.set_title(f"{layers} layers")
        ax.set_ylim(floor - 0.4, top)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test BLEU (test_2016_flickr)")
    fig.suptitle("Multi30k EN→DE recipe: filled, each seed at the scheme's chosen rate (bar: mean); "
                 "hollow, another rate", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short(rate: str) -> str:
    """A learning rate as the README writes it: ``0.0015`` → ``1.5e-3`` (``?`` stays ``?``)."""
    try:
        value = float(rate)
    except ValueError:
        return rate
    exponent = math.floor(math.log10(value)) if value > 0 else 0
    return f"{value / 10 ** exponent:.3g}e{exponent}" if exponent else f"{value:g}"


def _draw(ax: Any, x: float, bleu: float, floor: float, colour: str, *, filled: bool, note: str = "") -> None:
    """One run's point; below the floor, a triangle on it with the BLEU written beside."""
    face = colour if filled else "none"
    if bleu >= floor:
        ax.scatter([x], [bleu], s=30, marker="o" if filled else "s", facecolors=face, edgecolors=colour, zorder=3)
        if note:
            ax.annotate(note, (x, bleu), xytext=(4, 0), textcoords="offset points", fontsize=6, va="center")
    else:
        ax.scatter([x], [floor], s=40, marker="v", facecolors=face, edgecolors=colour, zorder=3)
        ax.annotate("\n".join(filter(None, (note, f"BLEU {bleu:.1f}"))), (x, floor), xytext=(5, -2),
                    textcoords="offset points", fontsize=6, va="bottom")


def _load(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The folder's runs and, for those with a ``.test.txt``, their test hypotheses (read once)."""
    runs = _runs(folder)
    return runs, {name: h for name in runs if (h := _hypotheses(folder, name)) is not None}


def _rates_searched(runs: dict[str, dict[str, Any]], groups: dict[Group, list[str]], hypotheses: dict[str, list[str]],
                    references: list[str]) -> list[str]:
    """What the rate search found: every run at a rate other than its scheme's chosen one (:func:`_chosen`) against
    the chosen-rate run of the same depth, scheme, λ and seed, by validation BLEU (the rule the rates were chosen by)
    and test BLEU with sacreBLEU's paired bootstrap."""
    from experiments.reproduce import Variant, paired_bootstrap

    lines: list[str] = []
    for (layers, scheme, lam, _), names in groups.items():
        chosen = _chosen(runs, groups, hypotheses, layers, scheme, lam)
        for name in names:
            partner = chosen.get(runs[name]["seed"])
            if name not in hypotheses or partner is None or partner == name:
                continue
            if not lines:
                lines = ["", "Rates searched: each run at another rate against its scheme's run at the chosen rate, "
                         "same depth and seed:", "",
                         "| layers | scheme | seed | rate / chosen rate | val BLEU | test BLEU | test difference | "
                         "paired bootstrap p |", "|---|---|---|---|---|---|---|---|"]
            mine, theirs = runs[name], runs[partner]
            test = paired_bootstrap(hypotheses[partner], hypotheses[name], references)
            lines.append(f"| {layers} | {Variant(scheme, float(lam)).label} | {mine['seed']} | {_lr(mine)} / "
                         f"{_lr(theirs)} | {mine.get('eval_bleu', float('nan')):.2f} / "
                         f"{theirs.get('eval_bleu', float('nan')):.2f} | {mine['test_bleu']:.2f} / "
                         f"{theirs['test_bleu']:.2f} | {mine['test_bleu'] - theirs['test_bleu']:+.2f} | {test['p_value']:.3f}"
                         f"{_across(mine, theirs)} |")
    return lines


def report(folder: Path) -> str:
    """``table.md``'s text for a folder of recipe runs (the module's docstring says what it holds)."""
    return _report(folder, *_load(folder))


def _report(folder: Path, runs: dict[str, dict[str, Any]], hypotheses: dict[str, list[str]]) -> str:
    from experiments.reproduce import paired_bootstrap
    from hf_rskip.data import clean_pairs, load_recipe

    test, _ = clean_pairs(load_recipe("local_multi30k_en_de")["test"], "en", "de")
    references = [pair["de"] for pair in test["translation"]]
    # (layers, seed) → Post-LN's run at its chosen rate for that depth
    groups = _groups(runs)
    baselines = {(layers, seed): name for layers in {group[0] for group in groups}
                 for seed, name in _chosen(runs, groups, hypotheses, layers, "post_ln", "1").items()}
    lines = ["# Multi30k EN→DE recipe runs (test_2016_flickr, sacreBLEU 13a)", "",
             "| run | layers | scheme | λ | lr | seed | test BLEU | test chrF | val BLEU | training (min) | threads "
             "| precision | distinct test outputs | vs Post-LN, same layers and seed (paired bootstrap) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    versus_post_ln: dict[str, dict[str, float]] = {}  # run name → paired bootstrap against Post-LN, same seed
    distinct = {name: len(set(outputs)) for name, outputs in hypotheses.items()}  # counted once, for both tables
    for name, r in runs.items():
        versus = ""
        base = baselines.get((_layers(r), r["seed"]))
        if base is not None and base != name and name in hypotheses:
            test_result = versus_post_ln[name] = paired_bootstrap(hypotheses[base], hypotheses[name], references)
            versus = (f"{test_result['delta']:+.2f} BLEU, p = {test_result['p_value']:.3f}"
                      f"{_across(r, runs[base])}")
        minutes = r.get("train_runtime", float("nan")) / 60
        resumed = "*" if r.get("resumed_from") else ""  # stopped and continued: the minutes add both parts
        outputs = f"{distinct[name]:,} of {len(hypotheses[name]):,}" if name in hypotheses else ""
        lines.append(f"| {name} | {_layers(r)} | {r['residual_scheme']} | {_lam(r)} | {_lr(r)} | {r['seed']} | "
                     f"{r['test_bleu']:.2f} | {r['test_chrf']:.2f} | {r.get('eval_bleu', float('nan')):.2f} | "
                     f"{minutes:.1f}{resumed} | {r.get('threads', '?')} | {_precision(r)} | {outputs} | {versus} |")
    if any(r.get("resumed_from") for r in runs.values()):
        lines += ["", "\\* resumed from a checkpoint after an interruption (`resumed_from` in its JSON): its training "
                  "minutes add the parts before and after, and can include time the machine was shared."]
    collapsed = {name for name, count in distinct.items() if _collapsed(count, len(hypotheses[name]))}
    lines += _by_scheme(runs, groups, baselines, versus_post_ln, collapsed)
    lines += _head_to_head(runs, groups, hypotheses, references)
    lines += _rates_searched(runs, groups, hypotheses, references)
    if any(ACROSS_PRECISION in line for line in lines):
        lines += ["", f"{ACROSS_PRECISION} the two runs compared trained in different precision (bf16 autocast and "
                  "float32: the precision column): the difference carries the precision as well as the scheme."]
    ablations = sorted(folder.glob("*-ablation.json"))
    if ablations:
        lines += ["", "What averaging and beam search bought (test BLEU, the same run decoded again):", ""]
        for path in ablations:
            scores = json.loads(path.read_text(encoding="utf-8"))
            lines.append(f"- {path.name.removesuffix('-ablation.json')}: "
                         + ", ".join(f"{key.replace('_', ' ')} {value:.2f}" for key, value in scores.items()))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0] if args else "results/recipe")
    runs, hypotheses = _load(folder) if folder.is_dir() else ({}, {})
    if not runs:  # before anything is written: an existing table is not replaced by an empty one
        raise SystemExit(f"experiments.recipe: {folder} holds no recipe runs (<name>.json with test_bleu, from "
                         "run_translation.py's results.json)")
    text = _report(folder, runs, hypotheses)
    (folder / "table.md").write_text(text, encoding="utf-8")
    plot_comparisons(comparison_points(runs, hypotheses), folder / "comparisons.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main", "report"]
