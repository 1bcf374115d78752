"""A training job from options to published outputs, the same for every task (as torchtune's recipes).

:class:`TrainingJob` runs the steps every script shares: CPU threads, the locked output folder, the Accelerator,
the resume point, the seed, optimizer and schedule, the loop (:func:`hf_rskip.training.loop.train`), publishing the
model as soon as training succeeded, then the evaluation, ``results.json``, the model card and the Hub. A subclass
(:class:`~hf_rskip.training.translation.TranslationJob`,
:class:`~hf_rskip.training.image_classification.ImageClassificationJob`) supplies what differs: the data, the model,
the task object, the batches, the final evaluation and the card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arguments import RunArguments, as_flat_dict
from .checkpointing import CheckpointError, model_state_dict, resolve_checkpoint, storage_errors
from .loop import LoopConfig, LoopResult, NonFiniteLossError, Task, train
from .optim import build_scheduler, is_metric_scheduler
from .run_folder import RunFolder

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# CPU threads
# --------------------------------------------------------------------------------------------------


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies summed over all CPUs, from /proc/stat (None where it does not exist)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(sample_seconds: float = 0.3) -> float:
    """How many cores other programs keep busy now: /proc/stat over a short sample (this process sleeps during it),
    else the 1-minute load average."""
    first = _cpu_times()
    if first is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    time.sleep(sample_seconds)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return 0.0
    cores = os.cpu_count() or 1
    return cores * (second[0] - first[0]) / (second[1] - first[1])


def configure_threads(spec: str | int, *, num_processes: int = 1) -> int:
    """Sets torch's CPU threads for this process and returns the count.

    Args:
        spec: a number, or ``"auto"``: the cores that other programs leave idle (measured now), shared by this
            run's processes, at least 1. Oversubscribed OpenMP pools fight: on a 2-core machine with two other
            busy programs, torch's default of 2 threads ran the built-in job in 350 s where 1 thread took 150 s
            (README, "Threads"; the report behind this option saw 25x).
        num_processes: processes of this run on the machine (each gets its share).
    """
    if str(spec) != "auto":
        threads = int(spec)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        idle = cores - round(busy_cores())
        threads = max(1, idle // max(1, num_processes))
    torch.set_num_threads(threads)
    return threads


# --------------------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------------------


def cpu_has_fast_bf16() -> bool:
    """Whether torch runs bfloat16 matrix products on this CPU in oneDNN's kernels (x86 with AVX-512 or AMX, Arm
    with bf16), by the test torch itself applies when it dispatches them. Without (AVX2 only: AMD Zen 2, older
    Intel), a bf16 product falls back to a scalar loop: a training step of the Multi30k recipe under bf16 autocast
    took 33x its float32 time on such a CPU, a ResNet-20 step 10x (README, "Mixed precision")."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def cpu_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo ("AMD EPYC", "Intel(R) Xeon(R) ..."), None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def resolve_mixed_precision(requested: str, device_type: str) -> str:
    """The autocast precision a run uses: ``"auto"`` is bf16 on an accelerator (CUDA, XPU, MPS) and on a CPU with
    fast bf16 kernels (:func:`cpu_has_fast_bf16`), else ``"no"`` (float32); the other values stand as given."""
    if requested != "auto":
        return requested
    return "bf16" if device_type != "cpu" or cpu_has_fast_bf16() else "no"


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


