#!/usr/bin/env python
"""What the residual schemes cost, measured side by side in one run.

Compares, at identical sizes and inputs, with the candidates interleaved (A B C, B C A, ...) and medians over
repetitions:

* a training step (forward, backward, AdamW) of RSkipForConditionalGeneration ``post_ln`` against MarianMTModel with
  the same weights, and ``rskip_ln`` with λ = 2 and 3 against ``post_ln``;
* greedy and beam-4 generation (exactly the same number of new tokens for every model) against MarianMTModel;
* the peak memory of a training step, ``rskip_ln`` λ = 2 against ``post_ln``;
* the PreAct-ResNet-110 training step per residual scheme.

rskip_ln runs once per recursion path (``RSkipLN.recursion``: the plain loop of norms, the fused PyTorch function,
and on CUDA the Triton kernels), each path reported by name (``train_overhead_by_path``, ...); the headline keys use
the path ``recursion="auto"`` takes on the device (``recursion_auto``). With ``--compile`` the same models also run
under ``torch.compile`` in the same interleaved rounds: training, and decoding with a static cache and a compiled
forward, reported under ``compiled_*`` keys, with ``compiled_post_ln_*_speedup`` = eager time / compiled time.

On a GPU it runs there with bf16 autocast. Examples::

    python scripts/bench.py --json --quick          # < 1 minute on 2 CPU cores
    python scripts/bench.py --json --quick --compile --skip-resnet   # + compiled (inductor: minutes on a CPU)
    python scripts/bench.py --json > bench.json     # the full sizes (transformer base, 4k-token batches)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the experiments/ folder of this checkout

from experiments.reproduce import resolve_threads  # noqa: E402
from experiments.benchmark import (  # noqa: E402
    BENCH_SIZES,
    TEXT_SECTIONS,
    check_targets,
    load_average,
    pick_device,
    run_resnet_benchmark,
    run_t5_benchmarks,
    run_text_benchmarks,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer rounds (default: off, full sizes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: a text summary)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads for every candidate: a number, or 'auto' = 2 on an idle machine and 1 when "
                             "its load average is >= 1 (two threads fighting other jobs for 2 cores time their "
                             "contention, not the models) (default: auto)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", default=None,
                        help="fp32 on CUDA too (default: bf16 autocast on CUDA, fp32 on CPU)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="clock of the headline ratios; 'cpu' (process time) is steadier on a busy shared CPU "
                             "with --threads 1 (default: wall)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 7 full, 5 quick)")
    parser.add_argument("--sections", nargs="+", choices=TEXT_SECTIONS, default=list(TEXT_SECTIONS),
                        help="text comparisons to run (default: train memory generate)")
    parser.add_argument("--compile", action="store_true",
                        help="also run the text candidates under torch.compile, side by side with eager (default: off)")
    parser.add_argument("--compile-backend", default="inductor", choices=("inductor", "aot_eager", "eager"),
                        help="torch.compile backend for --compile; aot_eager traces without generating code "
                             "(default: inductor)")
    parser.add_argument("--paths", nargs="+", choices=("loop", "fused", "triton"), default=None,
                        help="rskip_ln recursion paths to measure (default: every path that runs on the device)")
    parser.add_argument("--skip-resnet", action="store_true", help="leave out the PreAct-ResNet comparison (default: off)")
    parser.add_argument("--skip-t5", action="store_true",
                        help="leave out the T5-family comparison against T5ForConditionalGeneration (default: off)")
    parser.add_argument("--skip-marian", action="store_true",
                        help="leave out the Marian-family comparison (default: off)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here (default: none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bench_device = pick_device(args.device, threads=resolve_threads(args.threads), bf16=args.bf16)
    mode = "quick" if args.quick else "full"
    sizes = dict(BENCH_SIZES[mode])
    if args.repeats is not None:
        sizes["repeats"] = args.repeats

    def log(message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result: dict = {"mode": mode, "device": bench_device.name, "threads": bench_device.threads, "clock": args.clock,
                    "load_average_before": load_average(), "sizes": sizes}
    log(f"{mode} on {bench_device.name}, load average {result['load_average_before']}")
    if not args.skip_marian:
        result.update(run_text_benchmarks(sizes, bench_device, clock=args.clock, sections=args.sections,
                                          compile=args.compile, compile_backend=args.compile_backend,
                                          paths=args.paths, log=log))
    if not args.skip_t5:
        result.update(run_t5_benchmarks(sizes, bench_device, clock=args.clock, sections=args.sections, log=log))
    if not args.skip_resnet:
        result["resnet"] = run_resnet_benchmark(sizes, bench_device, clock=args.clock, log=log)
    result["load_average_after"] = load_average()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["targets"] = check_targets(result)

    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"device: {result['device']}  ({mode}, {result['wall_s']} s, load {result['load_average_before']} -> "
              f"{result['load_average_after']})")
        for key, check in result["targets"].items():
            print(f"  {key:36s} {check['value']:8.3f}  target <= {check['target']:.2f}  "
                  f"{'ok' if check['met'] else 'MISSED'}")
        for key in ("rskip3_train_overhead", "rskip2_unfused_train_overhead", "train_peak_mem_ratio_rskip2_unfused",
                    "t5_rskip3_train_overhead", "t5_generate_beam4_ratio_vs_t5", "t5_train_peak_mem_ratio_rskip2",
                    "compiled_post_ln_train_speedup", "compiled_post_ln_generate_greedy_speedup",
                    "compiled_post_ln_generate_beam4_speedup", "compiled_post_ln_train_peak_mem_ratio_vs_eager"):
            if key in result:
                print(f"  {key:36s} {result[key]:8.3f}")
        print(f"  recursion=auto takes: {result.get('recursion_auto')}")
        for prefix in ("", "compiled_"):
            for figure in ("train_overhead", "train_peak_mem_ratio", "generate_greedy_overhead",
                           "generate_beam4_overhead"):
                for path, values in result.get(f"{prefix}{figure}_by_path", {}).items():
                    shown = "  ".join(f"{name} {value:+.3f}" if "overhead" in figure else f"{name} {value:.3f}"
                                      for name, value in values.items())
                    print(f"  {prefix}{figure} [{path}]: {shown}")
        if "resnet" in result:
            for name, value in result["resnet"]["overhead_vs_xskip_1"].items():
                print(f"  resnet-{result['resnet']['depth']} {name:12s} overhead vs xskip_1 {value:+.3f}")
    return result


if __name__ == "__main__":
    main()
