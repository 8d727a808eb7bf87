"""Fashion-MNIST from its idx files (60000 train / 10000 test 28x28 greyscale images).

The four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) are looked
for in the data root, ``root/fashion-mnist``, ``root/FashionMNIST/raw`` (torchvision's
layout) and then where Debian's ``dataset-fashion-mnist`` package installs them,
``/usr/share/datasets/fashion-mnist``.

Every header is validated: magic number (2051 for images, 2049 for labels), image size
28x28, file length equal to what the header announces, matching image and label counts, and
labels in [0, 9].

Coarse grouping of the ten classes (a hand-made two-level hierarchy used by kdgen):

* ``tops`` (0): T-shirt/top, Pullover, Coat, Shirt
* ``dress-and-trouser`` (1): Dress, Trouser
* ``footwear`` (2): Sandal, Sneaker, Ankle boot
* ``bag`` (3): Bag
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdgen.data.base import ImageDataset
from kdgen.data.download import resolve_root
from kdgen.data.split import ImageSplit
from kdgen.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_DIRS: tuple[Path, ...] = (DEBIAN_DIR,)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
COARSE_NAMES = ["tops", "dress-and-trouser", "footwear", "bag"]
COARSE_OF_FINE = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]
MEAN = (0.2860,)
STD = (0.3530,)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIDE = 28


def load_fashion_mnist(
    root: str | os.PathLike[str] | None,
    system_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> ImageDataset:
    """Load Fashion-MNIST as (N, 1, 28, 28) uint8 images with int64 labels.

    ``root`` defaults to ``$KDGEN_DATA`` or ``~/.cache/kdgen/data``; ``system_dirs`` (default
    :data:`SYSTEM_DIRS`, the Debian location) are searched after it.
    """
    folder = _find_folder(_candidates(resolve_root(root), system_dirs))
    train = _read_split(folder, "train")
    test = _read_split(folder, "test")
    return ImageDataset(
        name="fashion_mnist",
        train=train,
        test=test,
        class_names=list(CLASS_NAMES),
        mean=MEAN,
        std=STD,
        coarse_of_fine=list(COARSE_OF_FINE),
        coarse_names=list(COARSE_NAMES),
        extra={"folder": str(folder)},
    )


def _candidates(base: Path, system_dirs: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    """The folders to search, in order."""
    extra = SYSTEM_DIRS if system_dirs is None else system_dirs
    return [base, base / "fashion-mnist", base / "FashionMNIST" / "raw", *map(Path, extra)]


def _find_folder(candidates: list[Path]) -> Path:
    """The first folder holding all four idx files (plain or gzipped)."""
    for folder in candidates:
        if all(_file(folder, name) is not None for name in FILES.values()):
            return folder
    looked = ", ".join(str(folder) for folder in candidates)
    raise DataError(
        f"Fashion-MNIST idx files not found (looked in {looked}); run "
        f"'apt-get install dataset-fashion-mnist', or set data.root=DIR to a folder holding "
        f"{', '.join(FILES.values())} (each may be .gz)"
    )


def _file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_split(folder: Path, split: str) -> ImageSplit:
    """Images and labels of ``split`` ("train" or "test"), with matching counts."""
    image_path = _file(folder, FILES[f"{split}_images"])
    label_path = _file(folder, FILES[f"{split}_labels"])
    assert image_path is not None and label_path is not None
    images = _read_images(image_path)
    labels = _read_labels(label_path)
    if images.shape[0] != labels.shape[0]:
        raise _bad(
            label_path, f"{labels.shape[0]} labels for {images.shape[0]} images in {image_path}"
        )
    return ImageSplit(torch.from_numpy(images), torch.from_numpy(labels))


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed where it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad(path, f"unreadable ({type(exc).__name__}: {exc})") from exc


def _header(data: bytes, path: Path, magic: int, ndim: int) -> list[int]:
    """Check the magic number and length; return the dimensions the header announces."""
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _bad(path, f"only {len(data)} bytes, shorter than the idx header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise _bad(path, f"magic number {found}, expected {magic}")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64).tolist()
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise _bad(path, f"{len(data)} bytes, but its header {dims} announces {expected}")
    return dims


def _read_images(path: Path) -> np.ndarray:
    """An idx3 image file as an (N, 1, 28, 28) uint8 array."""
    data = _read_bytes(path)
    count, rows, cols = _header(data, path, IMAGE_MAGIC, 3)
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise _bad(path, f"images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16)
    return pixels.reshape(count, 1, rows, cols).copy()


def _read_labels(path: Path) -> np.ndarray:
    """An idx1 label file as an int64 array with values in [0, 9]."""
    data = _read_bytes(path)
    _header(data, path, LABEL_MAGIC, 1)
    labels = np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise _bad(path, f"label {int(labels.max())} out of range [0, {len(CLASS_NAMES) - 1}]")
    return labels


def _bad(path: Path, problem: str) -> DataError:
    return DataError(
        f"Fashion-MNIST file {path} is corrupt: {problem}; replace it with the official file "
        f"(apt-get install --reinstall dataset-fashion-mnist, or download it again)"
    )
