"""Fetching and unpacking data files safely: checksummed downloads and tar extraction.

``download_file`` streams a URL to a temporary file next to its destination, checks its
SHA-256 or MD5 digest and only then renames it into place, so a failed or tampered download
never leaves a file that looks complete. ``safe_extract_tar`` unpacks an archive, refusing
any member that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from kdgen.errors import DataError
from kdgen.files import create_beside

_CHUNK = 1 << 20


def default_data_root() -> Path:
    """The default data folder: ``$KDGEN_DATA``, else ``~/.cache/kdgen/data``."""
    env = os.environ.get("KDGEN_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kdgen" / "data"


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``root`` as a path, or the default data folder where ``root`` is None or empty."""
    if root is None or str(root) == "":
        return default_data_root()
    return Path(root).expanduser()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, verifying its checksum before the file appears.

    SHA-256 is checked when given, else MD5 when given. On a mismatch or a network error the
    partial file is deleted and :class:`DataError` is raised. Returns ``dest`` as a path.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = _pick_checksum(sha256, md5)
    fd, tmp = create_beside(dest, ".part")  # readable as the umask says, unlike mkstemp's
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, algorithm, timeout)
        if expected is not None and actual != expected:
            raise DataError(
                f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; "
                f"the download is corrupt or the file changed upstream - retry, or fetch it by "
                f"hand into {dest.parent}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _pick_checksum(sha256: str | None, md5: str | None) -> tuple[str, str | None]:
    """The algorithm to use (SHA-256 preferred) and the expected lower-case hex digest."""
    if sha256:
        return "sha256", sha256.strip().lower()
    if md5:
        return "md5", md5.strip().lower()
    return "sha256", None


def _stream(url: str, out, algorithm: str, timeout: float) -> str:
    """Copy the body of ``url`` into ``out`` chunk by chunk; return its hex digest."""
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot download {url}: {exc}; check the network (or proxy settings), or fetch "
            f"the file by hand"
        ) from exc
    return digest.hexdigest()


def safe_extract_tar(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Extract a (possibly compressed) tar archive into ``target``, refusing unsafe members.

    Absolute paths, ``..`` escapes, links pointing outside ``target`` and device or fifo
    members raise :class:`DataError` before anything is written; so does a corrupt or
    truncated archive. Python's ``filter="data"`` is applied too where available.
    """
    archive = Path(archive)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, target, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(target, members=members)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(
            f"cannot extract {archive}: corrupt or truncated archive ({exc}); delete it and "
            f"download it again"
        ) from exc


def _check_member(member: tarfile.TarInfo, target: Path, archive: Path) -> None:
    """Raise DataError unless ``member`` stays inside ``target`` once extracted."""
    base = os.path.realpath(target)
    name = member.name
    if _is_absolute(name) or not _within(base, os.path.join(base, name)):
        _refuse(archive, name, "its path escapes the target folder")
    if member.issym():
        if _is_absolute(member.linkname):
            _refuse(archive, name, f"it is a symlink to the absolute path {member.linkname}")
        link_dir = os.path.dirname(os.path.join(base, name))
        if not _within(base, os.path.join(link_dir, member.linkname)):
            _refuse(archive, name, f"it is a symlink pointing outside ({member.linkname})")
    elif member.islnk():
        if _is_absolute(member.linkname) or not _within(base, os.path.join(base, member.linkname)):
            _refuse(archive, name, f"it is a hard link pointing outside ({member.linkname})")
    elif not (member.isfile() or member.isdir()):
        _refuse(archive, name, "it is a device, fifo or other special file")


def _is_absolute(path: str) -> bool:
    """Absolute on POSIX, or rooted / drive-lettered as on Windows."""
    drive = len(path) > 1 and path[0].isalpha() and path[1] == ":"
    return os.path.isabs(path) or path.startswith(("/", "\\")) or drive


def _within(base: str, path: str) -> bool:
    """Whether ``path`` (resolved) lies inside the resolved folder ``base``."""
    resolved = os.path.realpath(path)
    return os.path.commonpath([base, resolved]) == base


def _refuse(archive: Path, name: str, why: str) -> None:
    raise DataError(
        f"refusing to extract {archive}: member {name!r} is unsafe ({why}); the archive is not "
        f"the official one - delete it and download it again"
    )
