"""Tests of the CIFAR-100/-10 and Fashion-MNIST file loaders, downloads and safe tar extraction."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgen.data import load_dataset
from kdgen.data.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR100_URL,
    load_cifar10,
    load_cifar100,
)
from kdgen.data.download import download_file, safe_extract_tar
from kdgen.data.fashion_mnist import DEBIAN_DIR, FILES, load_fashion_mnist
from kdgen.errors import DataError
from tests.helpers import (
    COARSE_OF_FINE,
    NUM_COARSE,
    NUM_FINE,
    cifar100_entry,
    dump_pickle,
    idx_images,
    idx_labels,
    rewrite_cifar100_train,
    write_cifar100,
    write_fashion_mnist,
)

# ---------------------------------------------------------------- CIFAR-100 fixture writer


def write_cifar100_tarball(path: Path, work: Path) -> Path:
    """An official-style ``cifar-100-python.tar.gz`` at ``path``."""
    folder = write_cifar100(work / "cifar-100-python")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_cifar(dataset, n_train: int = 2, n_test: int = 1) -> None:
    assert dataset.train.images.shape == (NUM_FINE * n_train, 3, 32, 32)
    assert dataset.test.images.shape == (NUM_FINE * n_test, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.train.labels.dtype == torch.int64
    assert dataset.num_classes == NUM_FINE
    assert dataset.class_names[3] == "fine3"
    assert dataset.coarse_names == [f"coarse{i}" for i in range(NUM_COARSE)]
    assert dataset.coarse_of_fine == COARSE_OF_FINE
    assert dataset.mean == CIFAR100_MEAN
    assert dataset.std == CIFAR100_STD


# ---------------------------------------------------------------- CIFAR-100 loading


def test_cifar100_from_official_folder(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    dataset = load_cifar100(tmp_path)
    _check_cifar(dataset)
    entry = cifar100_entry(2, 0)
    data = entry[b"data"]
    # Row-major RGB planes: pixel (c, h, w) is byte c*1024 + h*32 + w of a row.
    assert int(dataset.train.images[5, 2, 3, 4]) == int(data[5, 2 * 1024 + 3 * 32 + 4])
    assert dataset.train.labels.tolist() == entry[b"fine_labels"]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar100_files_in_root_itself(tmp_path: Path, protocol: int) -> None:
    write_cifar100(tmp_path, protocol=protocol)
    _check_cifar(load_cifar100(str(tmp_path)))


def test_cifar100_from_tarball(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_cifar100_tarball(root / "cifar-100-python.tar.gz", tmp_path / "work")
    _check_cifar(load_cifar100(root))
    assert (root / "cifar-100-python" / "meta").is_file()


def test_cifar100_default_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    monkeypatch.setenv("KDGEN_DATA", str(tmp_path))
    _check_cifar(load_cifar100(None))


def test_cifar100_missing_names_url_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar100(tmp_path)
    message = str(info.value)
    assert CIFAR100_URL in message
    assert "data.download=true" in message
    assert str(tmp_path) in message
    assert "\n" not in message


def test_cifar100_truncated_pickle(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="train"):
        load_cifar100(tmp_path)


def test_cifar100_garbage_pickle(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    (folder / "meta").write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="meta"):
        load_cifar100(tmp_path)


def test_cifar100_refuses_foreign_pickle_globals(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    dump_pickle(folder / "meta", {b"fine_label_names": functools.partial(print, "pwned")})
    with pytest.raises(DataError, match="not allowed"):
        load_cifar100(tmp_path)


def test_cifar100_bad_data_length(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    rewrite_cifar100_train(folder, data=np.zeros(3072 * 200 - 5, dtype=np.uint8))
    with pytest.raises(DataError, match="multiple of 3072"):
        load_cifar100(tmp_path)


def test_cifar100_missing_key(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    entry = cifar100_entry(2, 0)
    del entry[b"coarse_labels"]
    dump_pickle(folder / "train", entry)
    with pytest.raises(DataError, match="coarse_labels"):
        load_cifar100(tmp_path)


def test_cifar100_label_out_of_range(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    labels = cifar100_entry(2, 0)[b"fine_labels"]
    labels[0] = NUM_FINE
    rewrite_cifar100_train(folder, fine_labels=labels)
    with pytest.raises(DataError, match=r"\[0, 99\]"):
        load_cifar100(tmp_path)


def test_cifar100_label_count_mismatch(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    rewrite_cifar100_train(folder, fine_labels=cifar100_entry(2, 0)[b"fine_labels"][:-1])
    with pytest.raises(DataError, match="199 labels for 200 images"):
        load_cifar100(tmp_path)


def test_cifar100_inconsistent_coarse_mapping(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path / "cifar-100-python")
    entry = cifar100_entry(2, 0)
    index = entry[b"fine_labels"].index(0)
    entry[b"coarse_labels"][index] = (COARSE_OF_FINE[0] + 1) % NUM_COARSE
    dump_pickle(folder / "train", entry)
    with pytest.raises(DataError, match="fine class 0 appears with several coarse"):
        load_cifar100(tmp_path)


# ---------------------------------------------------------------- local HTTP server


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Serve a fresh folder over HTTP on 127.0.0.1 (ephemeral port); yield (base URL, folder)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_cifar100_download_checksum_ok(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    archive = write_cifar100_tarball(served / "cifar-100-python.tar.gz", tmp_path / "work")
    root = tmp_path / "root"
    dataset = load_cifar100(
        root, download=True, url=f"{base_url}/cifar-100-python.tar.gz", md5=_md5(archive)
    )
    _check_cifar(dataset)
    assert _md5(root / "cifar-100-python.tar.gz") == _md5(archive)


def test_cifar100_download_checksum_mismatch(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    write_cifar100_tarball(served / "cifar-100-python.tar.gz", tmp_path / "work")
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_cifar100(root, download=True, url=f"{base_url}/cifar-100-python.tar.gz", md5="0" * 32)
    assert "0" * 32 in str(info.value)
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = 10
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def _cifar10_entry(per_class: int, seed: int) -> dict[bytes, object]:
    """One CIFAR-10 batch in the official layout: b'data' N x 3072 uint8, b'labels' list."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CIFAR10_CLASSES), per_class)
    rng.shuffle(labels)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": labels.tolist(),
        b"data": rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(labels.size)],
    }


