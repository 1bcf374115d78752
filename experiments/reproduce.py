"""The paper's comparison, re-run: sweeps, aggregation over seeds, tables and plots (``scripts/reproduce.py``).

Liu et al. (COLING 2020) compare residual schemes at equal size and budget: Post-LN, Pre-LN, the scaled skip
``xskip`` with and without LayerNorm, and the recursive ``rskip_ln``; for ResNets also BatchNorm in place of LN.
This module re-runs that comparison with the package's own training code:

* translation (Multi30k EN→DE, BLEU on test_2016_flickr) through :func:`hf_rskip.training.train`,
* CIFAR-10 (the 4,000 exact training images, accuracy on the 10,000-image JPEG test set) through
  the same loop,
* the gradient analysis (gradient norm per layer at initialization and after a few steps, deep stacks) through
  :mod:`hf_rskip.diagnostics`.

Fairness rules built in: every scheme of a sweep gets the same size, data, number of steps and seeds; depth is an
axis (a shallow and a deep stack); and every (scheme, depth) picks its own learning rate from a small grid on a
held-out split (validation NLL for text, held-out accuracy for images), never on the test set, so no scheme is judged
at another's hyperparameters. Each run is saved as it finishes (``runs/<run_id>.json``), so a sweep interrupted in the
background resumes where it stopped.

Building blocks (each usable alone): :class:`Variant`, :class:`RunSpec`, :func:`plan_search`, :func:`plan_final`,
:func:`best_learning_rates`, :func:`run_specs`, :func:`aggregate`, :func:`compare_to_reference`,
:func:`markdown_table`, the ``plot_*`` functions and :func:`reproduce`, which chains them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

from hf_rskip.data.recipes import shared_data_dir

TASKS: tuple[str, ...] = ("map", "text", "vision")
"""The parts of a preset: the trainability map (``map``), the trained comparisons on Multi30k (``text``) and on
CIFAR-10 (``vision``)."""


# --------------------------------------------------------------------------------------------------
# Variants and runs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One residual scheme with its λ and norm, as compared in the paper.

    Attributes:
        scheme: a name of :data:`hf_rskip.residual.RESIDUAL_SCHEMES`.
        skip_lambda: λ (1 for ``post_ln`` / ``pre_ln``).
        norm: ``"layer"`` or ``"batch"`` (the residual norm; ``"batch"`` only for images).
    """

    scheme: str
    skip_lambda: float = 1
    norm: str = "layer"

    @property
    def key(self) -> str:
        """A short stable name: ``post_ln``, ``xskip-2``, ``rskip_ln-3``, ``rskip_ln-2-bn``."""
        key = self.scheme if self.scheme in ("post_ln", "pre_ln") else f"{self.scheme}-{self.skip_lambda:g}"
        return key + ("-bn" if self.norm == "batch" else "")

    @property
    def label(self) -> str:
        """How tables and plots show it: ``rSkip+LN λ=2``, ``xSkip+BN λ=2``, ``Post-LN``."""
        norm = "BN" if self.norm == "batch" else "LN"
        if self.scheme == "post_ln":
            return f"Post-{norm}"
        if self.scheme == "pre_ln":
            return f"Pre-{norm}"
        name = {"xskip": "xSkip", "xskip_ln": f"xSkip+{norm}", "rskip_ln": f"rSkip+{norm}"}[self.scheme]
        return f"{name} λ={self.skip_lambda:g}"

    def config_options(self) -> dict[str, Any]:
        """The config fields that select this variant."""
        return {"residual_scheme": self.scheme, "skip_lambda": self.skip_lambda, "residual_norm": self.norm}

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """The inverse of :attr:`key` (``"rskip_ln-2-bn"`` -> ``Variant("rskip_ln", 2, "batch")``)."""
        parts = text.split("-")
        norm = "batch" if parts[-1] == "bn" else "layer"
        if parts[-1] == "bn":
            parts = parts[:-1]
        lam = float(parts[1]) if len(parts) > 1 else 1
        return cls(parts[0], int(lam) if lam == int(lam) else lam, norm)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep.

    Attributes:
        task: ``"text"`` or ``"vision"``.
        depth: the name of the stack size (a key of the preset's ``depths``, e.g. ``"3+3"``).
        variant: the residual scheme.
        learning_rate: the peak learning rate.
        seed: the seed of initialization, data order and dropout.
        phase: ``"search"`` (learning-rate grid, one seed, shorter, scored on held-out data) or ``"final"``.
        steps: optimizer steps.
    """

    task: str
    depth: str
    variant: Variant
    learning_rate: float
    seed: int
    phase: str
    steps: int

    @property
    def run_id(self) -> str:
        """A file-name-safe unique id, e.g. ``text-3+3-rskip_ln-2-lr0.0005-s1-final``."""
        return f"{self.task}-{self.depth}-{self.variant.key}-lr{self.learning_rate:g}-s{self.seed}-{self.phase}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["variant"] = self.variant.key
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunSpec":
        values = dict(values)
        values["variant"] = Variant.parse(values["variant"])
        return cls(**values)


def _variants(entries: Iterable[Sequence[Any]]) -> list[Variant]:
    """``[("rskip_ln", 2), ("rskip_ln", 2, "batch"), ...]`` -> variants."""
    return [Variant(*entry) for entry in entries]


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

_TEXT_VARIANTS = [("post_ln", 1), ("pre_ln", 1), ("xskip", 1), ("xskip", 2), ("xskip_ln", 2), ("rskip_ln", 2),
                  ("rskip_ln", 3)]
_VISION_VARIANTS = [("xskip", 1), ("xskip", 2), ("post_ln", 1), ("pre_ln", 1), ("xskip_ln", 2), ("rskip_ln", 2),
                    ("rskip_ln", 3), ("post_ln", 1, "batch"), ("xskip_ln", 2, "batch"), ("rskip_ln", 2, "batch")]


#: The schemes of the trainability map: the paper's, with xSkip's λ = 2 without and with LN.
_MAP_VARIANTS = [("post_ln", 1), ("pre_ln", 1), ("xskip", 2), ("xskip_ln", 2), ("rskip_ln", 2), ("rskip_ln", 3)]


def _text_size(d_model: int, layers: int, heads: int = 4) -> dict[str, int]:
    return dict(d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
                decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model)


#: The sweeps. ``text`` / ``vision``: data limits, stack sizes (``depths``), variants, seeds, the learning-rate grid
#: and its search budget, the final budget. ``grad``: the gradient analysis. ``jobs``: runs at once (processes);
#: ``threads``: CPU threads per process (None: torch's default).
PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a laptop CPU: every stage runs, nothing is expected to learn much.
    "smoke": dict(
        jobs=1, threads=1,
        text=dict(
            data=dict(max_train_pairs=3000, max_valid_pairs=100, max_test_pairs=100, vocab_size=1000, max_length=48),
            depths={"2+2": _text_size(32, 2), "4+4": _text_size(32, 4)},
            variants=[("post_ln", 1), ("rskip_ln", 2)],
            seeds=[0, 1], lr_grid=[1e-3, 3e-3], search_steps=15, steps=30, warmup_steps=10, max_tokens=1024,
            dropout=0.1, label_smoothing=0.1, num_beams=1, eval_every=15,
        ),
        vision=dict(
            data=dict(max_train_images=512, max_test_images=500, held_out=128),
            depths={"resnet-8": dict(depth=8, hidden_sizes=[8, 16, 32])},
            variants=[("xskip", 1), ("rskip_ln", 2), ("rskip_ln", 2, "batch")],
            seeds=[0, 1], lr_grid=[0.1], search_steps=10, steps=20, warmup_steps=0, batch_size=64, eval_every=10,
        ),
        grad=dict(text_size=_text_size(32, 6), resnet_depth=20, steps=5, batch_pairs=16, resnet_batch=16,
                  text_lr=5e-4, vision_lr=0.05,
                  variants=[("post_ln", 1), ("pre_ln", 1), ("xskip", 2), ("rskip_ln", 2)]),
        map=dict(d_model=32, heads=2, depths=[1, 2], variants=[("post_ln", 1), ("rskip_ln", 2)], lr_grid=[1e-3, 4e-3],
                 seeds=[0], steps=6, warmup_steps=2, max_tokens=512, dropout=0.1, label_smoothing=0.1,
                 max_grad_norm=1.0, weight_decay=1e-4, probe_pairs=8, logging_steps=2),
    ),
    # The grid on 2 CPU cores, two single-thread runs at once. It does NOT fit the ~4 hours once hoped for;
    # measured per-run costs (one thread, the other core busy): a 3+3 recipe run of 1,000 steps ~33 min of training +
    # ~4 min of beam-5 test decoding; 6+6 about twice that; a ResNet-20 run of 3,200 steps 11-13 min (two at once;
    # ~20 min with the test suite also running); a map cell 1-4 min (6+6, 12+12), 1.5-2.5 min (24+24). Text 40 runs
    # ~38 h of one core, vision 9 runs ~2 h, map 144 cells ~5 h: about 23 hours of wall time in all. The sweep is
    # resumable and reuses finished runs (a saved run of other steps is refused, not reused), so it can be run in
    # parts (--tasks, --override) and continued; README, "Does the paper's result hold?", says what has been run.
    "cpu": dict(
        jobs=2, threads=1,
        # The Multi30k recipe (run_translation.py --recipe multi30k_en_de: d_model 256, 3+3, 8,000 joint BPE,
        # 4,096-token batches, inverse-sqrt schedule, label smoothing 0.1, bf16 autocast where it is fast, the last 3
        # checkpoints averaged, beam 5) at its full 1,000 steps, 3 seeds of 5 schemes at two depths. Each scheme's rate
        # is chosen from the grid on full-budget seed-0 runs (validation NLL). Half the steps (500, 150 warm-up) is too
        # short: Post-LN seed 0 translated every test sentence the same (test BLEU 2.4; results/paper-cpu/superseded).
        text=dict(
            data=dict(max_train_pairs=None, max_valid_pairs=500, max_test_pairs=None, vocab_size=8000, max_length=64),
            # 6+6: the deeper setting, from the map (d_model 64): at 6+6 and 12+12 Post-LN still trains at 4.5e-3 but
            # fails at 1.35e-2 (validation NLL 6.6, near its start), where rSkip+LN λ = 3 has the best NLL of all cells.
            depths={"3+3": _text_size(256, 3), "6+6": _text_size(256, 6)},
            variants=[("post_ln", 1), ("pre_ln", 1), ("xskip_ln", 2), ("rskip_ln", 2), ("rskip_ln", 3)],
            seeds=[0, 1, 2], lr_grid=[1.5e-3, 3e-3], search_steps="final", steps=1000, warmup_steps=300,
            max_tokens=4096, dropout=0.1, label_smoothing=0.1, num_beams=5, length_penalty=1.0, eval_every=100,
            lr_scheduler="inverse_sqrt", weight_decay=1e-4, average_last=3, average_every=100, mixed_precision="auto",
        ),
        # PreAct-ResNet-20 on the 4,000 exact CIFAR-10 training images to convergence: 100 epochs (3,200 steps of 128),
        # SGD lr 0.1 (He et al.'s) with a cosine schedule, weight decay 5e-4, bf16 autocast (where it is fast) and
        # channels-last (2.4x faster on a CPU with AVX-512); the plain network passes 70% test accuracy there (a pilot:
        # 70.0% after 80 epochs, 70.7% after 90). One rate for all three (the standard one; no search on 4,000 images).
        vision=dict(
            data=dict(max_train_images=None, max_test_images=None, held_out=500),
            depths={"resnet-20": dict(depth=20, hidden_sizes=[16, 32, 64])},
            variants=[("xskip", 1), ("rskip_ln", 2), ("rskip_ln", 2, "batch")],
            seeds=[0, 1, 2], lr_grid=[0.1], search_steps=0, steps=3200, warmup_steps=100, batch_size=128,
            eval_every=640, weight_decay=5e-4, mixed_precision="auto", channels_last=True,
        ),
        grad=dict(text_size=_text_size(64, 18), resnet_depth=110, steps=30, batch_pairs=64, resnet_batch=32,
                  text_lr=5e-4, vision_lr=0.05, variants=_TEXT_VARIANTS),
        # 6 schemes x 3 depths x 4 rates x 2 seeds = 144 runs of 150 steps (d_model 64, 1,024-token batches, a short
        # warm-up of 30 steps: where Post-LN is expected to break)
        map=dict(d_model=64, heads=4, depths=[6, 12, 24], variants=_MAP_VARIANTS,
                 lr_grid=[5e-4, 1.5e-3, 4.5e-3, 1.35e-2], seeds=[0, 1], steps=150, warmup_steps=30, max_tokens=1024,
                 dropout=0.1, label_smoothing=0.1, max_grad_norm=1.0, weight_decay=1e-4, probe_pairs=32,
                 logging_steps=10),
    ),
    # One GPU (bf16 autocast), 12 runs at once, sized for the ~15 minutes a lent H200 gives here (it took 430 s +
    # 241 s there, in two parts). It goes deeper than the cpu preset where CPUs cannot: the Multi30k recipe at 12+12
    # (d_model 256, same data, batch, schedule, averaging and beam as the cpu preset's 3+3 and 6+6, whose 6+6 runs
    # give the rates below: no search here, each scheme at the rate it trained best at 6+6) and the paper's
    # PreAct-ResNet-110 on the 4,000 CIFAR-10 images, 3 seeds each; the gradient analysis runs beside them in one
    # more process. Run it with the CUDA MPS daemon on, so the small models' kernels run side by side (README, "The
    # gpu preset").
    "gpu": dict(
        jobs=12, threads=1,
        text=dict(
            data=dict(max_train_pairs=None, max_valid_pairs=500, max_test_pairs=None, vocab_size=8000, max_length=64),
            depths={"12+12": _text_size(256, 12)},
            variants=[("post_ln", 1), ("pre_ln", 1), ("xskip_ln", 2), ("rskip_ln", 2), ("rskip_ln", 3)],
            seeds=[0, 1, 2], lr_grid=[1.5e-3],
            learning_rates={"post_ln": 1.5e-3, "pre_ln": 1.5e-3, "xskip_ln-2": 1.5e-3, "rskip_ln-2": 3e-3,
                            "rskip_ln-3": 3e-3},
            search_steps="final", steps=1000, warmup_steps=300, max_tokens=4096, dropout=0.1, label_smoothing=0.1,
            num_beams=5, length_penalty=1.0, eval_every=100, lr_scheduler="inverse_sqrt", weight_decay=1e-4,
            average_last=3, average_every=100, mixed_precision="auto", decode_batch_size=250,
        ),
        # He et al.'s ResNet-110 setting (SGD 0.1, momentum 0.9, weight decay 5e-4 as in the cpu preset) with a cosine
        # schedule, 50 epochs of the 4,000 images (1,600 steps of 128)
        vision=dict(
            data=dict(max_train_images=None, max_test_images=None, held_out=500),
            depths={"resnet-110": dict(depth=110, hidden_sizes=[16, 32, 64])},
            variants=[("xskip", 1), ("rskip_ln", 2), ("rskip_ln", 2, "batch")],
            seeds=[0, 1, 2], lr_grid=[0.1], search_steps=0, steps=1600, warmup_steps=100, batch_size=128,
            eval_every=400, weight_decay=5e-4, mixed_precision="auto", channels_last=True,
        ),
        grad=dict(text_size=_text_size(128, 18), resnet_depth=110, steps=100, batch_pairs=128, resnet_batch=128,
                  text_lr=5e-4, vision_lr=0.05, variants=_TEXT_VARIANTS),
    ),
}


def get_preset(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of a preset with nested overrides applied (``{"text": {"steps": 10}}`` changes one field).

    Raises:
        ValueError: an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; accepted: {sorted(PRESETS)}")
    preset = copy.deepcopy(PRESETS[name])

    def merge(base: dict[str, Any], new: Mapping[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, Mapping) and isinstance(base.get(key), dict) and key != "depths":
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    merge(preset, overrides or {})
    return preset


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def plan_search(task: str, settings: Mapping[str, Any]) -> list[RunSpec]:
    """The learning-rate search runs: every (depth, variant, lr of the grid), first seed, ``search_steps`` steps.

    ``search_steps="final"`` (text only) makes the search the first seed's final runs at every rate of the grid,
    chosen by their validation NLL: the chosen run is then also that seed's final run. A search shorter than the
    final budget favours large rates: on Multi30k at 3+3, 80 search steps chose 4e-3 for every scheme, and at 400
    steps 4e-3 gave Post-LN 0.5-0.7 BLEU where 2e-3 gave 12-17. Vision keeps a separate search (its final runs
    are scored on the test set, which must not choose anything).

    With a one-value grid there is nothing to search and the list is empty.

    Raises:
        ValueError: ``search_steps="final"`` for vision.
    """
    grid = list(settings["lr_grid"])
    if len(grid) < 2:
        return []
    fixed = fixed_learning_rates(settings)
    phase, steps = "search", settings["search_steps"]
    if steps == "final":
        if task != "text":
            raise ValueError(f"{task}: search_steps='final' is for text only (its final runs choose by validation "
                             "NLL); vision's final runs are scored on the test set")
        phase, steps = "final", settings["steps"]
    return [
        RunSpec(task, depth, variant, lr, settings["seeds"][0], phase, steps)
        for depth in settings["depths"]
        for variant in _variants(settings["variants"])
        if (depth, variant.key) not in fixed
        for lr in grid
    ]


def fixed_learning_rates(settings: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """The rates a preset fixes instead of searching (``learning_rates``), per (depth, variant key).

    ``learning_rates`` maps a variant key (every depth) or ``"depth/variant key"`` (one depth) to a rate, e.g.
    rates chosen by an earlier sweep: ``{"post_ln": 1.5e-3, "12+12/rskip_ln-2": 1e-3}``. Those variants are not
    searched.

    Raises:
        ValueError: a key that names no variant or depth of ``settings``, or a rate that is not a positive number.
    """
    given = settings.get("learning_rates") or {}
    depths = list(settings["depths"])
    keys = [variant.key for variant in _variants(settings["variants"])]
    fixed: dict[tuple[str, str], float] = {}
    for name, lr in given.items():
        depth, _, key = name.rpartition("/")
        if key not in keys or (depth and depth not in depths):
            raise ValueError(f"learning_rates: {name!r} names no variant of this sweep; accepted: a variant key of "
                             f"{keys}, optionally after 'depth/' with a depth of {depths}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
            raise ValueError(f"learning_rates: {name!r} is {lr!r}; it must be a positive number")
        for d in ([depth] if depth else depths):
            if depth or (d, key) not in fixed:  # a depth-specific rate wins over the every-depth one
                fixed[(d, key)] = float(lr)
    return fixed


def best_learning_rates(results: Iterable[Mapping[str, Any]], *, higher_is_better: bool) -> dict[tuple[str, str], float]:
    """Per (depth, variant key), the learning rate whose search run scored best on held-out data.

    A run whose selection score is missing or not finite (it diverged) never wins unless all did.

    Args:
        results: run results with ``spec`` (a :meth:`RunSpec.to_dict`) and ``selection_score``.
        higher_is_better: True for accuracy, False for validation NLL.
    """
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for result in results:
        spec = result["spec"]
        score = result.get("selection_score")
        value = score if isinstance(score, (int, float)) and math.isfinite(score) else None
        rank = (-math.inf if value is None else (value if higher_is_better else -value))
        key = (spec["depth"], spec["variant"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, spec["learning_rate"])
    return {key: lr for key, (_, lr) in best.items()}


def plan_final(task: str, settings: Mapping[str, Any], learning_rates: Mapping[tuple[str, str], float]) -> list[RunSpec]:
    """The final runs: every (depth, variant, seed) at its own learning rate: the preset's fixed one
    (:func:`fixed_learning_rates`), else the search's best, else the grid's only value."""
    specs = []
    fixed = fixed_learning_rates(settings)
    for depth in settings["depths"]:
        for variant in _variants(settings["variants"]):
            lr = fixed.get((depth, variant.key), learning_rates.get((depth, variant.key), settings["lr_grid"][0]))
            specs.extend(RunSpec(task, depth, variant, lr, seed, "final", settings["steps"]) for seed in settings["seeds"])
    return specs


# --------------------------------------------------------------------------------------------------
# Running (in this process, or several processes at once)
# --------------------------------------------------------------------------------------------------

TrainFn = Callable[[RunSpec], dict[str, Any]]
"""``train_fn(spec) -> result``: trains one run and returns JSON-ready metrics (see :func:`train_text_run`)."""


def _result_path(out_dir: Path, spec: RunSpec) -> Path:
    return out_dir / "runs" / f"{spec.run_id}.json"


def _save_json(path: Path, payload: Any) -> None:
    """Writes through a temporary file and a rename, so an interrupted sweep never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # keys keep their order: per-layer dicts are in depth order, which a sorted dump would scramble (10 < 2)
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _run_and_save(train_fn: TrainFn, spec: RunSpec, out_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    result = dict(train_fn(spec))
    result["spec"] = spec.to_dict()
    result["run_id"] = spec.run_id
    result["wall_s"] = round(time.perf_counter() - started, 1)
    _save_json(_result_path(out_dir, spec), result)
    return result


_WORKER: dict[str, Any] = {}


def resolve_threads(threads: int | str | None) -> int | None:
    """A preset's ``threads``: a count, None (torch's default), or ``"auto"``: the cores other programs leave idle
    (:func:`hf_rskip.training.job.busy_cores`), at least 1."""
    if threads != "auto":
        return int(threads) if threads else None
    from hf_rskip.training.job import busy_cores

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - round(busy_cores()))


def _set_threads(preset: Mapping[str, Any]) -> None:
    """Applies the preset's CPU thread count (each worker process, too)."""
    threads = resolve_threads(preset.get("threads"))
    if threads:
        torch.set_num_threads(threads)


def _worker_init(preset: Mapping[str, Any], out_dir: str) -> None:
    """Each worker process builds its own task context once (data is read there, not pickled across)."""
    _set_threads(preset)
    _WORKER["context"] = ReproduceContext(preset, Path(out_dir))


def _worker_run(spec_dict: Mapping[str, Any], out_dir: str) -> dict[str, Any]:
    spec = RunSpec.from_dict(spec_dict)
    return _run_and_save(_WORKER["context"].train, spec, Path(out_dir))


def _measure_gradients(context: ReproduceContext, tasks: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """The gradient analysis of ``context``'s preset, saved in its folder as soon as it is done (a sweep stopped
    later keeps it)."""
    analysis = gradient_analysis(context.preset, context, tasks=tasks, log=log)
    _save_json(context.out_dir / GRADIENTS_FILE, analysis)
    return analysis


def _worker_gradients(tasks: Sequence[str]) -> dict[str, Any]:
    """The gradient analysis in a side process, beside the sweep's workers."""
    return _measure_gradients(_WORKER["context"], tasks,
                              lambda message: print(f"[gradients] {message}", file=sys.stderr, flush=True))


GRADIENTS_FILE = "gradient_analysis.json"
"""The gradient analysis of a sweep's folder, kept like a finished run: reused by a resumed sweep and the report."""


def _saved_gradients(out_dir: Path, preset: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, Any] | None:
    """The saved gradient analysis of ``out_dir`` if it was made with this preset's ``grad`` settings for these
    tasks, else None."""
    path = out_dir / GRADIENTS_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    wanted = [task for task in ("text", "vision") if task in tasks]
    if saved.get("settings") != json.loads(json.dumps(preset.get("grad"))) or any(t not in saved for t in wanted):
        return None
    return saved


def run_specs(
    specs: Sequence[RunSpec],
    train_fn: TrainFn,
    out_dir: Path,
    *,
    jobs: int = 1,
    preset: Mapping[str, Any] | None = None,
    only_existing: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs every spec once, skipping those whose result file already exists (so a sweep resumes).

    Args:
        specs: the runs.
        train_fn: trains one run in this process (used when ``jobs == 1``).
        out_dir: results go to ``out_dir/runs/<run_id>.json``.
        jobs: runs at once. Above 1, ``jobs`` worker processes (spawned; each builds a :class:`ReproduceContext` from
            ``preset``) share the device: on one GPU many small models train side by side.
        preset: needed when ``jobs > 1``.
        only_existing: train nothing; return the results already saved (a report on a sweep still running).
        log: progress messages.

    Returns:
        The results of all specs (of the saved ones with ``only_existing``), in spec order.
    """
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for spec in specs:
        path = _result_path(out_dir, spec)
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            planned = json.loads(json.dumps(spec.to_dict()))
            if saved.get("spec", planned) != planned:  # e.g. the preset's steps changed: never report it as this run
                differs = [f"{k}={saved['spec'].get(k)!r} (now {v!r})" for k, v in planned.items()
                           if saved["spec"].get(k) != v]
                raise ValueError(f"{path} holds a run with {', '.join(differs)}; move it out of {path.parent} to "
                                 "run this one, or run with the settings that made it")
            results[spec.run_id] = saved
        else:
            todo.append(spec)
    if only_existing:
        if todo:
            log(f"report only: {len(todo)} of {len(specs)} runs not done yet are left out")
        return [results[spec.run_id] for spec in specs if spec.run_id in results]
    # the first seed of every setting first, then the second, ...: a sweep stopped early (a time limit, a lost
    # machine) has every setting at some seeds rather than some settings at every seed
    seeds: dict[str, list[int]] = {}  # per task, its seeds in plan order
    for spec in specs:
        if spec.seed not in seeds.setdefault(spec.task, []):
            seeds[spec.task].append(spec.seed)
    todo.sort(key=lambda spec: seeds[spec.task].index(spec.seed))
    if todo:
        log(f"{len(todo)} runs to do ({len(specs) - len(todo)} already done), {jobs} at a time")
    if jobs <= 1 or len(todo) <= 1:
        for index, spec in enumerate(todo, 1):
            result = _run_and_save(train_fn, spec, out_dir)
            results[spec.run_id] = result
            log(f"[{index}/{len(todo)}] {spec.run_id}: {_headline(result)} ({result['wall_s']} s)")
    else:
        import concurrent.futures
        import multiprocessing

        if preset is None:
            raise ValueError("jobs > 1 needs the preset, to build the task in each worker process")
        context = multiprocessing.get_context("spawn")  # CUDA cannot be shared with a forked child
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                                    initargs=(dict(preset), str(out_dir))) as pool:
            futures = {pool.submit(_worker_run, spec.to_dict(), str(out_dir)): spec for spec in todo}
            for index, future in enumerate(concurrent.futures.as_completed(futures), 1):
                spec = futures[future]
                result = future.result()
                results[spec.run_id] = result
                log(f"[{index}/{len(todo)}] {spec.run_id}: {_headline(result)} ({result['wall_s']} s)")
    return [results[spec.run_id] for spec in specs]


def _headline(result: Mapping[str, Any]) -> str:
    parts = [f"{key}={result[key]:.3f}" for key in ("selection_score", "metric") if isinstance(result.get(key), float)]
    return ", ".join(parts) or "done"


# --------------------------------------------------------------------------------------------------
# Text: Multi30k EN→DE
# --------------------------------------------------------------------------------------------------


@dataclass
class TextData:
    """Multi30k prepared once for every run of a sweep.

    Attributes:
        tokenizer: the joint BPE tokenizer trained on the training split.
        train: the tokenized training pairs (``input_ids``, ``attention_mask``, ``labels``).
        train_lengths: per pair, the longer side's length (for token batches).
        valid: the tokenized validation pairs (for NLL and learning-rate selection).
        test_sources: test_2016_flickr sources.
        test_references: their references.
        description: what the data is, for the results.
    """

    tokenizer: Any
    train: Any
    train_lengths: list[int]
    valid: Any
    test_sources: list[str]
    test_references: list[str]
    description: dict[str, Any] = field(default_factory=dict)


def prepare_text_data(settings: Mapping[str, Any], cache_dir: Path) -> TextData:
    """Loads Multi30k EN→DE from the staged files (the built-in task where they are absent), trains or reloads the
    tokenizer (saved under ``cache_dir`` so every worker process uses the same one) and tokenizes.

    Args:
        settings: the preset's ``text`` section (its ``data`` limits).
        cache_dir: where the tokenizer is kept.
    """
    import datasets
    from transformers import AutoTokenizer

    from hf_rskip.data import (builtin_translation_task, clean_pairs, load_recipe, token_lengths, tokenize_pairs,
                               train_tokenizer)

    datasets.disable_progress_bars()
    data = settings["data"]
    if (shared_data_dir() / "multi30k" / "train.en.gz").is_file():
        raw = load_recipe("local_multi30k_en_de")
        src, tgt = "en", "de"
        description = {"dataset": "Multi30k task 1 EN→DE (staged files)", "test": "test_2016_flickr"}
    else:  # a clean clone without the staged data still runs end to end, on the generated task
        raw = builtin_translation_task(num_train=data.get("max_train_pairs") or 20000, num_valid=500, num_test=500)
        src, tgt = "en", "xx"
        description = {"dataset": "hf_rskip built-in task (Multi30k not found)", "test": "builtin test"}
    for split in list(raw):
        raw[split], _ = clean_pairs(raw[split], src, tgt)
    limits = {"train": data.get("max_train_pairs"), "validation": data.get("max_valid_pairs"),
              "test": data.get("max_test_pairs")}
    for split, limit in limits.items():
        if limit is not None and len(raw[split]) > limit:
            raw[split] = raw[split].select(range(limit))
    key = hashlib.sha1(json.dumps([description["dataset"], data], sort_keys=True).encode()).hexdigest()[:10]
    tokenizer_dir = cache_dir / f"tokenizer-{key}"
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        texts = (pair[lang] for pair in raw["train"]["translation"] for lang in (src, tgt))
        tokenizer = train_tokenizer(texts, data["vocab_size"])
        tokenizer.save_pretrained(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    max_length = data["max_length"]
    train, _ = tokenize_pairs(raw["train"], tokenizer, src, tgt, max_length, max_length)
    valid, _ = tokenize_pairs(raw["validation"], tokenizer, src, tgt, max_length, max_length)
    test_pairs = raw["test"]["translation"]
    description.update(train_pairs=len(train), valid_pairs=len(valid), test_pairs=len(test_pairs),
                       vocab_size=len(tokenizer))
    return TextData(tokenizer, train, token_lengths(train), valid, [p[src] for p in test_pairs],
                    [p[tgt] for p in test_pairs], description)


def _accelerator(mixed_precision: str | None = None) -> Any:
    """One Accelerator setting for every run: bf16 autocast on a GPU; on a CPU what the preset says (default fp32;
    ``"auto"``: bf16 where the CPU has fast bf16 kernels, which gave 1.5x faster training steps at d_model 256 on
    one with AVX-512, and fp32 on an AVX2-only CPU, where bf16 is 10-33x slower)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from hf_rskip.training.job import resolve_mixed_precision

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if mixed_precision is None:
        mixed_precision = "bf16" if device_type == "cuda" else "no"
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision, device_type),
                       step_scheduler_with_optimizer=False,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def text_config(size: Mapping[str, int], variant: Variant, tokenizer: Any, *, dropout: float) -> Any:
    """The model config of a text run: the size, the variant, the tokenizer's ids; as ``run_translation.py`` builds
    a fresh model (ReLU, embeddings scaled by √d_model)."""
    from hf_rskip.data import special_token_ids
    from hf_rskip.models import RSkipConfig

    return RSkipConfig(
        **size, **variant.config_options(), **special_token_ids(tokenizer),  # ids and vocab_size
        activation_function="relu", scale_embedding=True, dropout=dropout, max_position_embeddings=256,
    )


def train_text_run(spec: RunSpec, settings: Mapping[str, Any], data: TextData) -> dict[str, Any]:
    """Trains and scores one translation run with :func:`hf_rskip.training.train`.

    Search runs report the validation NLL as ``selection_score``; final runs also translate test_2016_flickr and
    report sacreBLEU as ``metric``.

    Returns:
        ``metric`` (test BLEU, final runs), ``selection_score`` (validation NLL), ``valid_nll``, ``history`` (train
        loss and validation NLL by step), ``train_seconds``, ``num_parameters``, ``diverged``.
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForSeq2Seq

    from hf_rskip.data import TokenBatchSampler, token_lengths
    from hf_rskip.evaluation import generate_translations, score_translations
    from hf_rskip.models import RSkipForConditionalGeneration
    from hf_rskip.training import LoopConfig, NonFiniteLossError, TranslationTask, train
    from hf_rskip.training.optim import build_optimizer, build_scheduler

    accelerator = _accelerator(settings.get("mixed_precision"))
    set_seed(spec.seed)
    model = RSkipForConditionalGeneration(
        text_config(settings["depths"][spec.depth], spec.variant, data.tokenizer, dropout=settings["dropout"]))
    generation = model.generation_config
    generation.bad_words_ids = [[model.config.pad_token_id]]  # decoding starts from <pad>; never emit it again
    generation.forced_eos_token_id = model.config.eos_token_id
    collator = DataCollatorForSeq2Seq(data.tokenizer, model=model, label_pad_token_id=-100)
    sampler = TokenBatchSampler(data.train_lengths, settings["max_tokens"], shuffle=True, seed=spec.seed)
    loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collator,
                        generator=torch.Generator().manual_seed(spec.seed))
    valid_sampler = TokenBatchSampler(token_lengths(data.valid), settings["max_tokens"], shuffle=False)
    valid_loader = DataLoader(data.valid, batch_sampler=valid_sampler, collate_fn=collator)
    optimizer = build_optimizer(model, learning_rate=spec.learning_rate,
                                weight_decay=settings.get("weight_decay", 1e-4))
    model, optimizer, loader, valid_loader = accelerator.prepare(model, optimizer, loader, valid_loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer, lr_scheduler_type=settings.get("lr_scheduler",
                                                                                               "inverse_sqrt"),
                                                    num_warmup_steps=min(settings["warmup_steps"], spec.steps // 2),
                                                    num_training_steps=spec.steps))
    steps_per_epoch = max(1, len(loader))
    # Checkpoint averaging (fairseq's, the recipe's): the last `average_last` checkpoints, `average_every` steps
    # apart, saved to a scratch folder by the package's checkpointing and averaged by it.
    average_last = int(settings.get("average_last", 1))
    scratch = tempfile.mkdtemp(prefix=f"{spec.run_id}-") if average_last > 1 else None
    config = LoopConfig(max_train_steps=spec.steps, num_train_epochs=math.ceil(spec.steps / steps_per_epoch),
                        max_grad_norm=1.0, eval_steps=settings["eval_every"],
                        logging_steps=max(1, settings["eval_every"] // 4), show_progress=False,
                        checkpoint_dir=Path(scratch) if scratch else None,
                        checkpointing_steps=settings.get("average_every") if scratch else None,
                        keep_last_checkpoints=average_last if scratch else None)
    task = TranslationTask(settings["label_smoothing"], eval_dataloader=valid_loader, accelerator=accelerator)
    try:
        result = train(accelerator, model, optimizer, scheduler, loader, task, config)
        if scratch:
            from hf_rskip.training.checkpointing import average_checkpoints, list_checkpoints, load_weights_into

            load_weights_into(accelerator.unwrap_model(model),
                              average_checkpoints(list_checkpoints(scratch)[-average_last:]))
    except NonFiniteLossError as err:  # a diverged run is a result of the sweep, not a failure of it
        return {"task": "text", "selection_score": math.nan, "valid_nll": math.nan, "diverged": True,
                "diverged_at": err.step, "history": [], "metric_name": "BLEU", "metric": 0.0 if spec.phase == "final"
                else None, "device": str(accelerator.device)}
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    valid = task.validation_nll(model)["eval_nll"]
    history = [{("valid_nll" if k == "eval_nll" else k): v for k, v in record.items()
                if k in ("step", "loss", "nll", "eval_nll")} for record in result.history]
    history.append({"step": result.state.completed_steps, "valid_nll": valid})
    train_loss = result.state.last_log.get("loss", math.nan)
    out: dict[str, Any] = {
        "task": "text", "selection_score": valid, "valid_nll": valid, "history": history,
        "train_seconds": result.state.train_seconds, "train_loss": train_loss,
        "num_parameters": accelerator.unwrap_model(model).num_parameters(),
        "diverged": not math.isfinite(train_loss) or not math.isfinite(valid),
        "device": str(accelerator.device), "metric_name": "BLEU",
    }
    if spec.phase == "final":
        hypotheses = generate_translations(model, data.tokenizer, data.test_sources, num_beams=settings["num_beams"],
                                           length_penalty=settings.get("length_penalty", 1.0),
                                           batch_size=int(settings.get("decode_batch_size", 64)),
                                           accelerator=accelerator)
        scores = score_translations(hypotheses, data.test_references)
        out.update(metric=scores["bleu"], test_bleu=scores["bleu"], test_chrf=scores["chrf"],
                   bleu_signature=scores["bleu_signature"], num_beams=settings["num_beams"],
                   test_hypotheses=hypotheses)  # for the paired bootstrap between schemes
    return out


# --------------------------------------------------------------------------------------------------
# Vision: CIFAR-10
# --------------------------------------------------------------------------------------------------


@dataclass
class VisionData:
    """CIFAR-10 prepared once: uint8 ``(N, 3, H, W)`` tensors and int64 labels.

    Attributes:
        train_images, train_labels: the training images of final runs (the 4,000 exact ones).
        search_images, search_labels: the training images of search runs (all but the held-out ones).
        held_out_images, held_out_labels: the held-out part, which scores the learning-rate search.
        test_images, test_labels: the 10,000-image JPEG test set.
        description: what the data is.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    search_images: torch.Tensor
    search_labels: torch.Tensor
    held_out_images: torch.Tensor
    held_out_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    description: dict[str, Any] = field(default_factory=dict)


def prepare_vision_data(settings: Mapping[str, Any]) -> VisionData:
    """CIFAR-10 from the staged files: 4,000 lossless training images, the 10,000 JPEG test images. Where they are
    absent (a clean clone elsewhere), scikit-learn's digits stand in so the sweep still runs end to end."""
    import numpy as np

    data = settings["data"]
    lossless = shared_data_dir() / "cifar10" / "lossless_subset" / "cifar10_lossless_subset.npz"
    jpeg = shared_data_dir() / "cifar10" / "jpeg_test" / "cifar10_test_jpeg_decoded.npz"
    if lossless.is_file() and jpeg.is_file():
        with np.load(lossless) as train_file, np.load(jpeg) as test_file:
            x_train, y_train = train_file["x_train"], train_file["y_train"]
            x_test, y_test = test_file["x"], test_file["y"]
        description = {"dataset": "CIFAR-10: 4,000 exact training images, 10,000 JPEG test images (staged files)"}
    else:
        from hf_rskip.data.images import load_digits_splits

        train, test, _ = load_digits_splits(image_size=32)
        x_train, y_train, x_test, y_test = train.images, train.labels, test.images, test.labels
        description = {"dataset": "scikit-learn digits (CIFAR-10 not found)"}

    def tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(),  # (N, 3, H, W)
                torch.from_numpy(np.asarray(labels, dtype=np.int64)))

    rng = np.random.default_rng(0)
    if data.get("max_train_images") and data["max_train_images"] < len(y_train):
        keep = np.sort(rng.permutation(len(y_train))[: data["max_train_images"]])
        x_train, y_train = x_train[keep], y_train[keep]
    if data.get("max_test_images") and data["max_test_images"] < len(y_test):
        keep = np.sort(rng.permutation(len(y_test))[: data["max_test_images"]])  # the JPEG set is ordered by class
        x_test, y_test = x_test[keep], y_test[keep]
    order = np.random.default_rng(1).permutation(len(y_train))
    held, kept = np.sort(order[: data["held_out"]]), np.sort(order[data["held_out"]:])
    train_images, train_labels = tensors(x_train, y_train)
    test_images, test_labels = tensors(x_test, y_test)
    description.update(train_images=len(train_labels), held_out_images=len(held), test_images=len(test_labels))
    return VisionData(train_images, train_labels, train_images[kept], train_labels[kept], train_images[held],
                      train_labels[held], test_images, test_labels, description)


def train_vision_run(spec: RunSpec, settings: Mapping[str, Any], data: VisionData) -> dict[str, Any]:
    """Trains and scores one PreAct-ResNet run with :func:`hf_rskip.training.train`.

    SGD with momentum 0.9 and weight decay 1e-4 (He et al.), a cosine schedule after a short warm-up, the standard
    crop-and-flip augmentation. Search runs train without the held-out images and report held-out accuracy as
    ``selection_score``; final runs train on all training images and report test accuracy (%) as ``metric``.
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader, TensorDataset

    from torch.utils.data import RandomSampler

    from hf_rskip.data.images import CIFAR10_MEAN, CIFAR10_STD
    from hf_rskip.models import RSkipResNetConfig, RSkipResNetForImageClassification
    from hf_rskip.training import ImageClassificationTask, LoopConfig, NonFiniteLossError, evaluate_classifier, train
    from hf_rskip.training.optim import build_optimizer, build_scheduler

    accelerator = _accelerator(settings.get("mixed_precision"))
    set_seed(spec.seed)
    size = settings["depths"][spec.depth]
    model = RSkipResNetForImageClassification(RSkipResNetConfig(
        depth=size["depth"], hidden_sizes=list(size["hidden_sizes"]), num_labels=10, **spec.variant.config_options()))
    channels_last = bool(settings.get("channels_last"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spec.phase == "search":
        images, labels = data.search_images, data.search_labels
        eval_images, eval_labels, prefix = data.held_out_images, data.held_out_labels, "held_out"
    else:
        images, labels = data.train_images, data.train_labels
        eval_images, eval_labels, prefix = data.test_images, data.test_labels, "test"
    dataset = TensorDataset(images, labels)
    generator = torch.Generator().manual_seed(spec.seed)
    loader = DataLoader(dataset, batch_size=settings["batch_size"], sampler=RandomSampler(dataset, generator=generator),
                        generator=generator)
    eval_loader = DataLoader(TensorDataset(eval_images, eval_labels), batch_size=500)
    optimizer = build_optimizer(model, optimizer="sgd", learning_rate=spec.learning_rate, momentum=0.9,
                                weight_decay=settings.get("weight_decay", 1e-4))
    model, optimizer, loader, eval_loader = accelerator.prepare(model, optimizer, loader, eval_loader)
    scheduler = accelerator.prepare(build_scheduler(optimizer, lr_scheduler_type="cosine", num_training_steps=spec.steps,
                                                    num_warmup_steps=settings["warmup_steps"]))
    config = LoopConfig(max_train_steps=spec.steps, num_train_epochs=math.ceil(spec.steps / max(1, len(loader))),
                        max_grad_norm=None, eval_steps=settings["eval_every"],
                        logging_steps=max(1, settings["eval_every"] // 4), show_progress=False)
    task = ImageClassificationTask(mean=CIFAR10_MEAN, std=CIFAR10_STD, eval_dataloader=eval_loader,
                                   accelerator=accelerator, channels_last=channels_last)
    try:
        result = train(accelerator, model, optimizer, scheduler, loader, task, config)
    except NonFiniteLossError as err:
        return {"task": "vision", "selection_score": math.nan, "diverged": True, "diverged_at": err.step,
                "history": [], "metric_name": "accuracy (%)", "metric": 0.0 if spec.phase == "final" else None,
                "device": str(accelerator.device)}
    final = evaluate_classifier(model, eval_loader, accelerator, mean=CIFAR10_MEAN, std=CIFAR10_STD, prefix=prefix,
                                channels_last=channels_last)
    accuracy = 100.0 * final[f"{prefix}_accuracy"]
    history = [{k: v for k, v in record.items() if k in ("step", "loss", "accuracy", "eval_accuracy")}
               for record in result.history]
    history.append({"step": result.state.completed_steps, "eval_accuracy": final[f"{prefix}_accuracy"]})
    train_loss = result.state.last_log.get("loss", math.nan)
    out: dict[str, Any] = {
        "task": "vision", "selection_score": accuracy, "history": history, "train_seconds": result.state.train_seconds,
        "train_loss": train_loss, "num_parameters": accelerator.unwrap_model(model).num_parameters(),
        "diverged": not math.isfinite(train_loss), "device": str(accelerator.device),
        "metric_name": "accuracy (%)",
    }
    if spec.phase == "final":
        out.update(metric=accuracy, test_accuracy=accuracy, test_images=final["test_samples"])
    return out


class ReproduceContext:
    """Prepares each task's data on first use and trains runs of either task: the ``train_fn`` of a sweep.

    Args:
        preset: a preset (see :data:`PRESETS` and :func:`get_preset`).
        out_dir: the output folder (its ``cache`` holds the tokenizer shared by worker processes).
    """

    def __init__(self, preset: Mapping[str, Any], out_dir: Path) -> None:
        self.preset = preset
        self.out_dir = Path(out_dir)
        self._text: TextData | None = None
        self._vision: VisionData | None = None

    @property
    def text_data(self) -> TextData:
        if self._text is None:
            self._text = prepare_text_data(self.preset["text"], self.out_dir / "cache")
        return self._text

    @property
    def vision_data(self) -> VisionData:
        if self._vision is None:
            self._vision = prepare_vision_data(self.preset["vision"])
        return self._vision

    def train(self, spec: RunSpec) -> dict[str, Any]:
        """Trains one run of either task."""
        if spec.task == "text":
            return train_text_run(spec, self.preset["text"], self.text_data)
        if spec.task == "vision":
            return train_vision_run(spec, self.preset["vision"], self.vision_data)
        if spec.task == "map":
            from .trainability import train_map_run

            return train_map_run(spec, self.preset["map"], self.text_data)
        raise ValueError(f"task={spec.task!r} is unknown; accepted: {list(TASKS)}")


# --------------------------------------------------------------------------------------------------
# The gradient analysis
# --------------------------------------------------------------------------------------------------


def gradient_analysis(preset: Mapping[str, Any], context: ReproduceContext, *, tasks: Sequence[str] = TASKS,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Gradient norm per layer of deep stacks, per variant: at initialization and after ``steps`` training steps.

    Text: an encoder-decoder of ``grad.text_size`` (18+18 layers in the ``cpu`` and ``gpu`` presets), dropout off,
    AdamW at ``text_lr``, on real training batches; the probe batch is fixed so the profiles compare. Vision: the
    PreAct-ResNet of ``grad.resnet_depth`` (110: 54 blocks), SGD at ``vision_lr``. The same seed (0) for every
    variant, so each starts from the same weights wherever the variants share them.

    Returns:
        ``{"text": {variant_key: {"init": profile, "trained": profile}}, "vision": {...}, "settings": ...}`` with
        profiles as :meth:`hf_rskip.diagnostics.GradNormProfile.to_dict`.
    """
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForSeq2Seq

    from hf_rskip.diagnostics import grad_norms_during_training
    from hf_rskip.models import RSkipForConditionalGeneration

    grad = preset["grad"]
    out: dict[str, Any] = {"settings": copy.deepcopy(grad)}
    variants = _variants(grad["variants"])
    # fp32 on the GPU where there is one (a measurement, not a speed test): the deep stacks take minutes on a CPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out["device"] = _device_name("fp32")

    def on_device(batch: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    if "text" in tasks:
        data = context.text_data
        out["text"] = {}
        for variant in variants:
            torch.manual_seed(0)
            model = RSkipForConditionalGeneration(text_config(grad["text_size"], variant, data.tokenizer, dropout=0.0))
            collator = DataCollatorForSeq2Seq(data.tokenizer, model=model, label_pad_token_id=-100)
            loader = DataLoader(data.train, batch_size=grad["batch_pairs"], shuffle=True, collate_fn=collator,
                                generator=torch.Generator().manual_seed(0))
            model.to(device)
            batches = (on_device(batch) for batch in loader)
            probe = next(batches)
            optimizer = torch.optim.AdamW(model.parameters(), lr=grad["text_lr"], betas=(0.9, 0.98))
            profiles = grad_norms_during_training(model, batches, optimizer, measure_at=(0, grad["steps"]),
                                                  probe_batch=probe, max_grad_norm=1.0)
            out["text"][variant.key] = {"init": profiles[0].to_dict(),
                                        "trained": profiles[-1].to_dict() if len(profiles) > 1 else None}
            log(f"gradient norms, text {variant.key}: loss {profiles[0].loss:.2f} -> {profiles[-1].loss:.2f}")
    if "vision" in tasks:
        from hf_rskip.data.images import CIFAR10_MEAN, CIFAR10_STD, normalize_images
        from hf_rskip.models import RSkipResNetConfig, RSkipResNetForImageClassification

        data_v = context.vision_data
        vision_variants = [Variant("xskip", 1)] + [v for v in variants if v.key != "xskip-1"]
        out["vision"] = {}
        generator = torch.Generator().manual_seed(0)
        batch_size = grad["resnet_batch"]
        order = torch.randperm(len(data_v.train_labels), generator=generator)

        def image_batch(index: int) -> dict[str, torch.Tensor]:
            idx = order[(index * batch_size) % len(order):][:batch_size]
            pixels = normalize_images(data_v.train_images[idx], CIFAR10_MEAN, CIFAR10_STD)
            return on_device({"pixel_values": pixels, "labels": data_v.train_labels[idx]})

        for variant in vision_variants:
            torch.manual_seed(0)
            model = RSkipResNetForImageClassification(RSkipResNetConfig(depth=grad["resnet_depth"], num_labels=10,
                                                                        **variant.config_options())).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=grad["vision_lr"], momentum=0.9)
            batches = (image_batch(i) for i in range(1, grad["steps"] + 2))
            profiles = grad_norms_during_training(model, batches, optimizer, measure_at=(0, grad["steps"]),
                                                  probe_batch=image_batch(0))
            out["vision"][variant.key] = {"init": profiles[0].to_dict(),
                                          "trained": profiles[-1].to_dict() if len(profiles) > 1 else None}
            log(f"gradient norms, vision {variant.key}: loss {profiles[0].loss:.2f} -> {profiles[-1].loss:.2f}")
    return out


# --------------------------------------------------------------------------------------------------
# Aggregation and the table
# --------------------------------------------------------------------------------------------------

REFERENCE_VARIANT: dict[str, str] = {"text": "post_ln", "vision": "xskip-1"}
"""What each task's differences are measured against: Post-LN (the Transformer) and He et al.'s identity skip."""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def aggregate(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Final runs grouped by (task, depth, variant): mean and sample std of ``metric`` over seeds.

    Returns:
        Rows with ``task``, ``depth``, ``variant``, ``label``, ``learning_rate``, ``values``, ``mean``, ``std``, ``n``,
        ``diverged`` (runs that ended non-finite), in the order first seen.
    """
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for result in results:
        spec = result["spec"]
        if spec["phase"] != "final" or "metric" not in result:
            continue
        key = (spec["task"], spec["depth"], spec["variant"])
        row = groups.setdefault(key, {
            "task": spec["task"], "depth": spec["depth"], "variant": spec["variant"],
            "label": Variant.parse(spec["variant"]).label, "learning_rate": spec["learning_rate"],
            "metric_name": result.get("metric_name", "metric"), "values": [], "seeds": [], "diverged": 0,
        })
        value = result["metric"]
        row["values"].append(float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0)
        row["seeds"].append(spec["seed"])
        row["diverged"] += int(bool(result.get("diverged")))
    rows = list(groups.values())
    for row in rows:
        row["mean"], row["std"] = _mean_std(row["values"])
        row["n"] = len(row["values"])
    return rows


def compare_to_reference(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, str] = REFERENCE_VARIANT) -> list[dict[str, Any]]:
    """Adds to each row its difference from the reference variant of the same task and depth, and whether that
    difference is larger than the spread over seeds.

    "Larger than the spread" means ``|Δ| > std + std_ref``: the two ±1 std bands do not overlap. With 2-3 seeds this is
    a rough screen, not a significance test; ``n/a`` when either side has a single seed.

    Each row also gets ``seed_deltas``, its differences from the reference seed by seed (``[{"seed", "delta"}]``,
    for the seeds both ran; runs of one seed share initialization seed and data order), the paired comparison that
    images have instead of a per-sentence bootstrap.

    Returns:
        Copies of the rows with ``reference``, ``delta``, ``beyond_spread`` (True, False or None) and ``seed_deltas``.
    """
    by_key = {(r["task"], r["depth"], r["variant"]): r for r in rows}
    out = []
    for row in rows:
        ref_key = reference.get(row["task"])
        ref = by_key.get((row["task"], row["depth"], ref_key))
        new = dict(row)
        new["reference"] = ref_key
        new["seed_deltas"] = []
        if ref is not None and ref is not row:
            ref_values = dict(zip(ref["seeds"], ref["values"]))
            new["seed_deltas"] = [{"seed": seed, "delta": value - ref_values[seed]}
                                  for seed, value in zip(row["seeds"], row["values"]) if seed in ref_values]
        if ref is None or ref is row:
            new["delta"], new["beyond_spread"] = (0.0 if ref is row else None), None
        else:
            new["delta"] = row["mean"] - ref["mean"]
            spread = row["std"] + ref["std"]
            new["beyond_spread"] = None if math.isnan(spread) else bool(abs(new["delta"]) > spread)
        out.append(new)
    return out


def paired_bootstrap(baseline: Sequence[str], system: Sequence[str], references: Sequence[str], *,
                     samples: int = 1000) -> dict[str, float]:
    """sacreBLEU's paired bootstrap resampling (Koehn 2004) of ``system`` against ``baseline`` on one test set.

    Returns:
        ``delta`` (system BLEU minus baseline BLEU on the full set) and ``p_value`` (the probability of a difference
        at least this large by chance, estimated from ``samples`` resamples of the test sentences; sacreBLEU's fixed
        seed, ``SACREBLEU_SEED``, makes it repeatable). Identical outputs (two runs collapsed to the same sentence,
        say) are no difference at all: delta 0 and p 1, where sacreBLEU's own test gives the smallest p it can
        (its p counts resamples with a difference strictly above the observed one, and none is above 0).
    """
    if list(baseline) == list(system):
        return {"delta": 0.0, "p_value": 1.0}
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    test = PairedTest([("baseline", list(baseline)), ("system", list(system))], {"BLEU": BLEU()}, [list(references)],
                      test_type="bs", n_samples=samples)
    _, scores = test()
    base, result = scores["BLEU"][0], scores["BLEU"][1]
    return {"delta": float(result.score - base.score), "p_value": float(result.p_value)}


def add_significance(rows: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]],
                     references: Sequence[str] | None, reference: Mapping[str, str] = REFERENCE_VARIANT) -> list[dict]:
    """Adds to each text row the paired bootstrap against the reference scheme, seed by seed (the runs of one seed
    share initialization seed and data order): ``bootstrap`` = ``[{"seed", "delta", "p_value"}, ...]`` and
    ``significant_seeds`` (how many have p < 0.05)."""
    hypotheses = {(r["spec"]["depth"], r["spec"]["variant"], r["spec"]["seed"]): r["test_hypotheses"]
                  for r in results if r["spec"]["phase"] == "final" and r.get("test_hypotheses")}
    out = []
    for row in rows:
        new = dict(row)
        ref = reference.get(row["task"])
        if references is not None and row["task"] == "text" and row["variant"] != ref:
            tests = []
            for seed in row["seeds"]:
                base = hypotheses.get((row["depth"], ref, seed))
                mine = hypotheses.get((row["depth"], row["variant"], seed))
                if base and mine:
                    tests.append({"seed": seed, **paired_bootstrap(base, mine, references)})
            new["bootstrap"] = tests
            new["significant_seeds"] = sum(test["p_value"] < 0.05 for test in tests)
        out.append(new)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table per task: mean ± std over seeds, the learning rate chosen, Δ vs the reference, whether Δ
    exceeds the seed spread, and the per-seed Δ with their paired mean ± std (``*``: that seed's paired bootstrap,
    where there is one, gives p < 0.05).

    Args:
        rows: the output of :func:`compare_to_reference`.
    """
    lines: list[str] = []
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        name = task_rows[0]["metric_name"]
        ref = Variant.parse(task_rows[0]["reference"]).label if task_rows[0].get("reference") else "reference"
        title = "Multi30k EN→DE, test_2016_flickr BLEU" if task == "text" else "CIFAR-10 test accuracy (%)"
        lines += [f"### {title}", ""]
        if any(r.get("bootstrap") for r in task_rows):
            lines += ["Per-seed Δ marked * differ at p < 0.05 by sacreBLEU's paired bootstrap on the test outputs.", ""]
        lines += [f"| depth | scheme | lr | {name} (mean ± std) | seeds | Δ vs {ref} | Δ > seed spread? | "
                  "per-seed Δ (paired mean ± std) |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in task_rows:
            std = "–" if math.isnan(row["std"]) else f"{row['std']:.2f}"
            if row.get("delta") is None:
                delta, verdict = "–", "–"
            elif row["variant"] == row.get("reference"):
                delta, verdict = "(reference)", "–"
            else:
                delta = f"{row['delta']:+.2f}"
                verdict = {True: "**yes**", False: "no", None: "n/a (1 seed)"}[row["beyond_spread"]]
            diverged = f" ({row['diverged']} diverged)" if row.get("diverged") else ""
            significant = {t["seed"] for t in row.get("bootstrap") or [] if t["p_value"] < 0.05}
            paired = row.get("seed_deltas") or []
            per_seed = "–"
            if paired:
                mean, spread = _mean_std([d["delta"] for d in paired])
                per_seed = ", ".join(f"{d['delta']:+.2f}{'*' if d['seed'] in significant else ''}" for d in paired)
                per_seed += f" ({mean:+.2f} ± {spread:.2f})" if len(paired) > 1 else ""
            lines.append(f"| {row['depth']} | {row['label']}{diverged} | {row['learning_rate']:g} | "
                         f"{row['mean']:.2f} ± {std} | {row['n']} | {delta} | {verdict} | {per_seed} |")
        lines.append("")
    return "\n".join(lines)


def search_table(search: Sequence[Mapping[str, Any]], chosen: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table per task of the learning-rate search: one row per (depth, scheme), one column per rate, each
    cell the run's selection score (validation NLL for text, held-out accuracy for vision) and, where the run was a
    final-budget one, its test metric too; the chosen rate in bold.

    Args:
        search: the search runs' results (``spec``, ``selection_score``, optionally ``metric``).
        chosen: ``{task: {"depth/variant": lr}}`` as in ``results.json``'s ``learning_rates``.
    """
    lines: list[str] = []
    for task in TASKS:
        runs = [r for r in search if r["spec"]["task"] == task]
        if not runs:
            continue
        rates = sorted({r["spec"]["learning_rate"] for r in runs})
        first = runs[0]["spec"]
        score = "validation NLL" if task == "text" else "held-out accuracy (%)"
        budget = f"{first['steps']} steps, seed {first['seed']}"
        with_metric = any("metric" in r for r in runs)
        cell = f"{score} / {runs[0].get('metric_name', 'metric')}" if with_metric else score
        lines += [f"#### {'Multi30k' if task == 'text' else 'CIFAR-10'} learning-rate search ({budget}; {cell})", "",
                  "| depth | scheme | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
                  "|---|---|" + "---|" * len(rates)]
        cells: dict[tuple[str, str], dict[float, str]] = {}
        for r in runs:
            spec = r["spec"]
            value = r.get("selection_score")
            text = f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "diverged"
            if isinstance(r.get("metric"), (int, float)):
                text += f" / {r['metric']:.2f}"
            if chosen.get(task, {}).get(f"{spec['depth']}/{spec['variant']}") == spec["learning_rate"]:
                text = f"**{text}**"
            cells.setdefault((spec["depth"], spec["variant"]), {})[spec["learning_rate"]] = text
        for (depth, variant), by_rate in cells.items():
            lines.append(f"| {depth} | {Variant.parse(variant).label} | "
                         + " | ".join(by_rate.get(lr, "–") for lr in rates) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here or on a GPU box
    import matplotlib.pyplot as plt

    return plt


def plot_metric(rows: Sequence[Mapping[str, Any]], task: str, path: Path) -> Path | None:
    """Bars of mean ± std per scheme and λ, one panel per depth, every seed as a dot."""
    task_rows = [r for r in rows if r["task"] == task]
    if not task_rows:
        return None
    plt = _pyplot()
    depths = list(dict.fromkeys(r["depth"] for r in task_rows))
    per_panel = max(sum(r["depth"] == d for r in task_rows) for d in depths)
    fig, axes = plt.subplots(1, len(depths), figsize=(len(depths) * (1.5 + 0.55 * per_panel), 3.8), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        drow = [r for r in task_rows if r["depth"] == depth]
        xs = range(len(drow))
        ax.bar(xs, [r["mean"] for r in drow], yerr=[0 if math.isnan(r["std"]) else r["std"] for r in drow],
               color=["tab:gray" if r["variant"] == REFERENCE_VARIANT[task] else "tab:blue" for r in drow], capsize=3)
        for x, r in zip(xs, drow):
            ax.scatter([x] * len(r["values"]), r["values"], color="black", s=8, zorder=3)
        ax.set_xticks(list(xs), [r["label"] for r in drow], rotation=45, ha="right", fontsize=8)
        ax.set_title(depth)
        ax.set_ylabel(task_rows[0]["metric_name"])
    fig.suptitle("Multi30k EN→DE test BLEU" if task == "text" else "CIFAR-10 test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(results: Iterable[Mapping[str, Any]], task: str, path: Path) -> Path | None:
    """Training loss (and validation NLL / held-out accuracy where logged) by step, mean over seeds, per depth."""
    finals = [r for r in results if r["spec"]["task"] == task and r["spec"]["phase"] == "final"]
    if not finals:
        return None
    plt = _pyplot()
    depths = list(dict.fromkeys(r["spec"]["depth"] for r in finals))
    second = "valid_nll" if task == "text" else "eval_accuracy"
    fig, axes = plt.subplots(2, len(depths), figsize=(4.5 * len(depths), 6.5), squeeze=False)
    for column, depth in enumerate(depths):
        variants = list(dict.fromkeys(r["spec"]["variant"] for r in finals if r["spec"]["depth"] == depth))
        for variant in variants:
            runs = [r for r in finals if r["spec"]["depth"] == depth and r["spec"]["variant"] == variant]
            for row, key in enumerate(("loss", second)):
                curves: dict[int, list[float]] = {}
                for run in runs:
                    for record in run["history"]:
                        if isinstance(record.get(key), (int, float)) and math.isfinite(record[key]):
                            curves.setdefault(record["step"], []).append(record[key])
                if curves:
                    steps = sorted(curves)
                    axes[row][column].plot(steps, [statistics.fmean(curves[s]) for s in steps], marker=".",
                                           label=Variant.parse(variant).label)
        axes[0][column].set_title(f"{depth}: training loss")
        axes[1][column].set_title(f"{depth}: {'validation NLL' if task == 'text' else 'test accuracy'}")
        axes[1][column].set_xlabel("optimizer step")
        axes[0][column].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _in_depth_order(norms: Mapping[str, float]) -> list[tuple[str, float]]:
    """Per-layer values in depth order whatever order the dict has (a sorted JSON puts ``layers.10`` before
    ``layers.2``): encoder, then decoder, then ResNet stages, by numeric index."""
    stack_rank = {"encoder": 0, "decoder": 1}

    def key(name: str) -> tuple:
        parts = name.split(".")
        return (stack_rank.get(parts[0], 2), *[(int(p), "") if p.isdigit() else (-1, p) for p in parts])

    return sorted(norms.items(), key=lambda item: key(item[0]))


def plot_grad_norms(analysis: Mapping[str, Any], path: Path, *, kind: str = "param") -> Path | None:
    """Gradient norm by layer (log scale) per variant: columns are stacks (encoder, decoder, ResNet blocks), rows
    are at initialization and after training steps."""
    from hf_rskip.diagnostics import stack_of

    panels: list[tuple[str, str]] = []
    for task in ("text", "vision"):
        if analysis.get(task):
            first = next(iter(analysis[task].values()))["init"][kind]
            for stack in dict.fromkeys(stack_of(name) for name, _ in _in_depth_order(first)):
                panels.append((task, stack))
    if not panels:
        return None
    plt = _pyplot()
    steps = analysis.get("settings", {}).get("steps", "k")
    # one colour per scheme across every panel, so text and ResNet panels read alike
    keys = list(dict.fromkeys(key for task in ("text", "vision") for key in (analysis.get(task) or {})))
    colours = {key: plt.get_cmap("tab10")(i % 10) for i, key in enumerate(keys)}
    fig, axes = plt.subplots(2, len(panels), figsize=(4.3 * len(panels), 6.5), squeeze=False)
    for column, (task, stack) in enumerate(panels):
        for variant, profiles in analysis[task].items():
            for row, when in enumerate(("init", "trained")):
                profile = profiles.get(when)
                if not profile:
                    continue
                values = [v for name, v in _in_depth_order(profile[kind]) if stack_of(name) == stack]
                axes[row][column].semilogy(range(1, len(values) + 1), values, marker=".", markersize=3,
                                           color=colours[variant], label=Variant.parse(variant).label)
        title = {"encoder": "encoder layers", "decoder": "decoder layers", "blocks": "ResNet blocks"}[stack]
        axes[0][column].set_title(f"{title}: at initialization")
        axes[1][column].set_title(f"{title}: after {steps} steps")
        axes[1][column].set_xlabel("layer (input → output)")
        axes[0][column].legend(fontsize=7)
    axes[0][0].set_ylabel("‖∂L/∂θ_layer‖" if kind == "param" else "‖∂L/∂h_layer‖")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grad_summary_table(analysis: Mapping[str, Any]) -> str:
    """Markdown: per task and variant, how unevenly the gradient reaches the layers (first/last and max/min of the
    per-layer parameter-gradient norms, per stack), at initialization and after training steps."""
    from hf_rskip.diagnostics import summarize_norms

    lines = ["| task | scheme | stack | first/last at init | max/min at init | first/last after | max/min after |",
             "|---|---|---|---|---|---|---|"]
    for task in ("text", "vision"):
        for variant, profiles in (analysis.get(task) or {}).items():
            init = summarize_norms(dict(_in_depth_order(profiles["init"]["param"])))
            after = summarize_norms(dict(_in_depth_order(profiles["trained"]["param"]))) if profiles.get("trained") else {}
            for stack in dict.fromkeys(key.split("/")[0] for key in init):
                cells = [init[f"{stack}/first_over_last"], init[f"{stack}/max_over_min"],
                         after.get(f"{stack}/first_over_last", float("nan")),
                         after.get(f"{stack}/max_over_min", float("nan"))]
                lines.append(f"| {task} | {Variant.parse(variant).label} | {stack} | "
                             + " | ".join(f"{c:.3g}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------------


def reproduce(
    preset: Mapping[str, Any],
    out_dir: Path,
    *,
    tasks: Sequence[str] = TASKS,
    gradients: bool = True,
    sweeps: bool = True,
    report_only: bool = False,
    train_fn: TrainFn | None = None,
    preset_name: str = "custom",
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a preset end to end and writes ``results.json``, ``table.md`` and the PNG plots to ``out_dir``.

    Args:
        preset: see :data:`PRESETS` / :func:`get_preset`.
        out_dir: the output folder (``runs/`` inside it keeps each finished run; a rerun skips them).
        tasks: which of ``"text"`` and ``"vision"`` to sweep (and to analyse).
        gradients: run the gradient analysis.
        sweeps: run the training sweeps (False: only the gradient analysis).
        report_only: train nothing: build the table and plots from the runs already in ``out_dir/runs`` (and the
            gradient analysis already in ``out_dir/results.json``).
        train_fn: replaces the package's training (e.g. in tests); default :class:`ReproduceContext`'s.
        preset_name: recorded in the results.
        command: the command line, recorded in the results and the table.
        log: progress messages.

    Returns:
        The content of ``results.json``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    _set_threads(preset)
    try:
        return _reproduce(preset, out_dir, tasks=tasks, gradients=gradients, sweeps=sweeps, report_only=report_only,
                          train_fn=train_fn,
                          preset_name=preset_name, command=command, log=log, started=started)
    finally:
        torch.set_num_threads(threads_before)  # a caller in the same process keeps its own setting


def _reproduce(preset: Mapping[str, Any], out_dir: Path, *, tasks: Sequence[str], gradients: bool, sweeps: bool,
               report_only: bool, train_fn: TrainFn | None, preset_name: str, command: str, log: Callable[[str], None],
               started: float) -> dict[str, Any]:
    """The body of :func:`reproduce`, run with the preset's thread count."""
    context = ReproduceContext(preset, out_dir)
    train = train_fn or context.train
    started_path = out_dir / "sweep.json"  # what started the sweep: a report on a stopped one still names it
    if not report_only and sweeps:
        _save_json(started_path, {"command": command, "preset": preset_name, "settings": preset})
    jobs = int(preset.get("jobs", 1)) if train_fn is None else 1
    if jobs > 1 and sweeps:
        for task in tasks:  # build the tokenizer once here, so the worker processes all load the same one
            if task in ("text", "map"):
                context.text_data  # noqa: B018
    chosen_lr: dict[str, dict[str, float]] = {}
    fixed_lr: dict[str, dict[str, float]] = {}
    map_rows: list[dict[str, Any]] = []
    analysis = _saved_gradients(out_dir, preset, tasks) if gradients and "grad" in preset else None
    gradients_pool = gradients_future = None
    if gradients and analysis is None and not report_only and sweeps and jobs > 1:
        # one more process measures the gradients while the sweep's workers train (a GPU box's cores are many)
        import concurrent.futures
        import multiprocessing

        gradients_pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
            initargs=(dict(preset), str(out_dir)))
        gradients_future = gradients_pool.submit(_worker_gradients, list(tasks))
    if sweeps and "map" in tasks and "map" in preset:
        from .trainability import aggregate_map, map_specs

        map_runs = run_specs(map_specs(preset["map"]), train, out_dir, jobs=jobs, preset=preset,
                             only_existing=report_only, log=log)
        map_rows = aggregate_map(map_runs)  # the map is reported on its own
    # every task's runs in one pool: on a GPU text and image runs share the device side by side
    sweep_tasks = [t for t in tasks if t != "map" and t in preset] if sweeps else []
    search_results = run_specs([spec for task in sweep_tasks for spec in plan_search(task, preset[task])], train,
                               out_dir, jobs=jobs, preset=preset, only_existing=report_only, log=log)
    final_specs = []
    for task in sweep_tasks:
        best = best_learning_rates([r for r in search_results if r["spec"]["task"] == task],
                                   higher_is_better=(task == "vision"))
        chosen_lr[task] = {f"{depth}/{variant}": lr for (depth, variant), lr in best.items()}
        fixed = fixed_learning_rates(preset[task])
        if fixed:
            fixed_lr[task] = {f"{depth}/{variant}": lr for (depth, variant), lr in fixed.items()}
        final_specs += plan_final(task, preset[task], best)
    # the runs that the table reports (not the other rates of a search)
    final_results = run_specs(final_specs, train, out_dir, jobs=jobs, preset=preset, only_existing=report_only,
                              log=log)
    # every run once: with search_steps="final" the chosen search runs are final runs too
    all_results = list({result["run_id"]: result for result in search_results + final_results}.values())
    rows = compare_to_reference(aggregate(final_results))
    if any(r.get("test_hypotheses") for r in final_results):
        rows = add_significance(rows, final_results, context.text_data.test_references)
    previous_path = out_dir / "results.json"
    previous = json.loads(previous_path.read_text(encoding="utf-8")) if previous_path.is_file() else {}
    report_command = ""
    started_by = json.loads(started_path.read_text(encoding="utf-8")) if started_path.is_file() else {}
    produced_by = previous.get("command") or started_by.get("command")
    if report_only and produced_by:  # keep what produced the runs; say what rebuilt the report
        command, report_command = produced_by, command
    if gradients_future is not None:
        analysis = gradients_future.result()
        gradients_pool.shutdown()
    elif gradients and analysis is None:
        if report_only:  # reuse the analysis of an earlier run of this folder, if there is one
            analysis = previous.get("gradient_analysis")
        else:
            analysis = _measure_gradients(context, tasks, log)

    plots: dict[str, str] = {}
    if map_rows:
        from .trainability import plot_map

        made = plot_map(map_rows, out_dir / "trainability_map.png")
        if made:
            plots["trainability_map"] = made.name
    for task in [t for t in tasks if t != "map"]:
        for name, maker in (("metric", plot_metric), ("curves", plot_learning_curves)):
            source = rows if name == "metric" else final_results
            made = maker(source, task, out_dir / f"{task}_{name}.png")
            if made:
                plots[f"{task}_{name}"] = made.name
    if analysis is not None:
        for kind in ("param", "output"):
            made = plot_grad_norms(analysis, out_dir / f"grad_norms_{kind}.png", kind=kind)
            if made:
                plots[f"grad_norms_{kind}"] = made.name

    table = markdown_table(rows)
    header = [f"# Reproduction: preset `{preset_name}`", ""]
    if command:
        header += [f"Command: `{command}`" + (f" (report rebuilt by `{report_command}`)" if report_command else ""), ""]
    header += ["Every scheme: same size, data, steps and seeds; its own learning rate from the grid "
               f"(chosen on held-out data): {json.dumps(chosen_lr)}"
               + (f"; or fixed by the preset (rates chosen by earlier runs): {json.dumps(fixed_lr)}" if fixed_lr else "")
               + ".", ""]
    body = header + [table]
    if map_rows:
        from .trainability import map_table, ratio_table

        settings = preset["map"]
        body += ["### Trainability map (validation NLL after "
                 f"{settings['steps']} steps; d_model {settings['d_model']}, {settings['warmup_steps']} warm-up steps; "
                 f"seeds {settings['seeds']})", "", map_table(map_rows),
                 f"First-over-last layer gradient norm ratio (median over seeds) at lr {settings['lr_grid'][1]:g}:",
                 "", ratio_table(map_rows, settings["lr_grid"][1])]
    if search_results:
        body += ["### The learning-rate search (the chosen rate in bold)", "", search_table(search_results, chosen_lr)]
    if analysis is not None:
        body += ["### Gradient norm per layer (deep stacks)", "", grad_summary_table(analysis)]
    (out_dir / "table.md").write_text("\n".join(body), encoding="utf-8")

    summary = {
        "preset": preset_name, "command": command, "report_command": report_command, "settings": preset,
        # a report rebuilt elsewhere (a laptop, from a GPU box's runs) keeps the device that trained them
        "device": previous.get("device", _device_name()) if report_only else _device_name(),
        "wall_s": round(time.perf_counter() - started, 1), "learning_rates": chosen_lr, "fixed_learning_rates": fixed_lr,
        "rows": rows,
        "data": {"text": context._text.description if context._text else None,
                 "vision": context._vision.description if context._vision else None},
        "gradient_analysis": analysis, "plots": plots, "map": map_rows,
        "runs": [{k: v for k, v in r.items() if k not in ("history", "test_hypotheses")} for r in all_results],
    }
    _save_json(out_dir / "results.json", summary)
    return summary


def _device_name(precision: str | None = None) -> str:
    """Where runs of this process train, with their precision (default: the sweep's, bf16 on a GPU, fp32 on a CPU)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({precision or 'bf16'})"
    return f"cpu ({torch.get_num_threads()} threads, {precision or 'fp32'})"


__all__ = [
    "PRESETS",
    "REFERENCE_VARIANT",
    "ReproduceContext",
    "RunSpec",
    "TextData",
    "Variant",
    "VisionData",
    "aggregate",
    "best_learning_rates",
    "fixed_learning_rates",
    "compare_to_reference",
    "get_preset",
    "grad_summary_table",
    "gradient_analysis",
    "markdown_table",
    "search_table",
    "plan_final",
    "plan_search",
    "plot_grad_norms",
    "plot_learning_curves",
    "plot_metric",
    "prepare_text_data",
    "prepare_vision_data",
    "reproduce",
    "resolve_threads",
    "run_specs",
    "text_config",
    "train_text_run",
    "train_vision_run",
]
