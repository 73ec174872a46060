"""Crash-safe file writing, shared by the model store and the dataset store.

Write under a dot-prefixed temp name in the same directory, fsync, rename
into place, fsync the directory (pip's ``adjacent_tmp_file`` + ``replace``).
A reader sees the old state or the new one, never half of either.
Everything written is readable by other users: the API may run as another
user than the trainer, and ``mkstemp``'s 0600 would lock it out.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"
FILE_MODE = 0o644
DIR_MODE = 0o755


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def new_file(path: Path, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """Create ``path`` (it must not exist) and yield it open for writing; fsynced when the block
    ends. ``mode``: 0644 unless the file is a secret (a signing key, an archive holding one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # the umask must not make it private
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_new_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create ``path`` (it must not exist) with ``data``, fsynced, mode 0644 (or ``mode``)."""
    with new_file(path, mode) as handle:
        handle.write(data)


def fsync_file(path: Path) -> None:
    os.chmod(path, FILE_MODE)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def replacing(path: Path, mode: int = FILE_MODE, tmp: Path | None = None) -> Iterator[BinaryIO]:
    """Yield a new temp file beside ``path`` open for writing; when the block ends, fsync it and
    rename it over ``path`` (then fsync the directory). On any error the temp file is removed
    and ``path`` is as it was. ``tmp``: the temp file's name, when not ``.tmp-<name>-<random>``."""
    if tmp is None:
        tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}"
    try:
        with new_file(tmp, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Atomically replace ``path``'s content with ``data`` (mode 0644, or ``mode``)."""
    with replacing(path, mode) as handle:
        handle.write(data)


@contextmanager
def new_directory(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success fsync and rename it to ``final``.

    On any error the temp directory is removed and ``final`` never appears.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tmp = parent / f"{TMP_PREFIX}{final.name}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=DIR_MODE)
    os.chmod(tmp, DIR_MODE)  # mkdir's mode is narrowed by the umask
    try:
        yield tmp
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temp_leftovers(directory: Path, older_than_s: float, now: float) -> list[str]:
    """Delete ``.tmp-*`` entries a writer that died mid-write left in ``directory``."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if now - entry.stat().st_mtime < older_than_s:
                continue
        except FileNotFoundError:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def write_durably(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(path)`` (e.g. joblib.dump), then fsync what it wrote. A failure leaves the
    partial file for the caller's temp directory to remove (``new_directory``)."""
    write(path)
    fsync_file(path)
