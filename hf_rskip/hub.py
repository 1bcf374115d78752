"""Sharing a trained model folder on the Hugging Face Hub with ``huggingface_hub``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: Training by-products that stay local: resumable checkpoints (optimizer state, several copies of the
#: weights), TensorBoard logs and leftovers of interrupted saves.
DEFAULT_IGNORE_PATTERNS: tuple[str, ...] = ("checkpoints/**", "runs/**", "*.tmp", "*.partial")


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload rSkip model trained with hf_rskip",
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS,
) -> str:
    """Creates the model repository if needed and uploads the folder as it is on disk.

    What is uploaded is exactly what ``from_pretrained`` and ``pipeline`` load from the folder: weights
    (safetensors), config with remote code, generation config, tokenizer, model card (README.md),
    ``results.json`` and the prediction files; ``ignore_patterns`` leaves the training by-products out.

    Args:
        folder: the model folder (``--output_dir``).
        repo_id: ``"user/name"`` on the Hub.
        token: a Hub token (default: the one ``hf auth login`` stored, or ``HF_TOKEN``).
        private: create the repository private.
        commit_message: the commit message.
        ignore_patterns: glob patterns of files not to upload.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a saved model folder")
    repo = create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    info = upload_folder(repo_id=repo.repo_id, folder_path=str(folder), token=token, repo_type="model",
                         commit_message=commit_message, ignore_patterns=list(ignore_patterns))
    return str(getattr(info, "commit_url", info))


__all__ = ["DEFAULT_IGNORE_PATTERNS", "push_folder_to_hub"]
