"""Timing and memory helpers for side-by-side comparisons (``scripts/bench.py`` is a thin shell around them).

Speed ratios between two models are only meaningful when both ran under the same conditions. On a shared CPU the
load changes from second to second, so the helpers here never time one candidate after the other in blocks:
:func:`interleaved_timings` runs one repetition of every candidate per round (A B C, B C A, C A B, ... rotating
the order so that none always runs first) and reports medians. Peak memory comes from CUDA's allocator statistics
on a GPU and from the profiler's allocation events on a CPU, always relative to what was allocated before the
measured call, so model weights and optimizer state do not dilute the ratio.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


# --------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDevice:
    """Where and how the benchmark runs.

    Attributes:
        device: ``cuda`` when a GPU is present (unless asked otherwise), else ``cpu``.
        amp_dtype: the autocast dtype (``torch.bfloat16`` on CUDA), or None for plain float32 (CPU).
        threads: ``torch.get_num_threads()`` after setting it (CPU intra-op threads).
        name: a human-readable description, e.g. ``"cpu (2 threads)"`` or the GPU's name.
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    threads: int
    name: str

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this device (a no-op context without mixed precision)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        """Waits for queued GPU work, so that wall-clock timings cover it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def pick_device(device: str | None = None, *, threads: int | None = None, bf16: bool | None = None) -> BenchDevice:
    """Chooses the device and precision and sets the CPU thread count once, for every candidate alike.

    Args:
        device: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or None for CUDA when available, else CPU.
        threads: CPU intra-op threads (``torch.set_num_threads``); None keeps torch's current setting.
        bf16: autocast to bfloat16; None means on for CUDA (where it is the usual training precision), off for CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads!r} must be >= 1")
        torch.set_num_threads(threads)
    use_bf16 = chosen.type == "cuda" if bf16 is None else bf16
    n_threads = torch.get_num_threads()
    if chosen.type == "cuda":
        name = f"{torch.cuda.get_device_name(chosen)} ({'bf16 autocast' if use_bf16 else 'fp32'})"
    else:
        name = f"cpu ({n_threads} threads, {'bf16 autocast' if use_bf16 else 'fp32'})"
    return BenchDevice(chosen, torch.bfloat16 if use_bf16 else None, n_threads, name)


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """The times of one candidate, in seconds, one entry per timed repetition in the order they ran.

    Attributes:
        times: wall-clock times (what a user waits; includes waiting for other processes on a shared machine).
        cpu_times: this process's CPU time over the same repetitions (``time.process_time``). On a CPU shared with
            other jobs it is steadier than wall time with one thread; with several threads it also counts their
            spin-waiting, so prefer wall time there.
    """

    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)

    def values(self, clock: str = "wall") -> list[float]:
        """The times of ``clock`` (``"wall"`` or ``"cpu"``)."""
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock={clock!r} is not known; accepted: ['wall', 'cpu']")
        return self.times if clock == "wall" else self.cpu_times

    @property
    def median(self) -> float:
        """The median wall time: robust to the occasional repetition slowed by another process."""
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median (0.02 = ±2 %): how noisy this candidate was."""
        if len(self.times) < 4:
            return (max(self.times) - min(self.times)) / (2 * self.median)
        q1, _, q3 = statistics.quantiles(self.times, n=4)
        return (q3 - q1) / (2 * self.median)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": min(self.times),
            "spread": self.spread,
            "cpu_median_s": statistics.median(self.cpu_times) if self.cpu_times else None,
            "times_s": [round(t, 5) for t in self.times],
        }


def interleaved_timings(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, Timing]:
    """Times several candidates side by side, one repetition of each per round.

    Round ``r`` runs the candidates in their given order rotated by ``r`` (A B C, B C A, C A B, ...), so a
    candidate is not always the first after a pause or always the one after the heaviest. Warm-up rounds (JIT,
    allocator and cache warm-up, lazily created optimizer state) run in the same interleaved way and are not
    recorded.

    Args:
        candidates: ``{name: fn}``; each ``fn()`` is one repetition (a training step, a ``generate`` call, ...).
        repeats: timed rounds; the reported statistic is the median over them.
        warmup: untimed rounds first.
        synchronize: called before reading the clock (``torch.cuda.synchronize`` on a GPU).

    Returns:
        ``{name: Timing}`` in the order of ``candidates``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats!r} must be >= 1 and warmup={warmup!r} >= 0")
    names = list(candidates)
    if not names:
        raise ValueError("no candidates to time")
    timings = {name: Timing() for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            candidates[name]()
            synchronize()
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            if round_index >= warmup:
                timings[name].times.append(elapsed)
                timings[name].cpu_times.append(cpu_elapsed)
    return timings


def ratio(ours: float, reference: float) -> float:
    """``ours / reference`` (> 1: ours takes longer or uses more)."""
    return ours / reference


def overhead(ours: float, reference: float) -> float:
    """``ours / reference - 1`` (0.05 = 5 % more time or memory than the reference)."""
    return ours / reference - 1.0


def paired_ratio(ours: Timing, reference: Timing, clock: str = "wall") -> float:
    """The median of the per-round ratios ``ours_r / reference_r``.

    Both ran in the same round, moments apart, so a load change on a shared machine affects both; the median of
    these ratios is steadier than the ratio of the two medians.

    Args:
        ours: the candidate's timing.
        reference: the reference's timing from the same :func:`interleaved_timings` call.
        clock: ``"wall"`` or ``"cpu"`` (see :class:`Timing`).
    """
    return statistics.median(a / b for a, b in zip(ours.values(clock), reference.values(clock)))


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch on the CPU while ``fn`` runs, above the level at its start.

    The profiler's ``[memory]`` events carry ``Total Allocated``, the running sum of allocations minus frees since
    profiling began; its maximum is the peak of what ``fn`` allocated on top of what was already live.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)["traceEvents"]
    totals = [
        event["args"]["Total Allocated"]
        for event in events
        if event.get("name") == "[memory]" and event.get("args", {}).get("Device Type", 0) == 0
    ]
    return max([0, *totals])


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak memory ``fn`` allocates on ``device`` above what was allocated before it ran.

    Run ``fn`` once beforehand so that lazily created state (e.g. Adam's moments) is not counted as the step's.

    Args:
        fn: the work to measure, e.g. one training step.
        device: where its tensors live (``cpu`` or ``cuda``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return _cpu_peak_bytes(fn)


# --------------------------------------------------------------------------------------------------
# Work to time
# --------------------------------------------------------------------------------------------------


def make_translation_batch(
    vocab_size: int,
    batch_size: int,
    source_length: int,
    target_length: int,
    *,
    pad_token_id: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """A random batch of full-length sentence pairs (no padding, so every candidate does the same work).

    Token ids avoid the pad id (and the ids below 3: ``</s>``, ``<unk>``, ``<pad>`` in this package's tokenizers).

    Returns:
        ``input_ids`` and ``attention_mask`` ``(batch_size, source_length)``, ``labels`` ``(batch_size, target_length)``.
    """
    generator = torch.Generator().manual_seed(seed)
    low = 3 if pad_token_id < 3 else 0
    high = vocab_size if pad_token_id != vocab_size - 1 else vocab_size - 1
    source = torch.randint(low, high, (batch_size, source_length), generator=generator)
    labels = torch.randint(low, high, (batch_size, target_length), generator=generator)
    source[source == pad_token_id] = low + 1
    labels[labels == pad_token_id] = low + 1
    batch = {"input_ids": source, "attention_mask": torch.ones_like(source), "labels": labels}
    return {key: value.to(device) for key, value in batch.items()}


def training_step(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    bench_device: BenchDevice,
) -> Callable[[], float]:
    """One full training step as a zero-argument callable: forward (with loss), backward, optimizer step, zero_grad.

    Args:
        model: a model whose forward returns ``.loss`` from ``batch`` (translation or image classification).
        batch: its keyword inputs, on the model's device.
        optimizer: the optimizer over the model's parameters.
        bench_device: gives the autocast context.

    Returns:
        ``step()``, which returns the loss as a float.
    """

    def step() -> float:
        with bench_device.autocast():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def generation_call(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    *,
    new_tokens: int,
    num_beams: int,
    bench_device: BenchDevice,
    compiled_forward: Callable | None = None,
    compile_config: Any = None,
) -> Callable[[], torch.Tensor]:
    """One ``generate`` call that always produces exactly ``new_tokens`` tokens per sentence.

    ``min_new_tokens == max_new_tokens`` keeps end-of-sentence from stopping one model earlier than the other, so
    tokens per second compare the same amount of work.

    Args:
        model: a seq2seq model with ``generate``.
        inputs: ``input_ids`` and ``attention_mask``.
        new_tokens: tokens to generate per sentence.
        num_beams: 1 for greedy search, > 1 for beam search.
        bench_device: gives the autocast context.
        compiled_forward: decode with a static cache and this compiled ``model.forward`` in place of the model's own
            (set on the instance for the call); what beam search needs, which transformers does not compile itself.
        compile_config: decode with a static cache and let ``generate`` compile the forward with this
            ``transformers.CompileConfig``: the documented path, taken by greedy search.
    """
    extra: dict[str, Any] = {}
    if compiled_forward is not None or compile_config is not None:
        extra["cache_implementation"] = "static"
    if compile_config is not None:
        extra["compile_config"] = compile_config

    @torch.inference_mode()
    def call() -> torch.Tensor:
        if compiled_forward is not None:
            model.forward = compiled_forward
        try:
            with bench_device.autocast():
                return model.generate(
                    **inputs,
                    num_beams=num_beams,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    early_stopping=False,
                    length_penalty=1.0,
                    use_cache=True,
                    **extra,
                )
        finally:
            if compiled_forward is not None:
                del model.forward  # back to the class's forward

    return call


def adamw(model: nn.Module, lr: float = 1e-4) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (``p.ndim >= 2``), the package's training convention.

    ``foreach`` is fixed so every candidate uses the same kernel path whatever its parameter count.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


# --------------------------------------------------------------------------------------------------
# The comparisons of scripts/bench.py
# --------------------------------------------------------------------------------------------------

#: Sizes of each benchmark mode. ``full``: the transformer base shape with a Multi30k-sized vocabulary and a batch of
#: 4,096 target tokens for the training step; ``quick``: the ``small`` text preset and fewer tokens, so the whole
#: bench runs in under a minute on two CPU cores while the matrix products still dominate the step.
BENCH_SIZES: dict[str, dict[str, Any]] = {
    "full": dict(
        text=dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                  decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=8000),
        train_batch=dict(batch_size=128, source_length=32, target_length=32),
        generate=dict(batch_size=16, source_length=24, new_tokens=32),
        resnet=dict(depth=110, batch_size=64),
        repeats=7, warmup=2,
    ),
    "quick": dict(
        text=dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, vocab_size=8000),
        train_batch=dict(batch_size=32, source_length=16, target_length=16),
        generate=dict(batch_size=8, source_length=16, new_tokens=16),
        resnet=dict(depth=110, batch_size=8, repeats=3),
        repeats=5, warmup=1,
    ),
}

#: The targets of the bench on a CPU (issue 5): a key of the result, and the largest acceptable value.
BENCH_TARGETS: dict[str, float] = {
    "train_step_ratio_vs_marian": 1.02,
    "rskip2_train_overhead": 0.05,
    "generate_greedy_ratio_vs_marian": 1.02,
    "generate_beam4_ratio_vs_marian": 1.02,
    "train_peak_mem_ratio_rskip2": 1.10,
    # the T5 family (issue 10)
    "t5_train_step_ratio_vs_t5": 1.02,
    "t5_generate_greedy_ratio_vs_t5": 1.02,
    "t5_rskip2_train_overhead": 0.05,
}

#: The text candidates: name -> residual options (``None``: MarianMTModel itself).
TEXT_CANDIDATES: dict[str, dict[str, Any] | None] = {
    "marian": None,
    "post_ln": dict(residual_scheme="post_ln"),
    "rskip_ln_2": dict(residual_scheme="rskip_ln", skip_lambda=2),
    "rskip_ln_3": dict(residual_scheme="rskip_ln", skip_lambda=3),
}

#: The ResNet candidates: name -> residual options; ``xskip_1`` (He et al.'s identity shortcut) is the reference.
RESNET_CANDIDATES: dict[str, dict[str, Any]] = {
    "xskip_1": dict(residual_scheme="xskip", skip_lambda=1),
    "post_ln": dict(residual_scheme="post_ln"),
    "pre_ln": dict(residual_scheme="pre_ln"),
    "xskip_ln_2": dict(residual_scheme="xskip_ln", skip_lambda=2),
    "rskip_ln_2": dict(residual_scheme="rskip_ln", skip_lambda=2),
    "rskip_ln_3": dict(residual_scheme="rskip_ln", skip_lambda=3),
    "rskip_bn_2": dict(residual_scheme="rskip_ln", skip_lambda=2, residual_norm="batch"),
}


def build_text_models(text_sizes: Mapping[str, Any], bench_device: BenchDevice, *, seed: int = 0) -> dict[str, nn.Module]:
    """One ``MarianMTModel`` and the rSkip candidates converted from it, so all share every common weight.

    ``from_marian`` with ``post_ln`` gives a model equal to Marian's (same logits); the ``rskip_ln`` candidates keep
    the same embeddings, attention and feed-forward weights and add their extra norms. Dropout 0.1 for all.

    Args:
        text_sizes: ``RSkipConfig`` / ``MarianConfig`` size fields (d_model, layers, heads, ffn, vocab_size).
        bench_device: where the models go.
        seed: the seed of Marian's initialization.

    Returns:
        ``{name: model}`` for every key of :data:`TEXT_CANDIDATES`.
    """
    from transformers import MarianConfig, MarianMTModel

    from hf_rskip.models import RSkipForConditionalGeneration

    torch.manual_seed(seed)
    config = MarianConfig(
        **text_sizes, max_position_embeddings=256, pad_token_id=2, eos_token_id=0, decoder_start_token_id=2,
        forced_eos_token_id=None, activation_function="relu", dropout=0.1, attn_implementation="sdpa",
    )
    marian = MarianMTModel(config).to(bench_device.device)
    models: dict[str, nn.Module] = {}
    for name, options in TEXT_CANDIDATES.items():
        models[name] = marian if options is None else RSkipForConditionalGeneration.from_marian(marian, **options)
    return models


def recursion_paths(device: torch.device | str) -> list[str]:
    """The ``RSkipLN.recursion`` paths that run on ``device`` with this package's LayerNorm models: the loop and the
    fused PyTorch function everywhere, the Triton kernels on CUDA where Triton imports."""
    from hf_rskip.models.residual import _recursive_norm_triton

    paths = ["loop", "fused"]
    if torch.device(device).type == "cuda" and _recursive_norm_triton() is not None:
        paths.append("triton")
    return paths


def auto_recursion(model: nn.Module, *, training: bool, compiled: bool = False) -> str | None:
    """The path ``recursion="auto"`` takes in ``model``'s first rSkip module (None without one), in training (gradients
    on) or inference, eager or under ``torch.compile``."""
    from hf_rskip.models.residual import RSkipLN

    module = next((m for m in model.modules() if isinstance(m, RSkipLN)), None)
    if module is None:
        return None
    width = module.norms[0].normalized_shape[-1]
    device = module.norms[0].weight.device
    probe = torch.zeros(1, 1, width, device=device, requires_grad=training)
    with torch.set_grad_enabled(training), rskip_recursion(model, "auto"):
        return module.recursion_path(probe, probe, compiled=compiled)


@contextlib.contextmanager
def rskip_recursion(model: nn.Module, path: str):
    """Runs ``model``'s rSkip recursions by ``path`` (``RSkipLN.recursion``: "auto", "loop", "fused" or "triton"), so a
    benchmark can show the paths side by side; restores each module's setting on exit."""
    from hf_rskip.models.residual import RSkipLN

    modules = [m for m in model.modules() if isinstance(m, RSkipLN)]
    saved = [m.recursion for m in modules]
    for module in modules:
        module.recursion = path
    try:
        yield model
    finally:
        for module, value in zip(modules, saved):
            module.recursion = value


def unfused_rskip(model: nn.Module):
    """The plain loop of norms (the path before the fused autograd function): ``rskip_recursion(model, "loop")``."""
    return rskip_recursion(model, "loop")


def _with_recursion(model: nn.Module, path: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with rskip_recursion(model, path):
            return fn()

    return run


TEXT_SECTIONS: tuple[str, ...] = ("train", "memory", "generate")
"""The parts of :func:`run_text_benchmarks`: training-step time, training-step peak memory, generation speed."""

LAMBDAS: tuple[int, ...] = (2, 3)
"""The rskip_ln λ of the text candidates (``rskip_ln_2``, ``rskip_ln_3`` in :data:`TEXT_CANDIDATES`)."""


def _compile_options(bench_device: BenchDevice, backend: str) -> dict[str, Any]:
    """``torch.compile`` options for decoding: CUDA graphs on a GPU (transformers' default for greedy search), plain
    inductor on a CPU."""
    mode = "reduce-overhead" if bench_device.device.type == "cuda" and backend == "inductor" else None
    return {"backend": backend, "fullgraph": True, "dynamic": False, "mode": mode}


def overhead_of(ours: Timing, reference: Timing, clock: str = "wall") -> float:
    """``paired_ratio(ours, reference) - 1``: 0.05 = ours took 5 % longer, round by round."""
    return paired_ratio(ours, reference, clock) - 1.0


def _by_path(timings: Mapping[str, Timing], paths: Sequence[str], reference: str, clock: str,
             suffix: str = "") -> dict[str, dict[str, float]]:
    """``{path: {"rskip_ln_2": overhead, "rskip_ln_3": overhead}}`` against ``reference``, from candidates named
    ``rskip_ln_<λ>@<path><suffix>``."""
    return {
        path: {f"rskip_ln_{lam}": overhead_of(timings[f"rskip_ln_{lam}@{path}{suffix}"], timings[reference], clock)
               for lam in LAMBDAS}
        for path in paths
    }


def _measured(models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The candidates to measure: Marian, post_ln and rskip_ln with each λ of :data:`LAMBDAS`."""
    wanted = {"marian", "post_ln", *(f"rskip_ln_{lam}" for lam in LAMBDAS)}
    return {name: model for name, model in models.items() if name in wanted}


def run_text_benchmarks(
    sizes: Mapping[str, Any],
    bench_device: BenchDevice,
    *,
    clock: str = "wall",
    sections: Sequence[str] = TEXT_SECTIONS,
    compile: bool = False,
    compile_backend: str = "inductor",
    paths: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The text comparisons: training step time and peak memory, greedy and beam-4 generation, per recursion path
    of rskip_ln, eager and (with ``compile``) compiled side by side.

    Candidates: ``marian``, ``post_ln`` and ``rskip_ln_<λ>@<path>`` for λ in :data:`LAMBDAS` and each path of
    ``paths``; with ``compile`` also ``post_ln@compiled`` and ``rskip_ln_<λ>@<path>@compiled`` (``torch.compile`` of
    the same model objects, interleaved with the eager ones in the same rounds). Compiled decoding uses a static cache
    and a compiled forward: transformers' own path (``generate(cache_implementation="static", compile_config=...)``)
    for greedy search, the model's ``forward`` compiled and set on the instance for beam search. Compiled generation
    is measured for the path ``recursion="auto"`` takes under compile (the loop on every device: ``AUTO_RECURSION`` in
    hf_rskip/models/residual.py).

    Args:
        sizes: one entry of :data:`BENCH_SIZES`.
        bench_device: the device, precision and thread count.
        clock: the clock of the headline ratios, ``"wall"`` or ``"cpu"`` (see :class:`Timing`).
        sections: which of :data:`TEXT_SECTIONS` to run (e.g. only ``"memory"`` at full size on a slow CPU).
        compile: also measure ``torch.compile``d training and decoding.
        compile_backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without generating
            kernels, for tests).
        paths: the recursion paths to measure (default: :func:`recursion_paths` of the device).
        log: progress messages go here.

    Returns:
        Per-candidate timings (``train``, ``generate_greedy``, ``generate_beam4``, and under ``compiled`` the compiled
        ones), ``train_peak_mem_bytes``, the headline ratios (see :data:`BENCH_TARGETS`) and, per path,
        ``train_overhead_by_path``, ``train_peak_mem_ratio_by_path``, ``generate_{greedy,beam4}_overhead_by_path``;
        with ``compile`` the same under ``compiled_*`` keys, and ``compiled_post_ln_*_speedup`` (eager / compiled).
        The headline keys of rskip_ln (``rskip2_train_overhead``, ...) are those of the path ``recursion="auto"``
        takes (``recursion_auto``); ``*_unfused`` are the loop's.
    """
    if compile:
        # every candidate is one more compiled graph of the same model code (per model, path, train/eval, greedy/beam):
        # more than dynamo's default 8 per code object
        import torch._dynamo

        with torch._dynamo.config.patch(recompile_limit=64):
            return _run_text_benchmarks(sizes, bench_device, clock=clock, sections=sections, compile=compile,
                                        compile_backend=compile_backend, paths=paths, log=log)
    return _run_text_benchmarks(sizes, bench_device, clock=clock, sections=sections, compile=compile,
                                compile_backend=compile_backend, paths=paths, log=log)


def _run_text_benchmarks(
    sizes: Mapping[str, Any],
    bench_device: BenchDevice,
    *,
    clock: str,
    sections: Sequence[str],
    compile: bool,
    compile_backend: str,
    paths: Sequence[str] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    import logging

    # from_marian's warning that the extra rskip norms start fresh is expected here
    logging.getLogger("hf_rskip").setLevel(logging.ERROR)
    section_start = time.perf_counter()
    models = _measured(build_text_models(sizes["text"], bench_device))
    paths = list(paths) if paths is not None else recursion_paths(bench_device.device)
    auto = {"train": auto_recursion(models["rskip_ln_2"], training=True),
            "generate": auto_recursion(models["rskip_ln_2"], training=False)}
    if compile:
        auto["compiled_train"] = auto_recursion(models["rskip_ln_2"], training=True, compiled=True)
        auto["compiled_generate"] = auto_recursion(models["rskip_ln_2"], training=False, compiled=True)
    batch = make_translation_batch(sizes["text"]["vocab_size"], **sizes["train_batch"], pad_token_id=2,
                                   device=bench_device.device)
    repeats, warmup = sizes["repeats"], sizes["warmup"]
    result: dict[str, Any] = {"recursion_paths": paths, "recursion_auto": auto, "section_wall_s": {}}

    steps: dict[str, Callable[[], float]] = {}
    compiled_models: dict[str, nn.Module] = {}
    for name, model in models.items():
        model.train()
        optimizer = adamw(model)
        step = training_step(model, batch, optimizer, bench_device)
        if compile and name != "marian":
            compiled_models[name] = torch.compile(model, backend=compile_backend)
            compiled_step = training_step(compiled_models[name], batch, optimizer, bench_device)
        if not name.startswith("rskip_ln_"):
            steps[name] = step
            if compile and name == "post_ln":
                steps["post_ln@compiled"] = compiled_step
            continue
        for path in paths:  # the same model (and optimizer) with each path of the recursion
            steps[f"{name}@{path}"] = _with_recursion(model, path, step)
            if compile:
                steps[f"{name}@{path}@compiled"] = _with_recursion(model, path, compiled_step)

    def aliases(timings: dict[str, Any]) -> dict[str, Any]:
        """The names of the results before paths existed: ``rskip_ln_<λ>`` (auto's path), ``rskip_ln_2_unfused``."""
        for lam in LAMBDAS:
            if f"rskip_ln_{lam}@{auto['train']}" in timings:
                timings[f"rskip_ln_{lam}"] = timings[f"rskip_ln_{lam}@{auto['train']}"]
        if "rskip_ln_2@loop" in timings:
            timings["rskip_ln_2_unfused"] = timings["rskip_ln_2@loop"]
        return timings

    train: dict[str, Timing] = {}
    if "train" in sections:
        log(f"training step: {list(steps)} x {repeats} rounds")
        train = interleaved_timings(steps, repeats=repeats, warmup=warmup, synchronize=bench_device.synchronize)
        result["train"] = aliases({name: t.to_dict() for name, t in train.items() if not name.endswith("@compiled")})
        result["section_wall_s"]["train"] = round(time.perf_counter() - section_start, 1)

    if "memory" in sections:
        log("peak memory of a training step")
        section_start = time.perf_counter()
        if not train:  # the lazily created optimizer state (and compiled graphs) must exist before the measured step
            for step in steps.values():
                step()
        result["train_peak_mem_bytes"] = aliases({
            name: peak_memory_bytes(step, bench_device.device) for name, step in steps.items()})
        result["section_wall_s"]["train_peak_mem"] = round(time.perf_counter() - section_start, 1)

    gen_sizes = sizes["generate"]
    source = make_translation_batch(sizes["text"]["vocab_size"], gen_sizes["batch_size"], gen_sizes["source_length"], 2,
                                    pad_token_id=2, seed=1, device=bench_device.device)
    inputs = {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"]}
    tokens = gen_sizes["batch_size"] * gen_sizes["new_tokens"]
    generation: dict[str, dict[str, Timing]] = {}
    for label, beams in (("generate_greedy", 1), ("generate_beam4", 4)) if "generate" in sections else ():
        section_start = time.perf_counter()
        calls = {}
        for name, model in models.items():
            model.eval()
            call = generation_call(model, inputs, new_tokens=gen_sizes["new_tokens"], num_beams=beams,
                                   bench_device=bench_device)
            if not name.startswith("rskip_ln_"):
                calls[name] = call
            else:
                for path in paths:
                    calls[f"{name}@{path}"] = _with_recursion(model, path, call)
        if compile:
            from transformers import CompileConfig

            options = _compile_options(bench_device, compile_backend)
            for name in ("post_ln", *(f"rskip_ln_{lam}" for lam in LAMBDAS)):
                model = models[name]
                if beams == 1:  # transformers compiles the decoding forward itself: the documented path
                    config = CompileConfig(**options)
                    config._compile_all_devices = True  # also on a CPU
                    call = generation_call(model, inputs, new_tokens=gen_sizes["new_tokens"], num_beams=beams,
                                           bench_device=bench_device, compile_config=config)
                else:  # beam search calls the model uncompiled: compile its forward ourselves (no CUDA graphs:
                    # beam search reorders the static cache between steps)
                    forward = torch.compile(model.forward, **{**options, "mode": None})
                    call = generation_call(model, inputs, new_tokens=gen_sizes["new_tokens"], num_beams=beams,
                                           bench_device=bench_device, compiled_forward=forward)
                key = "post_ln@compiled" if name == "post_ln" else f"{name}@{auto['compiled_generate']}@compiled"
                calls[key] = call
        lengths = {name: tuple(call().shape) for name, call in calls.items()}  # also compiles, outside the timing
        if len(set(lengths.values())) != 1:
            raise RuntimeError(f"{label}: the candidates generated different shapes {lengths}")
        log(f"{label}: {list(calls)} x {repeats} rounds")
        timings = interleaved_timings(calls, repeats=repeats, warmup=warmup, synchronize=bench_device.synchronize)
        generation[label] = timings
        result[label] = aliases({name: {**t.to_dict(), "tokens_per_s": tokens / t.median}
                                 for name, t in timings.items() if not name.endswith("@compiled")})
        result[f"{label}_ratio_vs_marian"] = paired_ratio(timings["post_ln"], timings["marian"], clock)
        result[f"{label}_rskip2_overhead"] = overhead_of(timings[f"rskip_ln_2@{auto['generate']}"], timings["post_ln"],
                                                         clock)
        result[f"{label}_overhead_by_path"] = _by_path(timings, paths, "post_ln", clock)
        result["section_wall_s"][label] = round(time.perf_counter() - section_start, 1)

    if train:
        result["train_step_ratio_vs_marian"] = paired_ratio(train["post_ln"], train["marian"], clock)
        result["rskip2_train_overhead"] = overhead_of(train[f"rskip_ln_2@{auto['train']}"], train["post_ln"], clock)
        if 3 in LAMBDAS:
            result["rskip3_train_overhead"] = overhead_of(train[f"rskip_ln_3@{auto['train']}"], train["post_ln"], clock)
        if "loop" in paths:
            result["rskip2_unfused_train_overhead"] = overhead_of(train["rskip_ln_2@loop"], train["post_ln"], clock)
        result["train_overhead_by_path"] = _by_path(train, paths, "post_ln", clock)
    if "train_peak_mem_bytes" in result:
        mem = result["train_peak_mem_bytes"]
        result["train_peak_mem_ratio_rskip2"] = ratio(mem[f"rskip_ln_2@{auto['train']}"], mem["post_ln"])
        if "loop" in paths:
            result["train_peak_mem_ratio_rskip2_unfused"] = ratio(mem["rskip_ln_2@loop"], mem["post_ln"])
        if 3 in LAMBDAS:
            result["train_peak_mem_ratio_rskip3"] = ratio(mem[f"rskip_ln_3@{auto['train']}"], mem["post_ln"])
        result["train_peak_mem_ratio_post_ln_vs_marian"] = ratio(mem["post_ln"], mem["marian"])
        result["train_peak_mem_ratio_by_path"] = {
            path: {f"rskip_ln_{lam}": ratio(mem[f"rskip_ln_{lam}@{path}"], mem["post_ln"]) for lam in LAMBDAS}
            for path in paths
        }

    if compile:
        compiled: dict[str, Any] = {"backend": compile_backend}
        if train:
            compiled["train"] = {name: t.to_dict() for name, t in train.items() if name.endswith("@compiled")}
            result["compiled_post_ln_train_speedup"] = paired_ratio(train["post_ln"], train["post_ln@compiled"], clock)
            result["compiled_train_overhead_by_path"] = _by_path(train, paths, "post_ln@compiled", clock, "@compiled")
        if "train_peak_mem_bytes" in result:
            mem = result["train_peak_mem_bytes"]
            result["compiled_post_ln_train_peak_mem_ratio_vs_eager"] = ratio(mem["post_ln@compiled"], mem["post_ln"])
            result["compiled_train_peak_mem_ratio_by_path"] = {
                path: {f"rskip_ln_{lam}": ratio(mem[f"rskip_ln_{lam}@{path}@compiled"], mem["post_ln@compiled"])
                       for lam in LAMBDAS}
                for path in paths
            }
        for label, timings in generation.items():
            compiled[label] = {name: {**t.to_dict(), "tokens_per_s": tokens / t.median}
                               for name, t in timings.items() if name.endswith("@compiled")}
            result[f"compiled_post_ln_{label}_speedup"] = paired_ratio(timings["post_ln"], timings["post_ln@compiled"],
                                                                       clock)
            result[f"compiled_{label}_overhead_by_path"] = _by_path(
                timings, [auto["compiled_generate"]], "post_ln@compiled", clock, "@compiled")
        result["compiled"] = compiled
    return result


#: The T5-family candidates: name -> options of ``convert_to_rskip`` (``None``: T5ForConditionalGeneration itself).
#: ``pre_ln`` with RMSNorm is T5 exactly, so it is the family's reference, as ``post_ln`` is Marian's.
T5_CANDIDATES: dict[str, dict[str, Any] | None] = {
    "t5": None,
    "pre_ln": dict(residual_scheme="pre_ln", residual_norm="rms"),
    "rskip_ln_2": dict(residual_scheme="rskip_ln", skip_lambda=2),
    "rskip_ln_3": dict(residual_scheme="rskip_ln", skip_lambda=3),
}


def t5_sizes(text_sizes: Mapping[str, Any]) -> dict[str, Any]:
    """The T5 sizes equal to a Marian-style size entry: the same width, depth, heads and feed-forward width."""
    heads = text_sizes["encoder_attention_heads"]
    return dict(vocab_size=text_sizes["vocab_size"], d_model=text_sizes["d_model"],
                d_kv=text_sizes["d_model"] // heads, d_ff=text_sizes["encoder_ffn_dim"],
                num_layers=text_sizes["encoder_layers"], num_decoder_layers=text_sizes["decoder_layers"],
                num_heads=heads)


def build_t5_models(text_sizes: Mapping[str, Any], bench_device: BenchDevice, *, seed: int = 0) -> dict[str, nn.Module]:
    """One ``T5ForConditionalGeneration`` (v1.0: ReLU, tied head) and the rSkip candidates converted from it, so all
    share every common weight (``convert_to_rskip``: ``pre_ln`` gives T5's logits exactly)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from hf_rskip.models import convert_to_rskip

    torch.manual_seed(seed)
    config = T5Config(**t5_sizes(text_sizes), feed_forward_proj="relu", dropout_rate=0.1, pad_token_id=2,
                      eos_token_id=0, decoder_start_token_id=2, attn_implementation="sdpa")
    t5 = T5ForConditionalGeneration(config).to(bench_device.device)
    return {name: t5 if options is None else convert_to_rskip(t5, **options) for name, options in T5_CANDIDATES.items()}


def run_t5_benchmarks(
    sizes: Mapping[str, Any],
    bench_device: BenchDevice,
    *,
    clock: str = "wall",
    sections: Sequence[str] = TEXT_SECTIONS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The T5 family against transformers' T5 at equal size: training step, peak memory, greedy and beam-4 decoding.

    The keys are those of the Marian comparison with a ``t5_`` prefix and T5 as the reference: ``t5_train_step_
    ratio_vs_t5`` and ``t5_generate_{greedy,beam4}_ratio_vs_t5`` (our ``pre_ln`` over ``T5ForConditionalGeneration``,
    the same weights), ``t5_rskip{2,3}_train_overhead`` and ``t5_generate_{greedy,beam4}_rskip2_overhead`` (rSkip+RMS
    over ``pre_ln``), ``t5_train_peak_mem_ratio_rskip2`` (over ``pre_ln``).
    """
    import logging

    logging.getLogger("hf_rskip").setLevel(logging.ERROR)  # convert_to_rskip names the new norms: expected here
    models = build_t5_models(sizes["text"], bench_device)
    batch = make_translation_batch(sizes["text"]["vocab_size"], **sizes["train_batch"], pad_token_id=2,
                                   device=bench_device.device)
    repeats, warmup = sizes["repeats"], sizes["warmup"]
    result: dict[str, Any] = {}
    gen_sizes = sizes["generate"]
    source = make_translation_batch(sizes["text"]["vocab_size"], gen_sizes["batch_size"], gen_sizes["source_length"], 2,
                                    pad_token_id=2, seed=1, device=bench_device.device)
    inputs = {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"]}
    # The same weights decode to the same tokens; checked before the timed training steps, which move each model's
    # weights on their own (dropout draws differ between interleaved candidates).
    for label, beams in (("generate_greedy", 1), ("generate_beam4", 4)) if "generate" in sections else ():
        same = [generation_call(models[name].eval(), inputs, new_tokens=gen_sizes["new_tokens"], num_beams=beams,
                                bench_device=bench_device)() for name in ("pre_ln", "t5")]
        if not torch.equal(*same):
            raise RuntimeError(f"{label}: the converted pre_ln model decodes differently from T5")
    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = training_step(model, batch, adamw(model), bench_device)
    if "train" in sections:
        log(f"T5 training step: {list(steps)} x {repeats} rounds")
        train = interleaved_timings(steps, repeats=repeats, warmup=warmup, synchronize=bench_device.synchronize)
        result["t5_train"] = {name: t.to_dict() for name, t in train.items()}
        result["t5_train_step_ratio_vs_t5"] = paired_ratio(train["pre_ln"], train["t5"], clock)
        result["t5_rskip2_train_overhead"] = overhead_of(train["rskip_ln_2"], train["pre_ln"], clock)
        result["t5_rskip3_train_overhead"] = overhead_of(train["rskip_ln_3"], train["pre_ln"], clock)
    if "memory" in sections:
        if "train" not in sections:
            for step in steps.values():
                step()  # the optimizer state exists before the measured step
        mem = {name: peak_memory_bytes(step, bench_device.device) for name, step in steps.items()}
        result["t5_train_peak_mem_bytes"] = mem
        result["t5_train_peak_mem_ratio_pre_ln_vs_t5"] = ratio(mem["pre_ln"], mem["t5"])
        result["t5_train_peak_mem_ratio_rskip2"] = ratio(mem["rskip_ln_2"], mem["pre_ln"])
        result["t5_train_peak_mem_ratio_rskip3"] = ratio(mem["rskip_ln_3"], mem["pre_ln"])
    for label, beams in (("generate_greedy", 1), ("generate_beam4", 4)) if "generate" in sections else ():
        calls = {}
        for name, model in models.items():
            model.eval()
            calls[name] = generation_call(model, inputs, new_tokens=gen_sizes["new_tokens"], num_beams=beams,
                                          bench_device=bench_device)
        log(f"T5 {label}: {list(calls)} x {repeats} rounds")
        timings = interleaved_timings(calls, repeats=repeats, warmup=warmup, synchronize=bench_device.synchronize)
        result[f"t5_{label}"] = {name: t.to_dict() for name, t in timings.items()}
        result[f"t5_{label}_ratio_vs_t5"] = paired_ratio(timings["pre_ln"], timings["t5"], clock)
        result[f"t5_{label}_rskip2_overhead"] = overhead_of(timings["rskip_ln_2"], timings["pre_ln"], clock)
    return result


def run_resnet_benchmark(
    sizes: Mapping[str, Any], bench_device: BenchDevice, *, clock: str = "wall", log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The PreAct-ResNet training step per scheme (CIFAR-sized 32x32 inputs, 10 classes), interleaved.

    Args:
        sizes: one entry of :data:`BENCH_SIZES` (its ``resnet`` depth, batch size and optionally its own repeats).
        bench_device: the device, precision and thread count.
        clock: the clock of the overheads, ``"wall"`` or ``"cpu"``.
        log: progress messages go here.

    Returns:
        ``train`` timings per candidate of :data:`RESNET_CANDIDATES` and ``overhead_vs_xskip_1`` per candidate.
    """
    from hf_rskip.models import RSkipResNetConfig, RSkipResNetForImageClassification

    resnet = sizes["resnet"]
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(resnet["batch_size"], 3, 32, 32, generator=generator).to(bench_device.device),
        "labels": torch.randint(0, 10, (resnet["batch_size"],), generator=generator).to(bench_device.device),
    }
    steps = {}
    for name, options in RESNET_CANDIDATES.items():
        torch.manual_seed(0)
        model = RSkipResNetForImageClassification(RSkipResNetConfig(depth=resnet["depth"], num_labels=10, **options))
        model.to(bench_device.device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
        steps[name] = training_step(model, batch, optimizer, bench_device)
    repeats = resnet.get("repeats", sizes["repeats"])
    log(f"PreAct-ResNet-{resnet['depth']} training step: {list(steps)} x {repeats} rounds")
    timings = interleaved_timings(steps, repeats=repeats, warmup=sizes["warmup"], synchronize=bench_device.synchronize)
    return {
        "depth": resnet["depth"],
        "batch_size": resnet["batch_size"],
        "train": {name: t.to_dict() for name, t in timings.items()},
        "overhead_vs_xskip_1": {name: paired_ratio(t, timings["xskip_1"], clock) - 1.0 for name, t in timings.items()},
    }


def check_targets(result: Mapping[str, Any], targets: Mapping[str, float] = BENCH_TARGETS) -> dict[str, dict[str, Any]]:
    """Compares the headline figures with their targets.

    Returns:
        ``{key: {"value": v, "target": t, "met": v <= t}}`` for every target key present in ``result``.
    """
    return {
        key: {"value": result[key], "target": limit, "met": bool(result[key] <= limit)}
        for key, limit in targets.items()
        if key in result
    }


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): timings mean little under heavy load."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


__all__ = [
    "BENCH_SIZES",
    "BENCH_TARGETS",
    "RESNET_CANDIDATES",
    "TEXT_CANDIDATES",
    "TEXT_SECTIONS",
    "LAMBDAS",
    "BenchDevice",
    "auto_recursion",
    "build_text_models",
    "check_targets",
    "run_resnet_benchmark",
    "run_text_benchmarks",
    "Timing",
    "adamw",
    "generation_call",
    "interleaved_timings",
    "load_average",
    "make_translation_batch",
    "overhead",
    "overhead_of",
    "paired_ratio",
    "peak_memory_bytes",
    "pick_device",
    "ratio",
    "recursion_paths",
    "rskip_recursion",
    "training_step",
    "unfused_rskip",
]
