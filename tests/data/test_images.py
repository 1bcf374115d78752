"""Image data: every loader with its errors, the CIFAR augmentation, and the normalization the image processor
repeats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_rskip.data.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarAugment,
    ImageDataError,
    ImageSplit,
    build_image_processor,
    check_label_range,
    load_digits_splits,
    load_hub_splits,
    load_image_folder,
    load_npz_split,
    normalize_images,
    split_from_hf_dataset,
)


def random_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- .npz -----------------------------------------------------------------------------------------------

def test_npz_round_trip_and_layouts(tmp_path) -> None:
    images = random_images(6)
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=images, y=labels, chw=images.transpose(0, 3, 1, 2), gray=images[..., 0],
             y2=labels[:, None].astype(np.int32))
    split = load_npz_split(tmp_path / "a.npz", "x", "y")
    assert split.images.dtype == np.uint8 and np.array_equal(split.images, images)
    assert split.labels.dtype == np.int64 and split.labels.tolist() == labels.tolist()
    assert np.array_equal(load_npz_split(tmp_path / "a.npz", "chw", "y2").images, images)
    gray = load_npz_split(tmp_path / "a.npz", "gray", "y").images
    assert gray.shape == (6, 8, 8, 3) and np.array_equal(gray[..., 2], images[..., 0])
    resized = load_npz_split(tmp_path / "a.npz", "x", "y", image_size=4)
    assert resized.image_size == (4, 4)
    images_t, labels_t = split.to_tensors()
    assert images_t.shape == (6, 3, 8, 8) and torch.equal(images_t[1, 2], torch.from_numpy(images[1, :, :, 2]))


@pytest.mark.parametrize(
    "arrays, keys, pattern",
    [
        (dict(x=random_images(5), y=np.zeros(4, int)), ("x", "y"), r"5 images under 'x' but 4 labels under 'y'"),
        (dict(x=random_images(2), y=np.zeros(2, int)), ("images", "y"), r"image key 'images' not found.*\['x', 'y'\]"),
        (dict(x=random_images(2), y=np.zeros(2, int)), ("x", "labels"), r"label key 'labels' not found"),
        (dict(x=random_images(2) / 255.0, y=np.zeros(2, int)), ("x", "y"), r"\[x\]: images must be uint8.*float64"),
        (dict(x=np.zeros((2, 8, 8, 5), np.uint8), y=np.zeros(2, int)), ("x", "y"), r"must have shape.*\(2, 8, 8, 5\)"),
        (dict(x=random_images(2), y=np.array([0, -1])), ("x", "y"), r"\[y\]: label -1 at index 1 is negative"),
        (dict(x=random_images(2), y=np.array([0.5, 1])), ("x", "y"), r"\[y\]: labels must be integer"),
        (dict(x=random_images(2), y=np.zeros((2, 3), int)), ("x", "y"), r"labels must have shape \(N,\)"),
    ],
)
def test_npz_errors_name_file_and_key(tmp_path, arrays: dict, keys: tuple[str, str], pattern: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ImageDataError, match=r"bad\.npz.*" + pattern):
        load_npz_split(tmp_path / "bad.npz", *keys)


def test_npz_missing_or_corrupt_file(tmp_path) -> None:
    with pytest.raises(ImageDataError, match=r"nope\.npz: no such \.npz file"):
        load_npz_split(tmp_path / "nope.npz", "x", "y")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageDataError, match=r"junk\.npz: not a readable \.npz"):
        load_npz_split(tmp_path / "junk.npz", "x", "y")


def test_cifar10_lossless_subset(shared_data) -> None:
    path = shared_data / "cifar10" / "lossless_subset" / "cifar10_lossless_subset.npz"
    train = load_npz_split(path, "x_train", "y_train")
    test = load_npz_split(path, "x_test", "y_test")
    assert (len(train), len(test), train.image_size) == (4000, 1000, (32, 32))
    # first labels of the official batches (SOURCE.md)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # test image 0 red channel starts 158, 159, 165, 166, 160 (SOURCE.md)
    assert test.images[0, 0, :5, 0].tolist() == [158, 159, 165, 166, 160]


# --- image folders ---------------------------------------------------------------------------------------

def write_folder(root, classes: dict[str, int], size: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder(tmp_path) -> None:
    write_folder(tmp_path / "train", {"cat": 2, "dog": 3})
    write_folder(tmp_path / "val", {"dog": 1}, seed=1)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored: not an image extension")
    train, names = load_image_folder(tmp_path / "train", image_size=6)
    assert names == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1, 1]
    assert train.images.shape == (5, 6, 6, 3)
    expected = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png").resize((6, 6), Image.BILINEAR))
    assert np.array_equal(train.images[0], expected)
    val, _ = load_image_folder(tmp_path / "val", image_size=6, class_names=names)
    assert val.labels.tolist() == [1]  # "dog" keeps the training index


def test_image_folder_errors(tmp_path) -> None:
    write_folder(tmp_path / "train", {"cat": 1, "dog": 1})
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ImageDataError, match=r"dog/broken\.jpg: unreadable image"):
        load_image_folder(tmp_path / "train")
    write_folder(tmp_path / "val", {"bird": 1})
    with pytest.raises(ImageDataError, match=r"class folders \['bird'\] are not among the training classes"):
        load_image_folder(tmp_path / "val", class_names=["cat", "dog"])
    with pytest.raises(ImageDataError, match=r"no such image folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ImageDataError, match=r"no class sub-folders"):
        load_image_folder(tmp_path / "flat")
    with pytest.raises(ImageDataError, match=r"differ in size"):
        write_folder(tmp_path / "mixed", {"a": 1})
        Image.new("RGB", (3, 3)).save(tmp_path / "mixed" / "a" / "small.png")
        load_image_folder(tmp_path / "mixed", image_size=None)


# --- Hub datasets (through the same `datasets` calls, from a local folder) --------------------------------

def make_hf_dataset(n: int, seed: int = 0):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature

    images = [Image.fromarray(a) for a in random_images(n, size=8, seed=seed)]
    features = Features({"img": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})
    return Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]}, features=features)


def test_hub_dataset_from_a_local_folder(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    make_hf_dataset(6).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    make_hf_dataset(3, seed=1).to_parquet(str(tmp_path / "data" / "test-00000-of-00001.parquet"))
    train, test, names = load_hub_splits(str(tmp_path), image_column="img", image_size=4,
                                         cache_dir=str(tmp_path / "cache"))
    assert names == ["a", "b", "c"]
    assert (len(train), len(test), train.image_size) == (6, 3, (4, 4))
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ImageDataError, match=r"column 'image' not found \(set --image_column_name\).*'img'"):
        load_hub_splits(str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_hub_dataset_without_a_held_out_split_is_split(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    make_hf_dataset(20).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    train, held_out, _ = load_hub_splits(str(tmp_path), image_column="img", image_size=None, train_val_split=0.25,
                                         cache_dir=str(tmp_path / "cache"))
    assert (len(train), len(held_out)) == (15, 5)


def test_split_from_hf_dataset_keeps_pixels() -> None:
    dataset = make_hf_dataset(4)
    split = split_from_hf_dataset(dataset, image_column="img", label_column="label", image_size=None)
    assert np.array_equal(split.images, random_images(4, size=8))


# --- digits, labels ------------------------------------------------------------------------------------------

def test_digits_built_in() -> None:
    train, held_out, names = load_digits_splits(image_size=16)
    assert names == [str(i) for i in range(10)]
    assert (len(train), len(held_out)) == (1437, 360)
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype == np.uint8
    assert np.array_equal(train.images[..., 0], train.images[..., 2])  # gray
    assert set(np.bincount(held_out.labels)) <= {35, 36, 37}  # stratified
    again, _, _ = load_digits_splits(image_size=16)
    assert np.array_equal(again.labels, train.labels)  # a fixed split, independent of any seed


def test_label_range_and_counts() -> None:
    split = ImageSplit(random_images(3), np.array([0, 3, 1]), "val.npz")
    check_label_range(split, 4)
    with pytest.raises(ImageDataError, match=r"val\.npz: label 3 at index 1 is outside \[0, 3\)"):
        check_label_range(split, 3)
    with pytest.raises(ImageDataError, match=r"train\.npz: 3 images but 2 labels"):
        ImageSplit(random_images(3), np.array([0, 1]), "train.npz")


# --- augmentation and normalization -------------------------------------------------------------------------

def test_cifar_augment_is_pad_crop_and_flip() -> None:
    images = torch.from_numpy(random_images(64, size=8)).permute(0, 3, 1, 2).contiguous()
    out = CifarAugment(padding=2)(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips = 0
    for image, result in zip(padded, out):
        # each output is one of the 25 crops of the padded image, mirrored or not
        windows = {(dy, dx): image[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)}
        crops = {(dy, dx, f) for (dy, dx), w in windows.items() for f in (False, True)
                 if torch.equal(w.flip(-1) if f else w, result)}
        assert crops, "not a crop of the padded image"
        flips += all(f for _, _, f in crops)
    assert 16 < flips < 48  # about half flipped
    assert not torch.equal(out, images)
    assert torch.equal(CifarAugment(padding=0, horizontal_flip=False)(images), images)
    again = CifarAugment(padding=2)(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out)


def test_normalization_is_what_the_saved_processor_computes(tmp_path) -> None:
    from transformers import AutoImageProcessor

    build_image_processor(image_size=8).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert list(processor.image_mean) == list(CIFAR10_MEAN) and list(processor.image_std) == list(CIFAR10_STD)
    images = random_images(3, size=8)
    expected = processor([Image.fromarray(a) for a in images], return_tensors="pt")["pixel_values"]
    ours = normalize_images(torch.from_numpy(images).permute(0, 3, 1, 2))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    # images of another size: the processor's resize is the loaders' resize
    big = random_images(2, size=12)
    expected = processor([Image.fromarray(a) for a in big], return_tensors="pt")["pixel_values"]
    resized = load_npz_like(big, 8)
    torch.testing.assert_close(normalize_images(torch.from_numpy(resized).permute(0, 3, 1, 2)), expected,
                               rtol=0, atol=1e-5)


def load_npz_like(images: np.ndarray, size: int) -> np.ndarray:
    from hf_rskip.data.images import resize_images

    return resize_images(images, size)
