"""CIFAR-100 and CIFAR-10 from the official python-version files.

CIFAR-100: the loader looks for the folder ``cifar-100-python`` (files ``train``, ``test``,
``meta``) under the data root, or for those files in the root itself, or for the official
archive ``cifar-100-python.tar.gz`` in the root (extracted there safely). With
``download=True`` the archive is fetched from :data:`CIFAR100_URL` and checked against
:data:`CIFAR100_MD5`.

CIFAR-10 works the same way with the folder ``cifar-10-batches-py`` (files ``data_batch_1``
to ``data_batch_5``, ``test_batch``, ``batches.meta``), the archive
``cifar-10-python.tar.gz``, :data:`CIFAR10_URL` and :data:`CIFAR10_MD5`.

The pickles are read with a restricted unpickler that only admits the numpy classes an array
needs, so a tampered file cannot run code. The CIFAR-100 fine-to-coarse class map is derived
from the (fine, coarse) label pairs of the training set and checked for consistency;
CIFAR-10 has no class hierarchy.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdgen.data.base import ImageDataset
from kdgen.data.download import download_file, resolve_root, safe_extract_tar
from kdgen.data.split import ImageSplit
from kdgen.errors import DataError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_FILES = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH, CIFAR10_META)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_IMAGE_SHAPE = (3, 32, 32)
_IMAGE_BYTES = 3 * 32 * 32

_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant lives: its display name, folder, archive and pickle files."""

    title: str
    folder: str
    archive: str
    files: tuple[str, ...]


_CIFAR100 = _Layout("CIFAR-100", CIFAR100_FOLDER, CIFAR100_ARCHIVE, CIFAR100_FILES)
_CIFAR10 = _Layout("CIFAR-10", CIFAR10_FOLDER, CIFAR10_ARCHIVE, CIFAR10_FILES)

_Batch = tuple[torch.Tensor, list[torch.Tensor]]


def load_cifar100(
    root: str | os.PathLike[str] | None,
    download: bool = False,
    url: str = CIFAR100_URL,
    md5: str | None = CIFAR100_MD5,
    sha256: str | None = None,
) -> ImageDataset:
    """Load CIFAR-100 (50000 train / 10000 test 32x32 RGB images, 100 fine / 20 coarse classes).

    ``root`` defaults to ``$KDGEN_DATA`` or ``~/.cache/kdgen/data``. ``url``, ``md5`` and
    ``sha256`` override the official download location and checksum (tests use them).
    """
    layout = _CIFAR100
    folder = _locate(layout, resolve_root(root), download, url, md5, sha256)
    meta = _unpickle(layout, folder / "meta")
    fine_names = _names(layout, meta, "fine_label_names", folder / "meta")
    coarse_names = _names(layout, meta, "coarse_label_names", folder / "meta")
    keys = (("fine_labels", len(fine_names)), ("coarse_labels", len(coarse_names)))
    train = _read_batch(layout, folder / "train", keys)
    test = _read_batch(layout, folder / "test", keys)
    coarse_of_fine = _coarse_of_fine(layout, train, len(fine_names), folder / "train")
    _check_mapping(layout, test, coarse_of_fine, folder / "test")
    return ImageDataset(
        name="cifar100",
        train=ImageSplit(train[0], train[1][0]),
        test=ImageSplit(test[0], test[1][0]),
        class_names=fine_names,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        coarse_of_fine=coarse_of_fine,
        coarse_names=coarse_names,
        extra={"folder": str(folder)},
    )


def load_cifar10(
    root: str | os.PathLike[str] | None,
    download: bool = False,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
    sha256: str | None = None,
) -> ImageDataset:
    """Load CIFAR-10 (50000 train / 10000 test 32x32 RGB images, 10 classes, no hierarchy).

    The five training batches are concatenated in order. ``root`` defaults to
    ``$KDGEN_DATA`` or ``~/.cache/kdgen/data``. ``url``, ``md5`` and ``sha256`` override the
    official download location and checksum (tests use them).
    """
    layout = _CIFAR10
    folder = _locate(layout, resolve_root(root), download, url, md5, sha256)
    meta_path = folder / CIFAR10_META
    class_names = _names(layout, _unpickle(layout, meta_path), "label_names", meta_path)
    keys = (("labels", len(class_names)),)
    batches = [_read_batch(layout, folder / name, keys) for name in CIFAR10_TRAIN_BATCHES]
    test = _read_batch(layout, folder / CIFAR10_TEST_BATCH, keys)
    train_images = torch.cat([batch[0] for batch in batches])
    train_labels = torch.cat([batch[1][0] for batch in batches])
    return ImageDataset(
        name="cifar10",
        train=ImageSplit(train_images, train_labels),
        test=ImageSplit(test[0], test[1][0]),
        class_names=class_names,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        coarse_of_fine=None,
        coarse_names=None,
        extra={"folder": str(folder)},
    )


def _locate(
    layout: _Layout, base: Path, download: bool, url: str, md5: str | None, sha256: str | None
) -> Path:
    """The folder holding the pickles, extracting or downloading the archive if need be."""
    folder = _find_folder(layout, base)
    if folder is not None:
        return folder
    archive = base / layout.archive
    files = "{" + ",".join(layout.files) + "}"
    if not archive.is_file():
        if not download:
            raise DataError(
                f"{layout.title} not found: looked for {base / layout.folder}/{files}, "
                f"{base}/{files} and {archive}{_missing_hint(layout, base)}; set "
                f"data.download=true, or fetch {url} by hand into {base}"
            )
        download_file(url, archive, sha256=sha256, md5=md5)
    safe_extract_tar(archive, base)
    folder = _find_folder(layout, base)
    if folder is None:
        raise DataError(
            f"{archive} does not contain {layout.folder}/{files}"
            f"{_missing_hint(layout, base)}; delete it and download the official archive "
            f"from {url}"
        )
    return folder