def write_cifar10(folder: Path, per_class: int = 2) -> Path:
    """A tiny CIFAR-10 (``per_class`` images per class in each of the six batch files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate([*CIFAR10_BATCHES, "test_batch"]):
        dump_pickle(folder / name, _cifar10_entry(per_class, seed))
    meta = {
        b"num_cases_per_batch": CIFAR10_CLASSES * per_class,
        b"label_names": [f"class{i}".encode() for i in range(CIFAR10_CLASSES)],
        b"num_vis": 3072,
    }
    dump_pickle(folder / "batches.meta", meta)
    return folder


def write_cifar10_tarball(path: Path, work: Path) -> Path:
    """An official-style ``cifar-10-python.tar.gz`` at ``path``."""
    folder = write_cifar10(work / "cifar-10-batches-py")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


def _check_cifar10(dataset) -> None:
    assert dataset.name == "cifar10"
    assert dataset.train.images.shape == (5 * 2 * CIFAR10_CLASSES, 3, 32, 32)
    assert dataset.test.images.shape == (2 * CIFAR10_CLASSES, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.train.labels.dtype == torch.int64
    assert dataset.num_classes == CIFAR10_CLASSES
    assert dataset.class_names == [f"class{i}" for i in range(CIFAR10_CLASSES)]
    assert dataset.coarse_of_fine is None
    assert dataset.coarse_names is None
    assert dataset.mean == CIFAR10_MEAN
    assert dataset.std == CIFAR10_STD
    # Batches are concatenated in order data_batch_1 .. data_batch_5.
    entries = [_cifar10_entry(2, seed) for seed in range(6)]
    labels = [label for entry in entries[:5] for label in entry[b"labels"]]
    assert dataset.train.labels.tolist() == labels
    assert dataset.test.labels.tolist() == entries[5][b"labels"]
    data = entries[1][b"data"]  # data_batch_2, first image at train index 20
    assert int(dataset.train.images[20 + 7, 1, 4, 9]) == int(data[7, 1024 + 4 * 32 + 9])


def test_cifar10_from_official_folder(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    dataset = load_cifar10(tmp_path)
    _check_cifar10(dataset)
    assert dataset.extra["folder"] == str(tmp_path / "cifar-10-batches-py")


def test_cifar10_from_tarball(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_cifar10_tarball(root / "cifar-10-python.tar.gz", tmp_path / "work")
    _check_cifar10(load_cifar10(root))
    assert (root / "cifar-10-batches-py" / "batches.meta").is_file()


def test_cifar10_registered(tmp_path: Path) -> None:
    write_cifar10(tmp_path)  # files in the root itself
    _check_cifar10(load_dataset("cifar10", str(tmp_path)))


def test_cifar10_missing_names_url_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert "CIFAR-10 not found" in message
    assert CIFAR10_URL in message
    assert "data.download=true" in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "\n" not in message


def test_cifar10_missing_batch_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py lacks data_batch_3\)") as info:
        load_cifar10(tmp_path)
    assert CIFAR10_URL in str(info.value)


def test_cifar10_corrupt_batch_names_cifar10(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "cifar-10-batches-py")
    entry = _cifar10_entry(2, 3)
    entry[b"labels"][0] = CIFAR10_CLASSES
    dump_pickle(folder / "data_batch_4", entry)
    with pytest.raises(DataError, match=r"CIFAR-10 file .*data_batch_4.*\[0, 9\]") as info:
        load_cifar10(tmp_path)
    assert "cifar-10-batches-py folder" in str(info.value)


def test_cifar10_download_checksum_ok(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    archive = write_cifar10_tarball(served / "cifar-10-python.tar.gz", tmp_path / "work")
    root = tmp_path / "root"
    dataset = load_cifar10(
        root, download=True, url=f"{base_url}/cifar-10-python.tar.gz", md5=_md5(archive)
    )
    _check_cifar10(dataset)
    assert _md5(root / "cifar-10-python.tar.gz") == _md5(archive)


def test_cifar10_download_checksum_mismatch(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    write_cifar10_tarball(served / "cifar-10-python.tar.gz", tmp_path / "work")
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_cifar10(root, download=True, url=f"{base_url}/cifar-10-python.tar.gz", md5="0" * 32)
    assert "0" * 32 in str(info.value)
    assert list(root.iterdir()) == []


def test_download_file_sha256(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, served = http_root
    payload = b"kdgen" * 100_000
    (served / "blob.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    assert download_file(f"{base_url}/blob.bin", dest, sha256=digest.upper()) == dest
    assert dest.read_bytes() == payload
    # SHA-256 wins over a (wrong) MD5 when both are given.
    download_file(f"{base_url}/blob.bin", tmp_path / "again.bin", sha256=digest, md5="0" * 32)


def test_download_file_sha256_mismatch_leaves_nothing(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base_url, served = http_root
    (served / "blob.bin").write_bytes(b"payload")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="expected sha256 ") as info:
        download_file(f"{base_url}/blob.bin", out / "blob.bin", sha256="ab" * 32)
    assert hashlib.sha256(b"payload").hexdigest() in str(info.value)
    assert list(out.iterdir()) == []


def test_download_file_http_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, _ = http_root
    out = tmp_path / "out"
    with pytest.raises(DataError, match="cannot download"):
        download_file(f"{base_url}/missing.tar.gz", out / "missing.tar.gz")
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------- safe tar extraction


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"evil") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        safe = tarfile.TarInfo("ok.txt")
        safe.size = 2
        tar.addfile(safe, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return path


def _symlink(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil"),
        tarfile.TarInfo("sub/../../evil"),
        tarfile.TarInfo("/tmp/kdgen-absolute-evil"),
        _symlink("link", "../outside"),
        _symlink("link", "/etc/passwd"),
        _symlink("sub/link", "../../outside"),
        _symlink("hard", "../outside", tarfile.LNKTYPE),
        _symlink("fifo", "", tarfile.FIFOTYPE),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink",
        "symlink-abs",
        "nested-symlink",
        "hardlink",
        "fifo",
    ],
)
def test_safe_extract_refuses_escapes(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _tar_with(tmp_path / "bad.tar.gz", member)
    target = tmp_path / "a" / "target"
    with pytest.raises(DataError, match="unsafe"):
        safe_extract_tar(archive, target)
    assert list(target.iterdir()) == []  # refused before anything was written
    assert not (tmp_path / "a" / "evil").exists()
    assert not Path("/tmp/kdgen-absolute-evil").exists()


def test_safe_extract_allows_inner_links(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path / "good.tar.gz", _symlink("sub/link", "../ok.txt"))
    safe_extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "link").read_bytes() == b"ok"


def test_safe_extract_truncated_archive(tmp_path: Path) -> None:
    archive = write_cifar100_tarball(tmp_path / "full.tar.gz", tmp_path / "work")
    raw = archive.read_bytes()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        safe_extract_tar(truncated, tmp_path / "out")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="corrupt or truncated"):
        safe_extract_tar(garbage, tmp_path / "out")


def test_cifar100_corrupt_tarball_in_root(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz"):
        load_cifar100(tmp_path)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_fashion_mnist_loads(tmp_path: Path, gz: bool) -> None:
    write_fashion_mnist(tmp_path, gz=gz)
    dataset = load_fashion_mnist(tmp_path, system_dirs=())
    assert dataset.train.images.shape == (20, 1, 28, 28)
    assert dataset.test.images.shape == (10, 1, 28, 28)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.train.labels.dtype == torch.int64
    assert dataset.train.labels.tolist() == [i % 10 for i in range(20)]
    pixels = np.frombuffer(idx_images(20, 0)[16:], dtype=np.uint8).reshape(20, 1, 28, 28)
    assert torch.equal(dataset.train.images, torch.from_numpy(pixels.copy()))
    assert dataset.class_names[0] == "T-shirt/top"
    assert dataset.class_names[9] == "Ankle boot"
    assert dataset.mean == (0.2860,)
    assert dataset.std == (0.3530,)
    groups = {
        coarse: {dataset.class_names[f] for f, c in enumerate(dataset.coarse_of_fine) if c == i}
        for i, coarse in enumerate(dataset.coarse_names)
    }
    assert groups == {
        "tops": {"T-shirt/top", "Pullover", "Coat", "Shirt"},
        "dress-and-trouser": {"Dress", "Trouser"},
        "footwear": {"Sandal", "Sneaker", "Ankle boot"},
        "bag": {"Bag"},
    }


@pytest.mark.parametrize("sub", ["fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_subfolders(tmp_path: Path, sub: str) -> None:
    write_fashion_mnist(tmp_path / sub, gz=True)
    dataset = load_fashion_mnist(tmp_path, system_dirs=())
    assert dataset.extra["folder"] == str(tmp_path / sub)


def test_fashion_mnist_system_dir_fallback(tmp_path: Path) -> None:
    system = write_fashion_mnist(tmp_path / "system")
    dataset = load_fashion_mnist(tmp_path / "empty", system_dirs=[system])
    assert len(dataset.train) == 20


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_fashion_mnist(tmp_path, system_dirs=[tmp_path / "sys"])
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.root=" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "sys") in message


def test_fashion_mnist_bad_magic(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path)
    (folder / FILES["train_images"]).write_bytes(idx_images(20, 0, magic=2049))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*magic number 2049"):
        load_fashion_mnist(tmp_path, system_dirs=())


def test_fashion_mnist_truncated(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path)
    (folder / FILES["test_images"]).write_bytes(idx_images(10, 1)[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path, system_dirs=())
    (folder / FILES["test_images"]).write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="shorter than the idx header"):
        load_fashion_mnist(tmp_path, system_dirs=())


def test_fashion_mnist_truncated_gzip(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path, gz=True)
    path = folder / (FILES["train_images"] + ".gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_fashion_mnist(tmp_path, system_dirs=())


def test_fashion_mnist_wrong_image_size(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path)
    (folder / FILES["train_images"]).write_bytes(idx_images(20, 0, rows=27))
    with pytest.raises(DataError, match="27x28"):
        load_fashion_mnist(tmp_path, system_dirs=())


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path)
    (folder / FILES["train_labels"]).write_bytes(idx_labels([1] * 19))
    with pytest.raises(DataError, match="19 labels for 20 images"):
        load_fashion_mnist(tmp_path, system_dirs=())


def test_fashion_mnist_label_out_of_range(tmp_path: Path) -> None:
    folder = write_fashion_mnist(tmp_path)
    (folder / FILES["test_labels"]).write_bytes(idx_labels([0] * 9 + [10]))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*label 10 out of range"):
        load_fashion_mnist(tmp_path, system_dirs=())


@pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_real_debian_files(tmp_path: Path) -> None:
    dataset = load_fashion_mnist(tmp_path / "empty")
    assert dataset.extra["folder"] == str(DEBIAN_DIR)
    assert dataset.train.images.shape == (60000, 1, 28, 28)
    assert dataset.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(dataset.train.labels).tolist() == [6000] * 10
    mean = dataset.train.images.float().mean().item() / 255
    assert abs(mean - dataset.mean[0]) < 1e-3
