"""Files that kdgen writes: the temporary files of atomic writes, and output folders.

A temporary file is created with the mode a plain ``open(path, "w")`` would give the
file it replaces (``tempfile.mkstemp`` would give 0600): so results on a shared cluster
are as readable as the user's umask and the folder's default ACL say.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from kdgen.errors import RunDirError

PLAIN_FILE_MODE = 0o666  # what open() asks for; the umask (or default ACL) takes from it


def create_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new hidden file ``.NAME.<random><suffix>`` beside ``path``, opened for writing.

    Its mode is ``path``'s own when ``path`` exists (as open() keeps it), else 0666 less
    the umask. An OSError names ``path``, not the temporary file.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PLAIN_FILE_MODE)
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from None
        if mode is not None:
            os.fchmod(handle, mode)
        return handle, temp


def check_folder_path(path: Path, option: str = "--out") -> None:
    """RunDirError when ``path`` exists and is not a folder; ``option`` names where the
    path came from in the message."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path} is a file, not a folder; choose a folder path")


def make_folder(path: Path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); a RunDirError in one line when
    it cannot be: ``option`` names where the path came from, e.g. ``--out``."""
    check_folder_path(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = "a part of the path is a file"
        raise RunDirError(
            f"cannot create {option} {path} ({reason}); choose another path"
        ) from None
    return path
