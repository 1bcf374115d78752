"""Reproduction building blocks: variants, planning, learning-rate choice, resumable runs, aggregation, the table,
plots, and a micro end-to-end sweep with the package's real training code."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from experiments.reproduce import (
    PRESETS,
    RunSpec,
    Variant,
    aggregate,
    best_learning_rates,
    compare_to_reference,
    fixed_learning_rates,
    get_preset,
    markdown_table,
    plan_final,
    plan_search,
    plot_grad_norms,
    plot_learning_curves,
    plot_metric,
    reproduce,
    search_table,
    run_specs,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_variant_keys_labels_and_parse_round_trip():
    cases = {
        Variant("post_ln"): ("post_ln", "Post-LN"),
        Variant("xskip", 2): ("xskip-2", "xSkip λ=2"),
        Variant("rskip_ln", 3): ("rskip_ln-3", "rSkip+LN λ=3"),
        Variant("rskip_ln", 2, "batch"): ("rskip_ln-2-bn", "rSkip+BN λ=2"),
        Variant("xskip_ln", 1.5): ("xskip_ln-1.5", "xSkip+LN λ=1.5"),
    }
    for variant, (key, label) in cases.items():
        assert (variant.key, variant.label) == (key, label)
        assert Variant.parse(key) == variant
    assert Variant("rskip_ln", 2, "batch").config_options() == {
        "residual_scheme": "rskip_ln", "skip_lambda": 2, "residual_norm": "batch"}


def test_presets_cover_the_papers_grid():
    issue_text = {"post_ln", "pre_ln", "xskip_ln-2", "rskip_ln-2", "rskip_ln-3"}
    for name in ("cpu", "gpu"):
        preset = PRESETS[name]
        assert {Variant(*v).key for v in preset["text"]["variants"]} == issue_text
        assert {Variant(*v).key for v in preset["vision"]["variants"]} == {"xskip-1", "rskip_ln-2", "rskip_ln-2-bn"}
        assert len(preset["text"]["seeds"]) == len(preset["vision"]["seeds"]) == 3
        assert preset["grad"]["text_size"]["encoder_layers"] >= 18 and preset["grad"]["resnet_depth"] == 110
        # the xSkip-without-norm claim is the gradient analysis's and the map's: every scheme of the paper there
        assert {Variant(*v).key for v in preset["grad"]["variants"]} >= issue_text | {"xskip-1", "xskip-2"}
        for task in ("text", "vision"):  # every fixed rate names a variant of the sweep
            fixed_learning_rates(preset[task])
    assert len(PRESETS["cpu"]["text"]["depths"]) >= 2  # depth is an axis
    # the gpu preset goes where CPUs cannot: a deeper text stack, the paper's ResNet-110; every text scheme at a rate
    deepest_cpu = max(size["encoder_layers"] for size in PRESETS["cpu"]["text"]["depths"].values())
    assert min(size["encoder_layers"] for size in PRESETS["gpu"]["text"]["depths"].values()) > deepest_cpu
    assert [size["depth"] for size in PRESETS["gpu"]["vision"]["depths"].values()] == [110]
    assert plan_search("text", PRESETS["gpu"]["text"]) == []
    assert {s.variant.key: s.learning_rate for s in plan_final("text", PRESETS["gpu"]["text"], {})} == \
        PRESETS["gpu"]["text"]["learning_rates"]


def test_fixed_learning_rates_replace_the_search_for_their_variants():
    settings = {**SETTINGS, "learning_rates": {"post_ln": 5e-4, "b/post_ln": 7e-4}}
    assert fixed_learning_rates(settings) == {("a", "post_ln"): 5e-4, ("b", "post_ln"): 7e-4}
    search = plan_search("text", settings)
    assert {s.variant.key for s in search} == {"rskip_ln-2"} and len(search) == 2 * 2  # 2 depths x 2 rates
    final = plan_final("text", settings, {("a", "rskip_ln-2"): 2e-3, ("a", "post_ln"): 2e-3})
    assert {(s.depth, s.variant.key): s.learning_rate for s in final} == {
        ("a", "post_ln"): 5e-4, ("b", "post_ln"): 7e-4, ("a", "rskip_ln-2"): 2e-3, ("b", "rskip_ln-2"): 1e-3}
    for bad, message in (({"rskip_ln-9": 1e-3}, r"'rskip_ln-9' names no variant of this sweep; accepted: a variant"),
                         ({"c/post_ln": 1e-3}, r"'c/post_ln' names no variant"),
                         ({"post_ln": 0}, r"'post_ln' is 0; it must be a positive number"),
                         ({"post_ln": "1e-3"}, r"'post_ln' is '1e-3'; it must be a positive number"),
                         ({"post_ln": float("nan")}, r"it must be a positive number")):
        with pytest.raises(ValueError, match=message):
            plan_final("text", {**SETTINGS, "learning_rates": bad}, {})


def test_get_preset_merges_nested_overrides_without_touching_the_original():
    preset = get_preset("smoke", {"text": {"steps": 3, "depths": {"1+1": {"d_model": 8}}}, "jobs": 2})
    assert preset["text"]["steps"] == 3 and preset["text"]["depths"] == {"1+1": {"d_model": 8}}
    assert preset["text"]["seeds"] == PRESETS["smoke"]["text"]["seeds"] and preset["jobs"] == 2
    assert PRESETS["smoke"]["text"]["steps"] != 3
    with pytest.raises(ValueError, match="preset='nope'"):
        get_preset("nope")


SETTINGS = dict(depths={"a": {}, "b": {}}, variants=[("post_ln", 1), ("rskip_ln", 2)], seeds=[0, 1],
                lr_grid=[1e-3, 2e-3], search_steps=5, steps=9)


def test_planning_searches_with_one_seed_then_runs_every_seed_at_its_own_lr():
    search = plan_search("text", SETTINGS)
    assert len(search) == 2 * 2 * 2 and {s.seed for s in search} == {0} and {s.steps for s in search} == {5}
    # post_ln prefers 1e-3 at depth a, rskip 2e-3; a diverged (nan) run never wins
    scores = {("a", "post_ln", 1e-3): 3.0, ("a", "post_ln", 2e-3): 4.0, ("a", "rskip_ln-2", 1e-3): float("nan"),
              ("a", "rskip_ln-2", 2e-3): 5.0, ("b", "post_ln", 1e-3): 3.0, ("b", "post_ln", 2e-3): 2.0,
              ("b", "rskip_ln-2", 1e-3): 3.0, ("b", "rskip_ln-2", 2e-3): 3.5}
    results = [{"spec": s.to_dict(), "selection_score": scores[(s.depth, s.variant.key, s.learning_rate)]}
               for s in search]
    best = best_learning_rates(results, higher_is_better=False)
    assert best == {("a", "post_ln"): 1e-3, ("a", "rskip_ln-2"): 2e-3, ("b", "post_ln"): 2e-3,
                    ("b", "rskip_ln-2"): 1e-3}
    final = plan_final("text", SETTINGS, best)
    assert len(final) == 2 * 2 * 2 and {s.phase for s in final} == {"final"}
    assert {(s.depth, s.variant.key): s.learning_rate for s in final} == best
    assert plan_search("text", {**SETTINGS, "lr_grid": [1e-3]}) == []
    assert {s.learning_rate for s in plan_final("text", {**SETTINGS, "lr_grid": [7e-4]}, {})} == {7e-4}


def test_search_at_the_final_budget_reuses_the_chosen_run_as_the_first_seeds_final(tmp_path):
    settings = {**SETTINGS, "search_steps": "final"}
    search = plan_search("text", settings)
    assert {(s.phase, s.steps, s.seed) for s in search} == {("final", 9, 0)}
    with pytest.raises(ValueError, match="vision: search_steps='final' is for text only"):
        plan_search("vision", settings)
    calls: list[str] = []

    def fake_train(spec: RunSpec) -> dict:  # validation NLL lowest at 2e-3 for post_ln, 1e-3 for rskip
        calls.append(spec.run_id)
        nll = {("post_ln", 1e-3): 4.0, ("post_ln", 2e-3): 3.0, ("rskip_ln-2", 1e-3): 3.0,
               ("rskip_ln-2", 2e-3): 5.0}[(spec.variant.key, spec.learning_rate)]
        return {"selection_score": nll, "metric": 100 * spec.learning_rate + spec.seed, "metric_name": "BLEU",
                "history": [{"step": spec.steps, "loss": nll}]}

    preset = {"text": {**settings, "depths": {"a": {}}}, "jobs": 1}
    summary = reproduce(preset, tmp_path, tasks=["text"], gradients=False, train_fn=fake_train, log=lambda _: None)
    # 2 variants x 2 rates for seed 0, then seed 1 at the chosen rate only: nothing is trained twice
    assert len(calls) == len(set(calls)) == 2 * 2 + 2
    assert summary["learning_rates"] == {"text": {"a/post_ln": 2e-3, "a/rskip_ln-2": 1e-3}}
    rows = {row["variant"]: row for row in summary["rows"]}
    assert rows["post_ln"]["values"] == [0.2, 1.2] and rows["rskip_ln-2"]["values"] == [0.1, 1.1]
    assert len(summary["runs"]) == 6  # every run listed once, the other rates of the search included
    table = (tmp_path / "table.md").read_text()
    assert "| lr 0.001 | lr 0.002 |" in table
    assert "| a | Post-LN | 4.000 / 0.10 | **3.000 / 0.20** |" in table
    assert "| a | rSkip+LN λ=2 | **3.000 / 0.10** | 5.000 / 0.20 |" in table


def test_search_table_marks_diverged_runs_and_the_chosen_rate():
    runs = [{"spec": RunSpec("vision", "r20", Variant.parse(v), lr, 0, "search", 60).to_dict(), "selection_score": s}
            for v, lr, s in (("xskip-1", 0.1, 30.0), ("xskip-1", 0.2, float("nan")), ("pre_ln", 0.1, 25.5))]
    table = search_table(runs, {"vision": {"r20/xskip-1": 0.1, "r20/pre_ln": 0.1}})
    assert "CIFAR-10 learning-rate search (60 steps, seed 0; held-out accuracy (%))" in table
    assert "| r20 | xSkip λ=1 | **30.000** | diverged |" in table
    assert "| r20 | Pre-LN | **25.500** | – |" in table


def test_run_specs_saves_each_result_and_skips_finished_runs(tmp_path):
    calls: list[str] = []

    def fake_train(spec: RunSpec) -> dict:
        calls.append(spec.run_id)
        return {"metric": float(spec.seed), "history": []}

    specs = plan_final("text", SETTINGS, {})
    first = run_specs(specs[:3], fake_train, tmp_path, log=lambda _: None)
    report = run_specs(specs, fake_train, tmp_path, only_existing=True, log=lambda _: None)
    assert [r["run_id"] for r in report] == [s.run_id for s in specs[:3]] and len(calls) == 3
    again = run_specs(specs, fake_train, tmp_path, log=lambda _: None)
    assert len(calls) == len(specs)  # the first three were not trained twice
    assert [r["run_id"] for r in again] == [s.run_id for s in specs]
    assert again[:3] == [json.loads(json.dumps(r, default=str)) for r in first]
    assert RunSpec.from_dict(again[0]["spec"]) == specs[0]
    # a saved run of another budget under the same id is never reported as this one, nor overwritten
    longer = [dataclasses.replace(spec, steps=spec.steps * 2) for spec in specs[:1]]
    with pytest.raises(ValueError, match=r"holds a run with steps=\d+ \(now \d+\); move it out of"):
        run_specs(longer, fake_train, tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "runs" / f"{specs[0].run_id}.json").read_text())
    assert len(calls) == len(specs) and saved == again[0]


def test_run_specs_trains_the_first_seed_of_every_setting_first(tmp_path):
    """A sweep stopped early has every setting at some seeds, not some settings at every seed."""
    calls: list[tuple[str, int]] = []

    def fake_train(spec: RunSpec) -> dict:
        calls.append((spec.task, spec.seed))
        return {"metric": 1.0, "history": []}

    specs = plan_final("text", {**SETTINGS, "seeds": [5, 1, 3]}, {}) + plan_final("vision", SETTINGS, {})
    results = run_specs(specs, fake_train, tmp_path, log=lambda _: None)
    assert [r["run_id"] for r in results] == [s.run_id for s in specs]  # reported in plan order
    ranks = [{"text": [5, 1, 3], "vision": [0, 1]}[task].index(seed) for task, seed in calls]
    assert ranks == sorted(ranks) and calls[:8] == [("text", 5)] * 4 + [("vision", 0)] * 4


def _final(task, depth, variant, seed, metric, diverged=False):
    spec = RunSpec(task, depth, Variant.parse(variant), 1e-3, seed, "final", 10)
    return {"spec": spec.to_dict(), "metric": metric, "metric_name": "BLEU", "diverged": diverged,
            "history": [{"step": 5, "loss": 5.0 - seed}, {"step": 10, "loss": 4.0, "valid_nll": 4.5}]}


def test_aggregate_compare_and_table():
    results = [_final("text", "3+3", "post_ln", s, m) for s, m in ((0, 20.0), (1, 22.0))]
    results += [_final("text", "3+3", "rskip_ln-2", s, m) for s, m in ((0, 17.0), (1, 18.0))]
    results += [_final("text", "3+3", "xskip-2", s, m) for s, m in ((0, 20.5), (1, 22.5))]
    results += [_final("text", "3+3", "xskip-1", 0, float("nan"), diverged=True)]
    rows = compare_to_reference(aggregate(results))
    by = {r["variant"]: r for r in rows}
    assert by["post_ln"]["mean"] == 21.0 and by["post_ln"]["std"] == pytest.approx(math.sqrt(2))
    assert by["rskip_ln-2"]["delta"] == pytest.approx(-3.5)
    assert by["rskip_ln-2"]["beyond_spread"] is True  # 3.5 > 1.41 + 0.71
    assert by["xskip-2"]["beyond_spread"] is False
    assert by["xskip-1"]["values"] == [0.0] and by["xskip-1"]["diverged"] == 1
    assert by["xskip-1"]["beyond_spread"] is None  # one seed: no spread to compare with
    table = markdown_table(rows)
    assert "| 3+3 | rSkip+LN λ=2 | 0.001 | 17.50 ± 0.71 | 2 | -3.50 | **yes** |" in table
    assert "| 3+3 | Post-LN | 0.001 | 21.00 ± 1.41 | 2 | (reference) | – |" in table
    assert "n/a (1 seed)" in table and "(1 diverged)" in table


def test_vision_rows_pair_seeds_with_the_reference():
    """Images have no per-sentence bootstrap: the table pairs each seed with the reference's same seed instead."""
    results = [{**_final("vision", "resnet-20", "xskip-1", s, m), "metric_name": "accuracy"}
               for s, m in ((0, 70.0), (1, 68.0), (2, 69.0))]
    # seed 3 has no reference run: it counts in the mean but not in the pairing
    results += [{**_final("vision", "resnet-20", "rskip_ln-2", s, m), "metric_name": "accuracy"}
                for s, m in ((0, 69.0), (1, 68.5), (2, 69.0), (3, 50.0))]
    rows = compare_to_reference(aggregate(results))
    by = {r["variant"]: r for r in rows}
    assert by["rskip_ln-2"]["seed_deltas"] == [{"seed": 0, "delta": -1.0}, {"seed": 1, "delta": 0.5},
                                               {"seed": 2, "delta": 0.0}]
    assert by["xskip-1"]["seed_deltas"] == []  # the reference itself
    table = markdown_table(rows)
    assert "| per-seed Δ (paired mean ± std) |" in table
    row = next(line for line in table.splitlines() if line.startswith("| resnet-20 | rSkip+LN λ=2 |"))
    assert row.endswith("| 4 | -4.88 | no | -1.00, +0.50, +0.00 (-0.17 ± 0.76) |")


