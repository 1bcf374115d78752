"""Training: one Accelerate loop for every task, the task objects, optimizers and schedules, crash-safe
checkpoints, the output folder's rules, typed options, and the two jobs the scripts run.

Layers: ``loop`` knows nothing of any task; ``tasks`` say how a batch becomes a loss and counts; ``job`` runs the
steps every script shares; ``translation`` and ``image_classification`` supply what differs.
"""

from .arguments import (
    ArgumentError,
    ImageDataArguments,
    ImageModelArguments,
    ImageTrainingArguments,
    RunArguments,
    TranslationDataArguments,
    TranslationModelArguments,
    TranslationTrainingArguments,
)
from .checkpointing import (
    CheckpointError,
    average_checkpoints,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from .loop import LoopConfig, LoopResult, LoopState, NonFiniteLossError, Task, TrainingInterrupted, train
from .optim import LR_SCHEDULERS, build_optimizer, build_scheduler
from .tasks import ImageClassificationTask, TranslationTask, evaluate_classifier, token_losses

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "ImageClassificationTask",
    "ImageDataArguments",
    "ImageModelArguments",
    "ImageTrainingArguments",
    "LR_SCHEDULERS",
    "LoopConfig",
    "LoopResult",
    "LoopState",
    "NonFiniteLossError",
    "RunArguments",
    "Task",
    "TrainingInterrupted",
    "TranslationDataArguments",
    "TranslationModelArguments",
    "TranslationTask",
    "TranslationTrainingArguments",
    "average_checkpoints",
    "build_optimizer",
    "build_scheduler",
    "evaluate_classifier",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "token_losses",
    "train",
]