def _candidates(layout: _Layout, base: Path) -> tuple[Path, Path]:
    return (base / layout.folder, base)


def _find_folder(layout: _Layout, base: Path) -> Path | None:
    """``base/<official folder>`` or ``base`` itself, whichever holds all the pickles."""
    for candidate in _candidates(layout, base):
        if all((candidate / name).is_file() for name in layout.files):
            return candidate
    return None


def _missing_hint(layout: _Layout, base: Path) -> str:
    """`` (<folder> lacks <files>)`` for a candidate folder holding only some of the pickles."""
    for candidate in _candidates(layout, base):
        present = [name for name in layout.files if (candidate / name).is_file()]
        if present and len(present) < len(layout.files):
            missing = [name for name in layout.files if name not in present]
            return f" ({candidate} lacks {', '.join(missing)})"
    return ""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the numpy globals an ndarray needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _unpickle(layout: _Layout, path: Path) -> dict[str, Any]:
    """Read one CIFAR pickle into a dict with ``str`` keys; DataError if it is damaged."""
    try:
        raw = path.read_bytes()
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        zlib.error,
        OSError,
    ) as exc:
        raise _corrupt(layout, path, f"unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise _corrupt(layout, path, f"expected a dict, found {type(obj).__name__}")
    return {_text(key): value for key, value in obj.items()}


def _text(value: Any) -> Any:
    """Decode bytes (Python 2 pickles read with encoding='bytes') to str."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _field(layout: _Layout, entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise _corrupt(layout, path, f"missing key {key!r}")
    return entry[key]


def _names(layout: _Layout, meta: dict[str, Any], key: str, path: Path) -> list[str]:
    """A list of class names from ``meta``."""
    names = _field(layout, meta, key, path)
    if not isinstance(names, (list, tuple)) or not names:
        raise _corrupt(layout, path, f"{key!r} is not a non-empty list of names")
    return [str(_text(name)) for name in names]


def _read_batch(layout: _Layout, path: Path, keys: tuple[tuple[str, int], ...]) -> _Batch:
    """Images (N, 3, 32, 32) uint8 of one pickle, and one int64 label tensor per ``keys``.

    ``keys`` lists (label key, number of classes) pairs, e.g. ``(("labels", 10),)``.
    """
    entry = _unpickle(layout, path)
    images = _images(layout, _field(layout, entry, "data", path), path)
    labels = [
        torch.from_numpy(
            _labels(layout, _field(layout, entry, key, path), len(images), count, key, path)
        )
        for key, count in keys
    ]
    return torch.from_numpy(images), labels


def _images(layout: _Layout, data: Any, path: Path) -> np.ndarray:
    """Rows of 3072 bytes (R, G, B planes, row-major) as an (N, 3, 32, 32) uint8 array."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise _corrupt(layout, path, f"'data' is not an array ({exc})") from exc
    if array.dtype != np.uint8:
        raise _corrupt(layout, path, f"'data' has dtype {array.dtype}, expected uint8")
    if array.size == 0 or array.size % _IMAGE_BYTES:
        raise _corrupt(
            layout,
            path,
            f"'data' holds {array.size} bytes, not a positive multiple of {_IMAGE_BYTES}",
        )
    return np.ascontiguousarray(array.reshape(-1, *_IMAGE_SHAPE))


def _labels(
    layout: _Layout, values: Any, count: int, num_classes: int, key: str, path: Path
) -> np.ndarray:
    """Labels as int64, checked for length and range."""
    try:
        labels = np.asarray(values, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _corrupt(layout, path, f"{key!r} is not a list of integers ({exc})") from exc
    if labels.shape[0] != count:
        raise _corrupt(layout, path, f"{key!r} has {labels.shape[0]} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(
            layout,
            path,
            f"{key!r} must lie in [0, {num_classes - 1}], found "
            f"[{int(labels.min())}, {int(labels.max())}]",
        )
    return labels


def _coarse_of_fine(layout: _Layout, split: _Batch, num_fine: int, path: Path) -> list[int]:
    """The coarse class of each fine class, from the (fine, coarse) pairs of ``split``."""
    fine, coarse = split[1][0].numpy(), split[1][1].numpy()
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    per_fine = np.bincount(pairs[:, 0], minlength=num_fine)
    if (per_fine > 1).any():
        bad = int(np.flatnonzero(per_fine > 1)[0])
        raise _corrupt(layout, path, f"fine class {bad} appears with several coarse classes")
    if (per_fine == 0).any():
        missing = int(np.flatnonzero(per_fine == 0)[0])
        raise _corrupt(
            layout, path, f"fine class {missing} has no images, so its coarse class is unknown"
        )
    mapping = np.empty(num_fine, dtype=np.int64)
    mapping[pairs[:, 0]] = pairs[:, 1]
    return mapping.tolist()


def _check_mapping(layout: _Layout, split: _Batch, coarse_of_fine: list[int], path: Path) -> None:
    """DataError unless every (fine, coarse) pair of ``split`` agrees with ``coarse_of_fine``."""
    expected = torch.tensor(coarse_of_fine, dtype=torch.int64)[split[1][0]]
    if not torch.equal(expected, split[1][1]):
        raise _corrupt(
            layout, path, "its fine-to-coarse class pairs disagree with the training set"
        )


def _corrupt(layout: _Layout, path: Path, problem: str) -> DataError:
    return DataError(
        f"{layout.title} file {path} is corrupt: {problem}; delete the {layout.folder} folder "
        f"and download it again (data.download=true)"
    )