def test_plots_are_written(tmp_path):
    results = [_final("text", d, v, s, 10.0 + s) for d in ("3+3", "12+12") for v in ("post_ln", "rskip_ln-2")
               for s in (0, 1)]
    rows = compare_to_reference(aggregate(results))
    assert plot_metric(rows, "text", tmp_path / "m.png").stat().st_size > 0
    assert plot_learning_curves(results, "text", tmp_path / "c.png").stat().st_size > 0
    assert plot_metric(rows, "vision", tmp_path / "v.png") is None
    profile = {"param": {"encoder.layers.0": 1.0, "encoder.layers.1": 0.5, "decoder.layers.0": 2.0},
               "output": {"encoder.layers.0": 1.0, "encoder.layers.1": 0.5, "decoder.layers.0": 2.0}}
    analysis = {"settings": {"steps": 3}, "text": {"post_ln": {"init": profile, "trained": profile}}}
    assert plot_grad_norms(analysis, tmp_path / "g.png").stat().st_size > 0


def test_micro_sweep_end_to_end_with_the_real_training_code(tmp_path, shared_data):
    """Both tasks, an LR search, two seeds, the gradient analysis, on the staged data, in a few seconds."""
    preset = get_preset("smoke", {
        "text": {"data": {"max_train_pairs": 300, "max_valid_pairs": 20, "max_test_pairs": 10, "vocab_size": 200,
                          "max_length": 24},
                 "depths": {"1+1": {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                                    "encoder_attention_heads": 2, "decoder_attention_heads": 2,
                                    "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}},
                 "search_steps": 2, "steps": 3, "eval_every": 2, "max_tokens": 512},
        "vision": {"data": {"max_train_images": 48, "max_test_images": 32, "held_out": 16},
                   "depths": {"resnet-8": {"depth": 8, "hidden_sizes": [4, 8, 8]}},
                   "variants": [["xskip", 1], ["rskip_ln", 2, "batch"]], "lr_grid": [0.05, 0.1],
                   "search_steps": 1, "steps": 2, "batch_size": 16, "eval_every": 1},
        "grad": {"text_size": {"d_model": 16, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
                               "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32},
                 "resnet_depth": 8, "steps": 1, "batch_pairs": 4, "resnet_batch": 4,
                 "variants": [["post_ln", 1], ["rskip_ln", 2]]},
    })
    summary = reproduce(preset, tmp_path, preset_name="micro", command="pytest", log=lambda _: None)
    assert {(r["task"], r["variant"]) for r in summary["rows"]} == {
        ("text", "post_ln"), ("text", "rskip_ln-2"), ("vision", "xskip-1"), ("vision", "rskip_ln-2-bn")}
    assert all(r["n"] == 2 for r in summary["rows"])
    assert set(summary["learning_rates"]["text"]) == {"1+1/post_ln", "1+1/rskip_ln-2"}
    assert summary["data"]["text"]["test_pairs"] == 10
    text_final = [r for r in summary["runs"] if r["spec"]["task"] == "text" and r["spec"]["phase"] == "final"]
    assert all("BLEU" in r["bleu_signature"] or r["bleu_signature"] for r in text_final)
    grads = summary["gradient_analysis"]
    assert list(grads["text"]["rskip_ln-2"]["init"]["param"])[:1] == ["encoder.layers.0"]
    assert set(grads["vision"]) == {"xskip-1", "post_ln", "rskip_ln-2"}
    for name in ("results.json", "table.md", "text_metric.png", "text_curves.png", "vision_metric.png",
                 "grad_norms_param.png", "grad_norms_output.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "table.md").read_text()
    assert "Δ > seed spread?" in table and "Gradient norm per layer" in table
    # the analysis is kept like a finished run: a report rebuilt from the folder carries it
    assert json.loads((tmp_path / "gradient_analysis.json").read_text()) == json.loads(json.dumps(grads))
    (tmp_path / "results.json").unlink()  # as if the sweep had been stopped before its report
    report = reproduce(preset, tmp_path, report_only=True, command="rebuild", log=lambda _: None)
    assert report["gradient_analysis"] == json.loads(json.dumps(grads))
    assert (report["command"], report["report_command"]) == ("pytest", "rebuild")


def test_parallel_sweep_shares_one_pool_and_measures_gradients_beside_it(tmp_path, shared_data):
    """jobs > 1 (the gpu preset's way): worker processes train text and image runs from one pool while one more
    process measures the gradients; the first seed of every setting is trained first."""
    tiny_text = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}
    preset = get_preset("smoke", {
        "jobs": 2,
        "text": {"data": {"max_train_pairs": 200, "max_valid_pairs": 10, "max_test_pairs": 5, "vocab_size": 150,
                          "max_length": 16},
                 "depths": {"1+1": tiny_text}, "variants": [["post_ln", 1]], "lr_grid": [1e-3], "steps": 2,
                 "eval_every": 2, "max_tokens": 256, "learning_rates": {"post_ln": 2e-3}},
        "vision": {"data": {"max_train_images": 32, "max_test_images": 16, "held_out": 8},
                   "depths": {"resnet-8": {"depth": 8, "hidden_sizes": [4, 8, 8]}}, "variants": [["xskip", 1]],
                   "steps": 2, "batch_size": 16, "eval_every": 2},
        "grad": {"text_size": tiny_text, "resnet_depth": 8, "steps": 1, "batch_pairs": 4, "resnet_batch": 4,
                 "variants": [["rskip_ln", 2]]},
    })
    messages: list[str] = []
    summary = reproduce(preset, tmp_path, log=messages.append)
    assert {(r["task"], r["variant"], r["n"]) for r in summary["rows"]} == {("text", "post_ln", 2),
                                                                           ("vision", "xskip-1", 2)}
    assert summary["fixed_learning_rates"] == {"text": {"1+1/post_ln": 2e-3}}
    assert {r["spec"]["learning_rate"] for r in summary["runs"] if r["spec"]["task"] == "text"} == {2e-3}
    assert "4 runs to do (0 already done), 2 at a time" in messages
    grads = json.loads((tmp_path / "gradient_analysis.json").read_text())
    assert set(grads["text"]) == {"rskip_ln-2"} and set(grads["vision"]) == {"xskip-1", "rskip_ln-2"}
    assert summary["gradient_analysis"] == grads
    assert "fixed by the preset (rates chosen by earlier runs)" in (tmp_path / "table.md").read_text()


def test_paired_bootstrap_finds_a_real_difference_and_not_a_fake_one():
    from experiments.reproduce import add_significance, paired_bootstrap

    references = [f"the cat number {i} sat on the mat today" for i in range(200)]
    good = list(references)
    bad = [f"a dog number {i} stood near a mat" for i in range(200)]
    strong = paired_bootstrap(bad, good, references, samples=200)
    assert strong["delta"] > 50 and strong["p_value"] < 0.05
    # two systems as good as each other, on different halves of the test set: no significant difference
    first, second = good[:100] + bad[100:], bad[:100] + good[100:]
    even = paired_bootstrap(first, second, references, samples=200)
    assert abs(even["delta"]) < 2 and even["p_value"] > 0.2
    # two runs that collapsed to the same output: not a significant difference (sacreBLEU alone says p = 0.005 here)
    assert paired_bootstrap(bad, list(bad), references, samples=200) == {"delta": 0.0, "p_value": 1.0}
    spec = {"task": "text", "depth": "3+3", "phase": "final", "steps": 1, "learning_rate": 1e-3}
    results = [{"spec": {**spec, "variant": v, "seed": s}, "test_hypotheses": h}
               for v, h in (("post_ln", bad), ("rskip_ln-2", good)) for s in (0, 1)]
    rows = [{"task": "text", "depth": "3+3", "variant": "post_ln", "seeds": [0, 1]},
            {"task": "text", "depth": "3+3", "variant": "rskip_ln-2", "seeds": [0, 1]}]
    out = add_significance(rows, results, references)
    assert "bootstrap" not in out[0] and out[1]["significant_seeds"] == 2
    assert [t["seed"] for t in out[1]["bootstrap"]] == [0, 1]


def test_trainability_map_micro_run_records_divergence_and_gradient_ratios(tmp_path, shared_data):
    preset = get_preset("smoke", {"map": {"depths": [1, 2], "lr_grid": [1e-3, 1e9], "steps": 3, "warmup_steps": 1,
                                          "variants": [["post_ln", 1], ["xskip", 2]], "max_tokens": 256},
                                  "text": {"data": {"max_train_pairs": 200, "max_valid_pairs": 16,
                                                    "max_test_pairs": 8, "vocab_size": 200, "max_length": 24}}})
    summary = reproduce(preset, tmp_path, tasks=["map"], gradients=False, preset_name="micro-map", command="pytest",
                        log=lambda _: None)
    cells = {(r["variant"], r["depth"], r["learning_rate"]): r for r in summary["map"]}
    assert len(cells) == 8
    assert cells[("post_ln", "1+1", 1e9)]["diverged"] == 1  # an absurd rate diverges, and is recorded as such
    assert math.isfinite(cells[("post_ln", "2+2", 1e-3)]["mean_nll"])
    assert math.isfinite(cells[("post_ln", "2+2", 1e-3)]["ratio_init_decoder"])
    assert (tmp_path / "trainability_map.png").stat().st_size > 0
    assert "Trainability map" in (tmp_path / "table.md").read_text()


def test_text_rows_mark_the_seeds_the_bootstrap_calls_significant():
    results = [_final("text", "3+3", "post_ln", s, m) for s, m in ((0, 20.0), (1, 22.0))]
    results += [_final("text", "3+3", "rskip_ln-2", s, m) for s, m in ((0, 17.0), (1, 22.5))]
    rows = compare_to_reference(aggregate(results))
    rows = [{**r, "bootstrap": [{"seed": 0, "delta": -3.0, "p_value": 0.001}, {"seed": 1, "delta": 0.5,
                                                                                  "p_value": 0.3}]}
            if r["variant"] == "rskip_ln-2" else r for r in rows]
    table = markdown_table(rows)
    assert "marked * differ at p < 0.05" in table
    assert "| -3.00*, +0.50 (-1.25 ± 2.47) |" in table


def _fake_python(tmp_path: Path, sweep: str) -> Path:
    """A stand-in for ``python`` under scripts/reproduce_gpu.sh: records each call; the sweep runs ``sweep``."""
    fake = tmp_path / "fake-python"
    fake.write_text(f"""#!/bin/bash
echo "$*" >> {tmp_path}/calls
case "$*" in *--report_only*) exit 0;; esac
mkdir -p {tmp_path}/out/runs && mktemp -p {tmp_path}/out/runs run-XXXXXX.json >/dev/null
{sweep}
""")
    fake.chmod(0o755)
    return fake


def _reproduce_gpu(tmp_path: Path, fake: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(fake), "PATH": "/usr/bin:/bin"}  # no nvidia-smi, no MPS daemon
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "reproduce_gpu.sh"), *args, "--output_dir",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)


def test_reproduce_gpu_refuses_a_limit_that_is_not_seconds(tmp_path):
    fake = _fake_python(tmp_path, "exit 0")
    done = _reproduce_gpu(tmp_path, fake, "10m")
    assert done.returncode == 2 and "LIMIT_S" in done.stderr and "10m" in done.stderr
    assert not (tmp_path / "calls").exists()


def test_reproduce_gpu_stops_the_sweep_at_its_limit_reports_and_keeps_every_calls_record(tmp_path):
    fake = _fake_python(tmp_path, "sleep 30 & wait")  # a sweep (with a child, like its workers) that outlives the limit
    stopped = _reproduce_gpu(tmp_path, fake, "2")  # at least 1 s: time for the fake to write
    assert stopped.returncode == 137, stopped.stdout + stopped.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 2 and "--report_only" not in calls[0] and "--report_only" in calls[1]  # the report after
    assert "--preset gpu" in calls[0] and str(tmp_path / "out") in calls[0]

    finished = _reproduce_gpu(tmp_path, _fake_python(tmp_path, "exit 0"), "20")  # resumed: the sweep finishes
    assert finished.returncode == 0
    assert len((tmp_path / "calls").read_text().splitlines()) == 3  # no report call: the sweep wrote its own
    lines = (tmp_path / "out" / "device.txt").read_text().splitlines()
    assert len(lines) == 2, lines  # the first call's record is kept
    assert "reproduce_gpu.sh 2 " in lines[0] and "sweep exit 137 (stopped at the 2 s limit)" in lines[0]
    assert "1 run files" in lines[0]
    assert "reproduce_gpu.sh 20 " in lines[1] and "sweep exit 0;" in lines[1] and "2 run files" in lines[1]
    assert all("no nvidia-smi; MPS off" in line for line in lines)