class TrainingJob:
    """One run: options in, published outputs and the results dict out.

    Subclasses implement the ``*`` methods below; :meth:`run` calls them in order. Attributes set along the way:
    ``accelerator``, ``folder`` (:class:`RunFolder`), ``resume`` (a checkpoint folder or None).

    Args:
        model_args, data_args: the script's model and data dataclasses.
        training_args: the script's :class:`~hf_rskip.training.arguments.RunArguments` subclass.
        command: the command line, recorded in the results and the model card.
    """

    script = "train"
    task_name = "task"

    def __init__(self, model_args: Any, data_args: Any, training_args: RunArguments, *, command: str = "") -> None:
        self.model_args = model_args
        self.data_args = data_args
        self.args = training_args
        self.command = command
        self.accelerator: Any = None
        self.folder: RunFolder | None = None
        self.resume: Path | None = None
        self.threads = 0

    # -- what a task supplies ------------------------------------------------------------------------

    def load_data(self) -> None:  # pragma: no cover - abstract
        """Loads and checks every split (errors name the file, before anything is trained or written)."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_dataloader(self, model: nn.Module) -> Any:  # pragma: no cover - abstract
        """The (unprepared) training loader."""
        raise NotImplementedError

    def build_task(self, model: nn.Module) -> Task:  # pragma: no cover - abstract
        """The loop's task object (prepares its own evaluation loaders)."""
        raise NotImplementedError

    def save_artifacts(self, folder: Path) -> None:
        """Writes what a model folder needs besides the model (tokenizer, image processor); also into checkpoints."""

    def after_training(self, model: nn.Module, result: LoopResult) -> dict[str, Any]:
        """Changes the weights after training (e.g. checkpoint averaging); returns facts for the results."""
        return {}

    def final_evaluation(self, model: nn.Module, folder: Path) -> dict[str, Any]:  # pragma: no cover - abstract
        """Evaluates the final weights; may write prediction files into ``folder``."""
        raise NotImplementedError

    def write_model_card(self, folder: Path, results: dict[str, Any]) -> None:
        """Writes ``README.md`` into ``folder``."""

    def describe(self, model: nn.Module) -> str:
        """One line about the model and the data, printed before training."""
        return ""

    def frozen_options(self) -> dict[str, Any]:
        """Options that must not change when a run is resumed (besides the model config, which is checked too)."""
        return {}

    def accelerator_kwargs(self) -> dict[str, Any]:
        return {}

    def will_train(self) -> bool:
        """False for an evaluation-only run (known after :meth:`load_data`): the model is evaluated and published."""
        return True

    # -- shared steps ---------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            print(message, flush=True)

    def make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        from accelerate.state import AcceleratorState, GradientState

        args = self.args
        has_device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
        # Accelerate keeps its precision and accumulation settings in process-wide singletons and refuses a second
        # Accelerator with other settings. A job owns the process for its run, so an earlier job's settings (a
        # notebook calling run_translation twice, a test session) are dropped; the process group is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        device_type = "cpu"
        if has_device:
            device_type = (torch.accelerator.current_accelerator().type if hasattr(torch, "accelerator")
                           else "cuda")
        mixed_precision = resolve_mixed_precision(args.mixed_precision, device_type)
        if mixed_precision == "bf16" and device_type == "cpu" and not cpu_has_fast_bf16():
            logger.warning("--mixed_precision bf16: this CPU has no fast bfloat16 kernels (no AVX-512 or AMX), so "
                           "every bf16 matrix product takes torch's slow path (10-33x a float32 step on an AVX2 CPU); "
                           "--mixed_precision auto or no trains in float32 here")
        return Accelerator(
            # Without an accelerator device, a torchrun-style launch (`accelerate launch --multi_gpu`) must use CPU
            # DDP over gloo; otherwise every process would silently train alone.
            cpu=not has_device,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,  # the precision used: accelerator.mixed_precision from here on
            log_with=args.report_to if args.with_tracking else None,
            project_dir=args.output_dir,
            # the loop steps the schedule once per optimizer step, whatever the number of processes
            step_scheduler_with_optimizer=False,
            # a shuffling sampler seeded by seed + epoch: the order of an epoch depends on nothing else (exact resume)
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            **self.accelerator_kwargs(),
        )

    def num_training_steps(self, loader: Any) -> tuple[int, int]:
        """(max_train_steps, num_train_epochs) from the options and the prepared loader's length."""
        args = self.args
        steps_per_epoch = max(1, math.ceil(len(loader) / args.gradient_accumulation_steps))
        if args.max_train_steps is not None:
            return args.max_train_steps, math.ceil(args.max_train_steps / steps_per_epoch)
        return args.num_train_epochs * steps_per_epoch, args.num_train_epochs

    def _resolve_resume(self) -> Path | None:
        spec = self.args.resume_from_checkpoint
        if spec is None:
            return None
        try:
            return resolve_checkpoint(spec, self.args.checkpoint_dir)
        except CheckpointError as err:
            message = str(err)
            raise CheckpointError(message if message.startswith("--resume_from_checkpoint")
                                  else f"--resume_from_checkpoint {spec}: {message}") from None

    def _check_frozen_options(self) -> None:
        if self.resume is None:
            return
        state_file = self.resume / "run_options.json"
        if not state_file.is_file():
            return
        saved = json.loads(state_file.read_text(encoding="utf-8"))
        now = json.loads(json.dumps(self.frozen_options(), default=str))
        # an option the checkpoint does not record came after it was written (an older version): nothing to compare
        differences = [f"--{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now"
                       for k in sorted(saved) if saved.get(k) != now.get(k)]
        if differences:
            raise CheckpointError(f"checkpoint {self.resume} was written by a run with other options "
                                  f"({'; '.join(differences)}); resume with that run's options")

    def _check_precision(self, model: nn.Module) -> None:
        """float16 cannot hold a residual stream that a scheme multiplies by λ > 1 many times: refuse, before
        training, what would be a NaN at the first step."""
        from ..models.residual import fp16_overflow_risk
        from .arguments import ArgumentError

        if self.accelerator.mixed_precision == "fp16":
            problem = fp16_overflow_risk(model.config)
            if problem:
                raise ArgumentError(f"--mixed_precision fp16: {problem}")

    def _save_checkpoint_extras(self, folder: Path) -> None:
        self.save_artifacts(folder)
        (folder / "run_options.json").write_text(json.dumps(self.frozen_options(), indent=2, sort_keys=True,
                                                            default=str) + "\n", encoding="utf-8")

    def hardware(self) -> str:
        """The devices a run trained on, in words: the CPU's model name where /proc/cpuinfo gives one (run times and
        the precision ``auto`` picks depend on it), the GPU's name on CUDA."""
        device = self.accelerator.device
        name = platform.processor() or platform.machine()
        if device.type == "cuda":
            name = torch.cuda.get_device_name(device)
        else:
            model = cpu_model_name()
            name = f"{model}, {name}" if model else name
        return f"{self.accelerator.num_processes} × {device.type} ({name}, {torch.get_num_threads()} threads)"

    def _train(self, model: nn.Module) -> tuple[nn.Module, LoopResult, dict[str, Any], int, str]:
        """Prepares optimizer, batches, task and schedule, and runs the loop."""
        args, accelerator = self.args, self.accelerator
        optimizer = self.build_optimizer(model)
        loader = self.train_dataloader(model)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        if args.torch_compile:
            model = torch.compile(model)
        task = self.build_task(model)
        max_train_steps, num_train_epochs = self.num_training_steps(loader)
        scheduler = accelerator.prepare(build_scheduler(
            optimizer, lr_scheduler_type=args.lr_scheduler_type, num_warmup_steps=args.num_warmup_steps,
            num_training_steps=max_train_steps, lr_scheduler_kwargs=args.lr_scheduler_kwargs))
        if args.with_tracking:
            accelerator.init_trackers("runs", config=as_flat_dict(self.model_args, self.data_args, args))
        self.log(f"{self.describe(accelerator.unwrap_model(model, keep_torch_compile=False))}; {len(loader)} "
                 f"batches/epoch/process; {max_train_steps} steps; {self.threads} CPU thread(s)")
        loop_config = LoopConfig(
            max_train_steps=max_train_steps, num_train_epochs=num_train_epochs, max_grad_norm=args.max_grad_norm,
            checkpoint_dir=args.checkpoint_dir, checkpointing_steps=args.checkpointing_steps,
            keep_last_checkpoints=args.keep_last_checkpoints, eval_steps=args.eval_steps,
            logging_steps=args.logging_steps, with_tracking=args.with_tracking,
            log_grad_norms_every=args.log_grad_norms_every,
            metric_scheduler=is_metric_scheduler(args.lr_scheduler_type), save_extras=self._save_checkpoint_extras,
        )
        result = train(accelerator, model, optimizer, scheduler, loader, task, loop_config, resume_from=self.resume)
        facts = self.after_training(model, result)
        return model, result, facts, max(1, len(loader)), task.throughput_unit

    def run(self) -> dict[str, Any]:
        """Runs the job; returns what it wrote to ``results.json``."""
        from accelerate.utils import set_seed

        args = self.args
        self.accelerator = accelerator = self.make_accelerator()
        self.threads = configure_threads(args.threads, num_processes=accelerator.num_processes)
        self.resume = self._resolve_resume()
        self.folder = RunFolder(args.output_dir, overwrite=args.overwrite_output_dir,
                                resuming=self.resume is not None, checkpoint_dir=args.checkpoint_dir, log=self.log)
        if accelerator.is_main_process:
            self.folder.open()
        accelerator.wait_for_everyone()
        try:
            return self._run(set_seed)
        finally:
            if accelerator.is_main_process:
                self.folder.__exit__(None, None, None)
            if args.with_tracking:
                accelerator.end_training()

    def _run(self, set_seed: Callable[[int], None]) -> dict[str, Any]:
        args, accelerator = self.args, self.accelerator
        set_seed(args.seed)
        self.load_data()
        self._check_frozen_options()
        model = self.build_model()
        self._check_precision(model)
        if args.overwrite_output_dir and accelerator.is_main_process:
            self.folder.clear_checkpoints()  # the old run's must not be resumed or averaged
        accelerator.wait_for_everyone()

        if self.will_train():
            model, result, facts, steps_per_epoch, unit = self._train(model)
        else:  # evaluate a saved model as it is
            model, result, facts, steps_per_epoch, unit = model.to(accelerator.device), None, {}, 1, None
        accelerator.wait_for_everyone()
        self.model = model
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)

        # The model is published as soon as training succeeded, so a failing evaluation cannot lose it; weights
        # that are not finite (a last step that overflowed without a checkpoint after it) are never published.
        state_dict = model_state_dict(accelerator, model)
        broken = [name for name, tensor in state_dict.items()
                  if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if broken:
            raise NonFiniteLossError(
                f"the trained weights are not finite ({len(broken)} tensors, e.g. {broken[0]}); nothing was "
                "published", step=result.state.completed_steps if result is not None else 0,
                last_checkpoint=result.checkpoints[-1] if result is not None and result.checkpoints else None)
        if accelerator.is_main_process:
            staging = self.folder.stage("model")
            with storage_errors(staging, "the trained model"):
                unwrapped.save_pretrained(staging, state_dict=state_dict)
                self.save_artifacts(staging)
            self.folder.publish(staging, replace_previous=True)
        accelerator.wait_for_everyone()

        staging = self.folder.stage("results") if accelerator.is_main_process else None
        try:
            results = dict(self.final_evaluation(model, staging or Path(os.devnull)))
        except BaseException:
            self.log(f"the final evaluation failed; the trained model is saved in {args.output_dir}")
            raise
        config = unwrapped.config
        results.update(
            model_type=config.model_type, residual_scheme=config.residual_scheme, skip_lambda=config.skip_lambda,
            residual_norm=config.residual_norm, num_parameters=unwrapped.num_parameters(), seed=args.seed,
            num_processes=accelerator.num_processes, threads=self.threads, hardware=self.hardware(),
            mixed_precision=accelerator.mixed_precision, **facts,
            command=self.command, options=as_flat_dict(self.model_args, self.data_args, args),
        )
        if result is not None:
            state = result.state
            results.update(
                train_steps=state.completed_steps, train_runtime=state.train_seconds,
                train_epochs=round(state.epoch + state.batches_in_epoch / steps_per_epoch, 3),
                **{f"train_{unit}_per_second": result.throughput}, **result.train_metrics(),
                resumed_from=str(result.resumed_from) if result.resumed_from else None,
            )
        else:
            results.update(train_steps=0, evaluated_model=getattr(self.model_args, "model_name_or_path", None))
        if args.with_tracking:
            step = result.state.completed_steps if result is not None else 0
            accelerator.log({f"{k.split('_', 1)[0]}/{k.split('_', 1)[1]}": v for k, v in results.items()
                             if k.startswith(("eval_", "test_")) and isinstance(v, (int, float))
                             and not isinstance(v, bool)}, step=step)
        if accelerator.is_main_process:
            (staging / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n",
                                                  encoding="utf-8")
            self.write_model_card(staging, results)
            self.folder.publish(staging, replace_previous=False)
            if args.push_to_hub:
                from ..hub import push_folder_to_hub

                url = push_folder_to_hub(args.output_dir, args.hub_model_id, token=args.hub_token,
                                         private=args.hub_private_repo)
                self.log(f"pushed to {url}")
        accelerator.wait_for_everyone()
        return results


__all__ = ["TrainingJob", "busy_cores", "configure_threads", "cpu_has_fast_bf16", "resolve_mixed_precision"]
