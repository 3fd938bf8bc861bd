"""Atomic file writes: a temporary file in the target's folder, fsync, then a rename.

A reader never sees a partial file: it finds either the old file or the complete new one. No torch
import (checkpoints, CSV tables, maps and the rating widget's files all go through here).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

#: errno values that mean "no room": a full disk, a quota, a file too large for the file system.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write failed for lack of space; the previous file (if any) is unchanged."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises
    ------
    DiskFullError
        No space left (full disk, quota): the message names the file and says that the previous
        version is unchanged; no temporary file is left behind.
    IsADirectoryError
        ``path`` is a folder (nothing is written).
    OSError
        Any other failure to write, also with the previous file unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, "a folder, not a file: give the name of a file to write in it", str(path)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with _suppress():
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise DiskFullError(
                exc.errno,
                f"Not enough disk space to write {path} ({os.strerror(exc.errno)}). "
                + ("The previous file is unchanged. " if path.exists() else "Nothing was written. ")
                + "Free some space or choose another folder.",
            ) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True
