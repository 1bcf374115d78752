#!/usr/bin/env python
"""Re-runs the comparison of Liu et al. (COLING 2020) on real data with this package's own training code.

Sweeps residual schemes × λ (post_ln, pre_ln, xskip λ ∈ {1, 2}, xskip_ln λ = 2, rskip_ln λ ∈ {2, 3}, and the
BatchNorm variants for images) over seeds, at equal size and budget, at a shallow and a deep stack, each scheme at
its own best learning rate from a small grid (chosen on held-out data):

* Multi30k EN→DE, sacreBLEU on test_2016_flickr;
* CIFAR-10, the 4,000 exact training images, accuracy on the 10,000-image JPEG test set;
* the gradient analysis: gradient norm per layer of deep stacks, at initialization and after a few steps.

Writes ``results.json``, ``table.md`` (mean ± std over seeds; whether each difference from Post-LN / the identity
skip is larger than the seed spread) and PNG plots to the output folder. Finished runs are kept in ``runs/`` and
skipped when the command is run again, so a long sweep can be stopped and resumed.

    python scripts/reproduce.py --preset smoke            # a few minutes, every stage
    python scripts/reproduce.py --preset cpu              # ~23 hours on 2 CPU cores: run it in parts (--tasks)
    bash scripts/reproduce_gpu.sh 600                     # the gpu preset: one GPU, 12 runs at once under CUDA MPS;
                                                          # ~11 minutes on one H200 (measured in two parts: 430 s + 241 s)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the experiments/ folder of this checkout

from experiments.reproduce import PRESETS, TASKS, get_preset, reproduce  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke", help="sweep size (default: smoke)")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where results go (default: outputs/reproduce-<preset>)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                        help="which sweeps to run (default: text vision)")
    parser.add_argument("--no_gradients", action="store_true", help="skip the gradient analysis (default: run it)")
    parser.add_argument("--only_gradients", action="store_true",
                        help="only the gradient analysis, no training sweeps (default: off)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing; rebuild table.md, results.json and plots from the finished runs in "
                             "--output_dir (a report on a sweep still running or stopped) (default: off)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: the preset's: 1 for smoke, 2 for cpu, 12 for gpu)")
    parser.add_argument("--override", default=None,
                        help='JSON merged into the preset, e.g. \'{"text": {"seeds": [0, 1, 2]}}\' (default: none)')
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default: the preset's: 1 for smoke and cpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = json.loads(args.override) if args.override else {}
    if args.jobs is not None:
        overrides["jobs"] = args.jobs
    if args.threads is not None:
        overrides["threads"] = args.threads
    preset = get_preset(args.preset, overrides)
    out_dir = args.output_dir or Path("outputs") / f"reproduce-{args.preset}"
    command = "python scripts/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    def log(message: str) -> None:
        print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    summary = reproduce(preset, out_dir, tasks=args.tasks, gradients=not args.no_gradients,
                        sweeps=not args.only_gradients, report_only=args.report_only, preset_name=args.preset,
                        command=command, log=log)
    print((out_dir / "table.md").read_text(encoding="utf-8"))
    log(f"done in {summary['wall_s']} s: {out_dir}/results.json, table.md, {', '.join(summary['plots'].values())}")
    return summary


if __name__ == "__main__":
    main()
