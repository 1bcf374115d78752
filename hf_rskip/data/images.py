"""Image classification data for the rSkip PreAct-ResNet.

Every source (``.npz`` arrays, image folders, a Hugging Face Hub dataset, scikit-learn's bundled digits) becomes an
:class:`ImageSplit`: uint8 RGB images ``(N, H, W, 3)`` held in memory with int64 labels ``(N,)``, checked on load so
bad input fails with the file, key or image named, before any training. Augmentation (the standard CIFAR pad-4
random crop and horizontal flip) and normalization are batched torch ops, so they run wherever the batch lives and
need no torchvision. The image processor saved beside a model applies the same resize and normalization.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .errors import DataError

#: Per-channel statistics of the CIFAR-10 training images (the usual values), on the [0, 1] scale.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImageDataError(DataError):
    """Bad image data; the message names the file, key, folder or image at fault."""


@dataclass
class ImageSplit:
    """One split held in memory.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB.
        labels: ``(N,)`` int64 class indices.
        source: where the split came from, for messages.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ImageDataError(
                f"{self.source}: {len(self.images)} images but {len(self.labels)} labels; every image needs one label"
            )
        if len(self.images) == 0:
            raise ImageDataError(f"{self.source}: no images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: np.ndarray | Sequence[int]) -> "ImageSplit":
        """The images at ``indices`` (in that order)."""
        indices = np.asarray(indices)
        return ImageSplit(self.images[indices], self.labels[indices], self.source)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` uint8 images and ``(N,)`` int64 labels: what :class:`CifarAugment` and the models take."""
        images = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).contiguous()
        return images, torch.from_numpy(self.labels)


def resize_images(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Resizes ``(N, H, W, 3)`` uint8 images to ``image_size`` squared with PIL's bilinear filter, as the saved image
    processor does; images already of that size are returned unchanged."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    return np.stack(
        [np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR)) for image in images]
    )


def _as_rgb_uint8(images: np.ndarray, source: str) -> np.ndarray:
    """Checks an image array and brings it to ``(N, H, W, 3)`` uint8 (grayscale repeated, channels-first moved)."""
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.integer) and images.size and images.min() >= 0 and images.max() <= 255:
            images = images.astype(np.uint8)
        else:
            raise ImageDataError(
                f"{source}: images must be uint8 pixel values 0..255, got dtype {images.dtype}"
                + (f" with range [{images.min()}, {images.max()}]"
                   if images.size and images.dtype.kind in "iuf" else "")
            )
    if images.ndim == 3:  # (N, H, W) grayscale
        images = images[..., None]
    if images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ImageDataError(
            f"{source}: images must have shape (N, H, W, 3), (N, 3, H, W), (N, H, W, 1) or (N, H, W); "
            f"got {images.shape}"
        )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def _as_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Checks a label array: integers >= 0, shape ``(N,)`` or ``(N, 1)``."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ImageDataError(f"{source}: labels must have shape (N,), got {labels.shape}")
    if labels.dtype.kind == "f" and labels.size and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ImageDataError(f"{source}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        bad = int(np.argmax(labels < 0))
        raise ImageDataError(
            f"{source}: label {int(labels[bad])} at index {bad} is negative; labels are class indices >= 0")
    return labels.astype(np.int64)


def load_npz_split(path: str | Path, image_key: str, label_key: str, *, image_size: int | None = None) -> ImageSplit:
    """Loads images and labels stored under ``image_key`` and ``label_key`` of a ``.npz`` file.

    Args:
        path: the ``.npz`` file.
        image_key: key of the images, uint8 ``(N, H, W, 3)`` (also ``(N, 3, H, W)``, ``(N, H, W)``, ``(N, H, W, 1)``).
        label_key: key of the labels, integer ``(N,)``.
        image_size: resize to this size squared (None keeps the stored size).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"{path}: no such .npz file")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as error:  # zipfile, pickle and format errors all mean "not a readable .npz"
        raise ImageDataError(f"{path}: not a readable .npz file ({error})") from error
    with arrays:
        for key, option in ((image_key, "image key"), (label_key, "label key")):
            if key not in arrays.files:
                raise ImageDataError(f"{path}: {option} {key!r} not found; keys in this file: {arrays.files}")
        stored = {}
        for key in (image_key, label_key):
            try:
                stored[key] = arrays[key]
            except ValueError as error:  # an object (ragged) array: pickled, refused unread
                raise ImageDataError(f"{path}: {key!r} holds Python objects (images of different sizes?), not one "
                                     f"numeric array; store equal-sized images as one uint8 array ({error})") from None
        images = _as_rgb_uint8(stored[image_key], f"{path} [{image_key}]")
        labels = _as_labels(stored[label_key], f"{path} [{label_key}]")
    if len(images) != len(labels):
        raise ImageDataError(
            f"{path}: {len(images)} images under {image_key!r} but {len(labels)} labels under {label_key!r}; "
            "every image needs one label"
        )
    return ImageSplit(resize_images(images, image_size), labels, f"{path} [{image_key}, {label_key}]")


def _read_image(path: Path, image_size: int | None) -> np.ndarray:
    """One image file as ``(H, W, 3)`` uint8, resized; raises naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(image)
    except Exception as error:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
        raise ImageDataError(f"{path}: unreadable image ({type(error).__name__}: {error})") from error


def load_image_folder(
    folder: str | Path, *, image_size: int | None = 32, class_names: Sequence[str] | None = None
) -> tuple[ImageSplit, list[str]]:
    """Loads ``folder/<class name>/<image file>`` (the layout of ``datasets``' imagefolder).

    Args:
        folder: one sub-folder per class; files with the extensions in ``IMAGE_EXTENSIONS`` are read.
        image_size: resize every image to this size squared (None requires them all to share one size).
        class_names: the classes of the training folder, so that an evaluation folder maps to the same indices;
            None takes the sorted sub-folder names.

    Returns:
        The split and the class names (index i = name i).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageDataError(f"{folder}: no such image folder")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise ImageDataError(f"{folder}: no class sub-folders; expected {folder}/<class name>/<image files>")
    names = list(class_names) if class_names is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ImageDataError(f"{folder}: class folders {unknown} are not among the training classes {names}")
    images, labels = [], []
    for name in found:
        files = sorted(p for p in (folder / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for file in files:
            images.append(_read_image(file, image_size))
            labels.append(names.index(name))
    if not images:
        raise ImageDataError(f"{folder}: no image files (extensions {list(IMAGE_EXTENSIONS)}) in the class folders")
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise ImageDataError(f"{folder}: images differ in size {sorted(sizes)[:4]}; pass an image size to resize them")
    return ImageSplit(np.stack(images), np.asarray(labels, dtype=np.int64), str(folder)), names


def split_from_hf_dataset(
    dataset: Any, *, image_column: str, label_column: str, image_size: int | None = 32, source: str = "dataset"
) -> ImageSplit:
    """Converts a ``datasets.Dataset`` with an image column (PIL images) and an integer label column.

    Args:
        dataset: a ``datasets.Dataset``.
        image_column: name of the image column.
        label_column: name of the label column.
        image_size: resize every image to this size squared.
        source: name used in messages.
    """
    for column, option in ((image_column, "--image_column_name"), (label_column, "--label_column_name")):
        if column not in dataset.column_names:
            raise ImageDataError(
                f"{source}: column {column!r} not found (set {option}); columns: {dataset.column_names}"
            )
    images = []
    for index, image in enumerate(dataset[image_column]):
        if not isinstance(image, Image.Image):
            raise ImageDataError(
                f"{source}: row {index} of column {image_column!r} is not an image ({type(image).__name__})")
        image = image.convert("RGB")
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(image))
    labels = _as_labels(np.asarray(dataset[label_column]), f"{source} [{label_column}]")
    return ImageSplit(np.stack(images), labels, source)


def hf_label_names(dataset: Any, label_column: str) -> list[str] | None:
    """The class names of a ``ClassLabel`` column, or None."""
    feature = dataset.features.get(label_column)
    return list(feature.names) if getattr(feature, "names", None) else None


def train_eval_split(split: ImageSplit, eval_fraction: float, *, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """Holds out ``eval_fraction`` of ``split``, stratified by label (scikit-learn), with a fixed ``seed``."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval fraction={eval_fraction!r} must be in (0, 1)")
    counts = np.bincount(split.labels)
    classes = int((counts > 0).sum())
    n_eval = math.ceil(eval_fraction * len(split))
    # stratify where every class can appear on both sides (scikit-learn refuses otherwise)
    stratify = split.labels if counts[counts > 0].min() >= 2 and classes <= min(n_eval, len(split) - n_eval) else None
    train_idx, eval_idx = train_test_split(
        np.arange(len(split)), test_size=eval_fraction, random_state=seed, stratify=stratify
    )
    train, held_out = split.subset(np.sort(train_idx)), split.subset(np.sort(eval_idx))
    return (ImageSplit(train.images, train.labels, f"{split.source} (train part)"),
            ImageSplit(held_out.images, held_out.labels, f"{split.source} (held-out part)"))


def load_hub_splits(
    dataset_name: str,
    *,
    dataset_config_name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    image_size: int | None = 32,
    train_val_split: float = 0.15,
    cache_dir: str | None = None,
) -> tuple[ImageSplit, ImageSplit, list[str] | None]:
    """Loads a Hub dataset (or a local dataset folder) with ``datasets.load_dataset``.

    The evaluation split is ``validation`` if present, else ``test``, else ``train_val_split`` of ``train``.

    Returns:
        Train split, evaluation split, and the class names of a ``ClassLabel`` label column (or None).
    """
    from datasets import load_dataset

    splits = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    if "train" not in splits:
        raise ImageDataError(f"{dataset_name}: no 'train' split; splits: {list(splits)}")
    names = hf_label_names(splits["train"], label_column)
    train = split_from_hf_dataset(
        splits["train"], image_column=image_column, label_column=label_column, image_size=image_size,
        source=f"{dataset_name} [train]",
    )
    for name in ("validation", "test"):
        if name in splits:
            held_out = split_from_hf_dataset(
                splits[name], image_column=image_column, label_column=label_column, image_size=image_size,
                source=f"{dataset_name} [{name}]",
            )
            return train, held_out, names
    train, held_out = train_eval_split(train, train_val_split)
    return train, held_out, names


def load_digits_splits(*, image_size: int = 32, eval_fraction: float = 0.2) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, no download) as RGB ``image_size`` images.

    Pixel values 0..16 are scaled to 0..255 and up-sampled bilinearly, so the digits look like small CIFAR images and
    the same model, augmentation and image processor apply. The held-out part is a fixed stratified 20%.

    Returns:
        Train split, evaluation split, class names ``["0", ..., "9"]``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    images = resize_images(np.repeat(gray[..., None], 3, axis=-1), image_size)
    split = ImageSplit(images, digits.target.astype(np.int64), "scikit-learn digits")
    train, held_out = train_eval_split(split, eval_fraction, seed=0)
    return train, held_out, [str(name) for name in digits.target_names]


def check_label_range(split: ImageSplit, num_labels: int) -> None:
    """Raises naming the first label outside ``[0, num_labels)`` and where it is."""
    bad = np.flatnonzero((split.labels < 0) | (split.labels >= num_labels))
    if bad.size:
        raise ImageDataError(
            f"{split.source}: label {int(split.labels[bad[0]])} at index {int(bad[0])} is outside [0, {num_labels}) "
            f"({bad.size} such labels); the model has {num_labels} classes"
        )


class CifarAugment(nn.Module):
    """The standard CIFAR augmentation on a uint8 batch: zero-pad ``padding`` pixels, crop back to the original size at
    a random offset, and mirror horizontally with probability 1/2, independently per image.

    Args:
        padding: pixels of zero padding on each side (0 disables the crop).
        horizontal_flip: whether to flip.
    """

    def __init__(self, padding: int = 4, horizontal_flip: bool = True) -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"padding={padding} must be >= 0")
        self.padding = padding
        self.horizontal_flip = horizontal_flip

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Args:
            images: ``(B, C, H, W)``, any dtype (uint8 before normalization).
            generator: CPU random generator (None: torch's global one).

        Returns:
            ``(B, C, H, W)`` augmented images, same dtype and device.
        """
        B, C, H, W = images.shape
        device = images.device
        if self.padding:
            p = self.padding
            padded = F.pad(images, (p, p, p, p))  # (B, C, H + 2p, W + 2p), zeros outside
            dy = torch.randint(0, 2 * p + 1, (B,), generator=generator).to(device)
            dx = torch.randint(0, 2 * p + 1, (B,), generator=generator).to(device)
            rows = dy[:, None] + torch.arange(H, device=device)  # (B, H)
            cols = dx[:, None] + torch.arange(W, device=device)  # (B, W)
            batch = torch.arange(B, device=device)[:, None, None, None]
            channel = torch.arange(C, device=device)[None, :, None, None]
            images = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)
        if self.horizontal_flip:
            flip = (torch.rand(B, generator=generator) < 0.5).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images

    def extra_repr(self) -> str:
        return f"padding={self.padding}, horizontal_flip={self.horizontal_flip}"


def normalize_images(
    images: torch.Tensor, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> torch.Tensor:
    """``(B, C, H, W)`` uint8 -> float32 ``(x / 255 - mean) / std`` per channel, as the image processor computes."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device)[None, :, None, None]
    return (images.float() / 255.0 - mean_t) / std_t


def build_image_processor(
    image_size: int = 32, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> Any:
    """A transformers image processor that resizes (bilinear) to ``image_size`` squared, scales to [0, 1] and
    normalizes with ``mean`` / ``std``: the evaluation transform of this module, saved as ``ViTImageProcessor`` so
    ``AutoImageProcessor`` and ``pipeline("image-classification")`` load it (PIL backend; torchvision not needed)."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
    )


__all__ = [
    "CIFAR10_LABELS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarAugment",
    "ImageDataError",
    "ImageSplit",
    "build_image_processor",
    "check_label_range",
    "load_digits_splits",
    "load_hub_splits",
    "load_image_folder",
    "load_npz_split",
    "normalize_images",
    "resize_images",
    "split_from_hf_dataset",
    "train_eval_split",
]
