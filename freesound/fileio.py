"""File writes that a killed process cannot leave half done, and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    """The process's file-creation mask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file lives in the destination folder so the rename never crosses filesystems.
    On an exception the temporary file is removed and ``path`` is untouched; an ``OSError``
    naming no file (a full disk) is raised again naming ``path``.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _naming(path):
            yield Path(tmp)
            # mkstemp makes the file private (0600); the result gets the mode open() would give it.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _naming(path: Path):
    """Make an ``OSError`` about writing ``path`` name ``path``: a write's ENOSPC names no file,
    and mkstemp's errors name the hidden temporary file. The one-sentence message
    (``freesound.errors.file_error_sentence``) then names the file the user asked for and its
    folder. An error naming another file (a parent folder that cannot be made) is left as it is.
    """
    try:
        yield
    except OSError as error:
        named = None if error.filename is None else Path(error.filename)
        about_tmp = named is not None and named.parent == path.parent and named.name.startswith(f".{path.name}.")
        if error.errno is None or not (named is None or about_tmp):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def atomic_write_csv(path, frame, *, index: bool = False) -> None:
    """``DataFrame.to_csv`` through a temporary file (without the index unless asked)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def file_sha256(path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
