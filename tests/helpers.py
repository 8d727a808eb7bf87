"""Helpers shared by several test files: pinned values and tiny data-set files in the
official formats (CIFAR-100 pickles, Fashion-MNIST idx files)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from kdgen.data.fashion_mnist import FILES

# config_hash(build_config("smoke")), as computed by the code before model_args and
# student_loss existed: a key added since must keep it at its default value.
SMOKE_CONFIG_HASH = "94cf9fa67c46d1fd"

NUM_FINE = 100
NUM_COARSE = 20
COARSE_OF_FINE = [(7 * fine) % NUM_COARSE for fine in range(NUM_FINE)]


def cifar100_entry(per_class: int, seed: int) -> dict[bytes, object]:
    """One split in the official layout: bytes keys, N x 3072 uint8 data, label lists."""
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(NUM_FINE), per_class)
    rng.shuffle(fine)
    data = rng.integers(0, 256, size=(fine.size, 3072), dtype=np.uint8)
    coarse = [COARSE_OF_FINE[f] for f in fine.tolist()]
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(fine.size)],
        b"data": data,
        b"fine_labels": fine.tolist(),
        b"coarse_labels": coarse,
    }


def dump_pickle(path: Path, obj: object, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar100(
    folder: Path, n_train: int = 2, n_test: int = 1, seed: int = 0, protocol: int = 2
) -> Path:
    """Write a tiny CIFAR-100 (``n_train``/``n_test`` images per class) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_pickle(folder / "train", cifar100_entry(n_train, seed), protocol)
    dump_pickle(folder / "test", cifar100_entry(n_test, seed + 1), protocol)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(NUM_FINE)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(NUM_COARSE)],
    }
    dump_pickle(folder / "meta", meta, protocol)
    return folder


def rewrite_cifar100_train(folder: Path, **changes: object) -> None:
    """Rewrite the ``train`` pickle of :func:`write_cifar100` with some keys changed."""
    entry = cifar100_entry(2, 0)
    entry.update({key.encode(): value for key, value in changes.items()})
    dump_pickle(folder / "train", entry)


def idx_images(count: int, seed: int, rows: int = 28, magic: int = 2051) -> bytes:
    """An idx3 file of ``count`` random ``rows`` x 28 images."""
    pixels = np.random.default_rng(seed).integers(0, 256, (count, rows, 28), dtype=np.uint8)
    header = np.array([magic, count, rows, 28], dtype=">u4").tobytes()
    return header + pixels.tobytes()


def idx_labels(labels: list[int], magic: int = 2049) -> bytes:
    return np.array([magic, len(labels)], dtype=">u4").tobytes() + bytes(labels)


def write_idx(path: Path, data: bytes, gz: bool) -> None:
    """Write ``data`` at ``path``, or gzipped at ``path.gz``."""
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_fashion_mnist(
    folder: Path, gz: bool = False, n_train: int = 20, n_test: int = 10
) -> Path:
    """Write tiny idx files with labels cycling through 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / FILES["train_images"], idx_images(n_train, 0), gz)
    write_idx(folder / FILES["train_labels"], idx_labels([i % 10 for i in range(n_train)]), gz)
    write_idx(folder / FILES["test_images"], idx_images(n_test, 1), gz)
    write_idx(folder / FILES["test_labels"], idx_labels([(3 * i) % 10 for i in range(n_test)]), gz)
    return folder
