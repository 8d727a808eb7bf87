"""CIFAR-100 from the official ``cifar-100-python`` files.

The loader looks for the folder ``cifar-100-python`` (files ``train``, ``test``, ``meta``)
under the data root, or for those files in the root itself, or for the official archive
``cifar-100-python.tar.gz`` in the root (extracted there safely). With ``download=True``
the archive is fetched from :data:`CIFAR100_URL` and checked against :data:`CIFAR100_MD5`.

The pickles are read with a restricted unpickler that only admits the numpy classes an array
needs, so a tampered file cannot run code. The fine-to-coarse class map is derived from the
(fine, coarse) label pairs of the training set and checked for consistency.
"""

from __future__ import annotations

import io
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdgen.data.base import ImageDataset, ImageSplit
from kdgen.data.download import download_file, resolve_root, safe_extract_tar
from kdgen.errors import DataError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FILES = ("train", "test", "meta")
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

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
    base = resolve_root(root)
    folder = _locate(base, download, url, md5, sha256)
    meta = _unpickle(folder / "meta")
    fine_names = _names(meta, "fine_label_names", folder / "meta")
    coarse_names = _names(meta, "coarse_label_names", folder / "meta")
    train = _read_split(folder / "train", len(fine_names), len(coarse_names))
    test = _read_split(folder / "test", len(fine_names), len(coarse_names))
    coarse_of_fine = _coarse_of_fine(train, len(fine_names), folder / "train")
    _check_mapping(test, coarse_of_fine, folder / "test")
    return ImageDataset(
        name="cifar100",
        train=ImageSplit(train[0], train[1]),
        test=ImageSplit(test[0], test[1]),
        class_names=fine_names,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        coarse_of_fine=coarse_of_fine,
        coarse_names=coarse_names,
        extra={"folder": str(folder)},
    )


def _locate(base: Path, download: bool, url: str, md5: str | None, sha256: str | None) -> Path:
    """The folder holding the three pickles, extracting or downloading the archive if need be."""
    folder = _find_folder(base)
    if folder is not None:
        return folder
    archive = base / CIFAR100_ARCHIVE
    if not archive.is_file():
        if not download:
            raise DataError(
                f"CIFAR-100 not found: looked for {base / CIFAR100_FOLDER}/{{train,test,meta}}, "
                f"{base}/{{train,test,meta}} and {archive}; set data.download=true, or fetch "
                f"{url} by hand into {base}"
            )
        download_file(url, archive, sha256=sha256, md5=md5)
    safe_extract_tar(archive, base)
    folder = _find_folder(base)
    if folder is None:
        raise DataError(
            f"{archive} does not contain {CIFAR100_FOLDER}/{{train,test,meta}}; delete it and "
            f"download the official archive from {url}"
        )
    return folder


def _find_folder(base: Path) -> Path | None:
    """``base/cifar-100-python`` or ``base`` itself, whichever holds train, test and meta."""
    for candidate in (base / CIFAR100_FOLDER, base):
        if all((candidate / name).is_file() for name in CIFAR100_FILES):
            return candidate
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only the numpy globals an ndarray needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
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
        raise _corrupt(path, f"unreadable pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a dict, found {type(obj).__name__}")
    return {_text(key): value for key, value in obj.items()}


def _text(value: Any) -> Any:
    """Decode bytes (Python 2 pickles read with encoding='bytes') to str."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _field(entry: dict[str, Any], key: str, path: Path) -> Any:
    if key not in entry:
        raise _corrupt(path, f"missing key {key!r}")
    return entry[key]


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    """A list of class names from ``meta``."""
    names = _field(meta, key, path)
    if not isinstance(names, (list, tuple)) or not names:
        raise _corrupt(path, f"{key!r} is not a non-empty list of names")
    return [str(_text(name)) for name in names]


def _read_split(
    path: Path, num_fine: int, num_coarse: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8, fine labels and coarse labels (int64) of one pickle."""
    entry = _unpickle(path)
    images = _images(_field(entry, "data", path), path)
    fine = _labels(_field(entry, "fine_labels", path), len(images), num_fine, "fine_labels", path)
    coarse = _labels(
        _field(entry, "coarse_labels", path), len(images), num_coarse, "coarse_labels", path
    )
    return torch.from_numpy(images), torch.from_numpy(fine), torch.from_numpy(coarse)


def _images(data: Any, path: Path) -> np.ndarray:
    """Rows of 3072 bytes (R, G, B planes, row-major) as an (N, 3, 32, 32) uint8 array."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise _corrupt(path, f"'data' is not an array ({exc})") from exc
    if array.dtype != np.uint8:
        raise _corrupt(path, f"'data' has dtype {array.dtype}, expected uint8")
    if array.size == 0 or array.size % _IMAGE_BYTES:
        raise _corrupt(
            path, f"'data' holds {array.size} bytes, not a positive multiple of {_IMAGE_BYTES}"
        )
    return np.ascontiguousarray(array.reshape(-1, *_IMAGE_SHAPE))


def _labels(values: Any, count: int, num_classes: int, key: str, path: Path) -> np.ndarray:
    """Labels as int64, checked for length and range."""
    try:
        labels = np.asarray(values, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _corrupt(path, f"{key!r} is not a list of integers ({exc})") from exc
    if labels.shape[0] != count:
        raise _corrupt(path, f"{key!r} has {labels.shape[0]} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(
            path,
            f"{key!r} must lie in [0, {num_classes - 1}], found "
            f"[{int(labels.min())}, {int(labels.max())}]",
        )
    return labels


def _coarse_of_fine(
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor], num_fine: int, path: Path
) -> list[int]:
    """The coarse class of each fine class, from the (fine, coarse) pairs of ``split``."""
    fine, coarse = split[1].numpy(), split[2].numpy()
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    per_fine = np.bincount(pairs[:, 0], minlength=num_fine)
    if (per_fine > 1).any():
        bad = int(np.flatnonzero(per_fine > 1)[0])
        raise _corrupt(path, f"fine class {bad} appears with several coarse classes")
    if (per_fine == 0).any():
        missing = int(np.flatnonzero(per_fine == 0)[0])
        raise _corrupt(path, f"fine class {missing} has no images, so its coarse class is unknown")
    mapping = np.empty(num_fine, dtype=np.int64)
    mapping[pairs[:, 0]] = pairs[:, 1]
    return mapping.tolist()


def _check_mapping(
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor], coarse_of_fine: list[int], path: Path
) -> None:
    """DataError unless every (fine, coarse) pair of ``split`` agrees with ``coarse_of_fine``."""
    expected = torch.tensor(coarse_of_fine, dtype=torch.int64)[split[1]]
    if not torch.equal(expected, split[2]):
        raise _corrupt(path, "its fine-to-coarse class pairs disagree with the training set")


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError(
        f"CIFAR-100 file {path} is corrupt: {problem}; delete the cifar-100-python folder "
        f"and download it again (data.download=true)"
    )
