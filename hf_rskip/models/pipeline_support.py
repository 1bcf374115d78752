"""What a saved translation model carries so that ``pipeline("rskip-translation")`` works where hf_rskip is absent.

Both text families (Marian-style and T5-style) declare the pipeline in their saved config (transformers'
``custom_pipelines``) and copy its code (``pipeline.py``) beside the model; where the package is installed and has
registered the task, the declaration is dropped on load so that the registered pipeline serves without
``trust_remote_code``. A same-folder module, so remote code carries it along with the model files.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TRANSLATION_PIPELINES: dict[str, dict[str, Any]] = {
    "rskip-translation": {"impl": "pipeline.RSkipTranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
}
"""What a saved translation model declares in its config (``custom_pipelines``) beside a copy of the pipeline's code."""


def translation_pipeline_file(name_or_path: str | os.PathLike | None) -> Path | None:
    """The ``"rskip-translation"`` pipeline's code: the package's ``pipeline.py``, else a copy beside this file (remote
    code whose pipeline was loaded too) or in the folder the model was loaded from; None where there is none."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "pipeline.py", here / "pipeline.py"]
    if name_or_path and os.path.isdir(name_or_path):
        candidates.append(Path(name_or_path) / "pipeline.py")
    for path in candidates:
        if path.is_file() and "class RSkipTranslationPipeline(" in path.read_text(encoding="utf-8"):
            return path
    return None


@contextlib.contextmanager
def declaring_translation_pipeline(model: Any, save_directory: str | os.PathLike, *,
                                   is_main_process: bool = True) -> Iterator[None]:
    """While a translation model is saved: its config declares the pipeline and the folder gets its code.

    Only the saved config declares it: in memory, ``pipeline(model=model)`` takes the registered one. A model without
    the code at hand (or not registered for remote code) declares nothing: a folder must not name code it lacks.
    """
    config = model.config
    source = translation_pipeline_file(getattr(model, "name_or_path", None))
    had, declared = hasattr(config, "custom_pipelines"), getattr(config, "custom_pipelines", None)
    if getattr(model, "_auto_class", None) is not None and source is not None:
        config.custom_pipelines = copy.deepcopy(TRANSLATION_PIPELINES)
        if is_main_process:
            os.makedirs(save_directory, exist_ok=True)
            shutil.copyfile(source, Path(save_directory) / "pipeline.py")
    elif had:
        del config.custom_pipelines
    try:
        yield
    finally:
        if had:
            config.custom_pipelines = declared
        elif hasattr(config, "custom_pipelines"):
            del config.custom_pipelines


def drop_registered_pipelines(config: Any) -> None:
    """Called by a text config on load: where this package has registered the declared pipelines, ``pipeline()``
    would still take the folder's copy and demand ``trust_remote_code=True``; the declaration is dropped so the
    registered one serves (``save_pretrained`` writes it again)."""
    declared = getattr(config, "custom_pipelines", None)
    pipelines = sys.modules.get("transformers.pipelines")  # not imported: nothing can be registered
    if not declared or pipelines is None:
        return
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks
    if all(task in registered and not registered[task]["impl"].__module__.startswith("transformers_modules")
           for task in declared):
        del config.custom_pipelines


__all__ = ["TRANSLATION_PIPELINES", "declaring_translation_pipeline", "drop_registered_pipelines",
           "translation_pipeline_file"]
