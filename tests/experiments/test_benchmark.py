"""Benchmark building blocks: interleaving, statistics, peak memory, equal work per candidate, the bench script's JSON.

No timing assertions: only what is measured and how, never how fast.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from experiments import benchmark
from experiments.benchmark import (
    BENCH_TARGETS,
    Timing,
    build_text_models,
    check_targets,
    generation_call,
    interleaved_timings,
    make_translation_batch,
    overhead,
    paired_ratio,
    peak_memory_bytes,
    pick_device,
    ratio,
    training_step,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_TEXT = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=50)


def test_interleaving_rotates_the_order_and_skips_warmup():
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = interleaved_timings(candidates, repeats=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")
    assert [len(t.times) for t in timings.values()] == [3, 3, 3]
    assert all(len(t.cpu_times) == 3 for t in timings.values())
    with pytest.raises(ValueError):
        interleaved_timings(candidates, repeats=0)


def test_statistics_and_ratios():
    ours = Timing(times=[2.0, 4.0, 3.0, 100.0, 3.0], cpu_times=[1.0] * 5)
    reference = Timing(times=[1.0, 2.0, 3.0, 4.0, 3.0], cpu_times=[2.0] * 5)
    assert ours.median == 3.0
    assert paired_ratio(ours, reference) == 2.0  # per-round ratios 2, 2, 1, 25, 1
    assert paired_ratio(ours, reference, "cpu") == 0.5
    assert ratio(3.0, 2.0) == 1.5 and overhead(3.0, 2.0) == pytest.approx(0.5)
    assert ours.to_dict()["min_s"] == 2.0
    with pytest.raises(ValueError, match="clock"):
        ours.values("gpu")


def test_check_targets_flags_missed_ones():
    checks = check_targets({"train_step_ratio_vs_marian": 1.01, "rskip2_train_overhead": 0.2, "other": 9})
    assert checks["train_step_ratio_vs_marian"]["met"] and not checks["rskip2_train_overhead"]["met"]
    assert set(checks) <= set(BENCH_TARGETS)


def test_cpu_peak_memory_counts_what_the_call_allocates():
    keep = torch.zeros(1_000_000)  # allocated before: not counted

    def work() -> None:
        a = torch.ones(2_000_000)  # 8 MB
        b = a * 2  # another 8 MB while a is alive
        del a, b

    peak = peak_memory_bytes(work, "cpu")
    assert 16_000_000 <= peak < 17_000_000
    assert keep.numel() == 1_000_000


def test_pick_device_sets_threads_and_precision():
    before = torch.get_num_threads()
    try:
        chosen = pick_device("cpu", threads=1)
        assert chosen.device.type == "cpu" and chosen.amp_dtype is None and chosen.threads == 1
        assert "cpu (1 threads" in chosen.name
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        pick_device("cpu", threads=0)


def test_batch_has_no_padding():
    batch = make_translation_batch(10, 4, 6, 5, pad_token_id=2)
    assert batch["input_ids"].shape == (4, 6) and batch["labels"].shape == (4, 5)
    assert not (batch["input_ids"] == 2).any() and not (batch["labels"] == 2).any()
    assert batch["attention_mask"].all()


def test_candidates_share_marian_weights_and_do_equal_work():
    device = pick_device("cpu")
    models = build_text_models(TINY_TEXT, device)
    assert list(models) == ["marian", "post_ln", "rskip_ln_2", "rskip_ln_3"]
    batch = make_translation_batch(50, 3, 5, 4, pad_token_id=2)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        reference = models["marian"](**batch).logits
        torch.testing.assert_close(models["post_ln"](**batch).logits, reference)
    # the same number of new tokens whatever the weights, greedy and beam
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    for beams in (1, 4):
        shapes = {generation_call(m, inputs, new_tokens=6, num_beams=beams, bench_device=device)().shape
                  for m in models.values()}
        assert shapes == {torch.Size([3, 7])}  # the start token and 6 new ones
    # a training step changes the weights and returns the loss
    model = models["rskip_ln_2"].train()
    before = model.lm_head.weight.detach().clone()
    loss = training_step(model, batch, benchmark.adamw(model, lr=1e-2), device)()
    assert loss > 0 and not torch.equal(before, model.lm_head.weight)


def test_bench_script_prints_one_json_object(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("bench_script", REPO_ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = dict(text=TINY_TEXT, train_batch=dict(batch_size=2, source_length=5, target_length=5),
                generate=dict(batch_size=2, source_length=4, new_tokens=3),
                resnet=dict(depth=8, batch_size=2), repeats=1, warmup=0)
    monkeypatch.setitem(benchmark.BENCH_SIZES, "quick", tiny)
    monkeypatch.setattr(benchmark, "RESNET_CANDIDATES", {"xskip_1": dict(residual_scheme="xskip", skip_lambda=1),
                                                         "rskip_ln_2": dict(residual_scheme="rskip_ln", skip_lambda=2)})
    monkeypatch.setattr(bench, "BENCH_SIZES", benchmark.BENCH_SIZES)
    argv = ["--json", "--quick", "--device", "cpu"]
    threads = torch.get_num_threads()
    try:
        bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    for key in ("train_step_ratio_vs_marian", "rskip2_train_overhead", "rskip3_train_overhead",
                "generate_greedy_ratio_vs_marian", "generate_beam4_ratio_vs_marian", "train_peak_mem_ratio_rskip2"):
        assert isinstance(result[key], float), key
    for key in ("t5_train_step_ratio_vs_t5", "t5_rskip2_train_overhead", "t5_rskip3_train_overhead",
                "t5_generate_greedy_ratio_vs_t5", "t5_generate_beam4_ratio_vs_t5", "t5_train_peak_mem_ratio_rskip2",
                "t5_generate_greedy_rskip2_overhead"):
        assert isinstance(result[key], float), key  # the T5 family against T5ForConditionalGeneration
    assert set(result["t5_train"]) == {"t5", "pre_ln", "rskip_ln_2", "rskip_ln_3"}
    assert result["device"].startswith("cpu") and set(result["targets"]) == set(BENCH_TARGETS)
    assert set(result["resnet"]["overhead_vs_xskip_1"]) == {"xskip_1", "rskip_ln_2"}


@pytest.mark.parametrize("lam", [2, 3])
def test_fused_rskip_recursion_equals_the_loop_and_saves_less(lam):
    """The fused recursive LayerNorm (hf_rskip.residual) gives the loop's outputs and gradients, and keeps one norm
    input for backward instead of λ."""
    from torch import nn

    from hf_rskip.models.residual import RSkipLN

    residual = RSkipLN(lambda: nn.LayerNorm(16), lam)
    for norm in residual.norms:  # non-trivial affine parameters
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    branch = nn.Linear(16, 16)
    x = torch.randn(4, 8, 16, requires_grad=True)
    tensors = [x, *residual.parameters(), *branch.parameters()]

    def run(fused: bool) -> tuple[list[torch.Tensor], int]:
        residual.recursion = "fused" if fused else "loop"
        for t in tensors:
            t.grad = None
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = residual(x, branch)
        (y * torch.linspace(-1, 1, 16)).pow(2).sum().backward()
        return [y.detach(), *(t.grad.clone() for t in tensors)], sum(saved.values())

    (loop, loop_bytes), (fused, fused_bytes) = run(False), run(True)
    for a, b in zip(loop, fused):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    activation = x.numel() * x.element_size()
    assert loop_bytes - fused_bytes >= (lam - 1) * activation  # λ - 1 fewer (B, T, C) tensors kept
    residual.recursion = "auto"
    with torch.no_grad():  # inference takes the plain loop
        assert residual.recursion_path(x, x) == "loop"
        torch.testing.assert_close(residual(x, branch), loop[0])


def test_recursion_context_sets_every_module_and_restores_it():
    model = build_text_models(TINY_TEXT, pick_device("cpu"))["rskip_ln_3"]
    from hf_rskip.models.residual import RSkipLN

    modules = [m for m in model.modules() if isinstance(m, RSkipLN)]
    modules[0].recursion = "fused"
    with benchmark.rskip_recursion(model, "loop"):
        assert all(m.recursion == "loop" for m in modules)
    with benchmark.unfused_rskip(model):
        assert all(m.recursion == "loop" for m in modules)
    assert modules[0].recursion == "fused" and all(m.recursion == "auto" for m in modules[1:])
    modules[0].recursion = "auto"
    assert benchmark.recursion_paths("cpu") == ["loop", "fused"]
    # what recursion="auto" takes on this CPU (the table in residual.py): the loop, eager and compiled
    assert benchmark.auto_recursion(model, training=True) == "loop"
    assert benchmark.auto_recursion(model, training=True, compiled=True) == "loop"
    assert benchmark.auto_recursion(model, training=False) == "loop"


def _load_bench_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_script", REPO_ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = dict(text=TINY_TEXT, train_batch=dict(batch_size=2, source_length=5, target_length=5),
                generate=dict(batch_size=2, source_length=4, new_tokens=3),
                resnet=dict(depth=8, batch_size=2), repeats=1, warmup=0)
    monkeypatch.setitem(benchmark.BENCH_SIZES, "quick", tiny)
    monkeypatch.setattr(bench, "BENCH_SIZES", benchmark.BENCH_SIZES)
    return bench


@pytest.fixture
def fresh_dynamo():
    """Compiled graphs of earlier tests count towards dynamo's recompile limit per code object: start and end clean."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_bench_script_reports_every_path_eager_and_compiled(monkeypatch, capsys, fresh_dynamo):
    """--compile: eager and compiled candidates in one run, per recursion path (backend "eager": traced by dynamo,
    no code generated, so this takes seconds; the inductor run is the same code with kernels)."""
    bench = _load_bench_script(monkeypatch)
    monkeypatch.setattr(benchmark, "LAMBDAS", (2,))  # fewer graphs to trace; λ = 3 is the same code
    threads = torch.get_num_threads()
    try:
        bench.main(["--json", "--quick", "--device", "cpu", "--skip-resnet", "--skip-t5", "--compile",
                    "--compile-backend", "eager"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert result["recursion_paths"] == ["loop", "fused"]
    assert result["recursion_auto"] == {"train": "loop", "generate": "loop", "compiled_train": "loop",
                                        "compiled_generate": "loop"}
    for prefix in ("", "compiled_"):
        for path in ("loop", "fused"):
            assert set(result[f"{prefix}train_overhead_by_path"][path]) == {"rskip_ln_2"}
            assert all(v > 0 for v in result[f"{prefix}train_peak_mem_ratio_by_path"][path].values())
    for label in ("generate_greedy", "generate_beam4"):
        assert set(result[f"{label}_overhead_by_path"]) == {"loop", "fused"}
        assert set(result[f"compiled_{label}_overhead_by_path"]) == {"loop"}
        assert isinstance(result[f"compiled_post_ln_{label}_speedup"], float)
        assert set(result["compiled"][label]) == {"post_ln@compiled", "rskip_ln_2@loop@compiled"}
    for key in ("compiled_post_ln_train_speedup", "compiled_post_ln_train_peak_mem_ratio_vs_eager",
                "rskip2_train_overhead", "rskip2_unfused_train_overhead", "train_peak_mem_ratio_rskip2"):
        assert isinstance(result[key], float), key
    # the headline keys are auto's path (the loop on a CPU), and the old candidate names remain
    assert result["rskip2_train_overhead"] == result["train_overhead_by_path"]["loop"]["rskip_ln_2"]
    assert {"rskip_ln_2", "rskip_ln_2_unfused"} <= set(result["train"])


def test_compiled_greedy_and_beam_decoding_give_the_eager_tokens(fresh_dynamo):
    """The bench's compiled decoding (static cache; greedy through transformers' compile_config, beam through a
    compiled forward) generates what eager decoding does. aot_eager: seconds."""
    from transformers import CompileConfig

    device = pick_device("cpu")
    model = build_text_models(TINY_TEXT, device)["rskip_ln_2"].eval()
    batch = make_translation_batch(50, 2, 5, 2, pad_token_id=2, seed=3)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    config = CompileConfig(backend="aot_eager", fullgraph=True, dynamic=False, mode=None)
    config._compile_all_devices = True
    forward = torch.compile(model.forward, backend="aot_eager", fullgraph=True, dynamic=False)
    for beams, compiled in ((1, dict(compile_config=config)), (4, dict(compiled_forward=forward))):
        eager = generation_call(model, inputs, new_tokens=5, num_beams=beams, bench_device=device)()
        again = generation_call(model, inputs, new_tokens=5, num_beams=beams, bench_device=device, **compiled)()
        assert torch.equal(again, eager), beams
    assert "forward" not in vars(model), "the compiled forward is set for the call only"
