"""Files written whole or not at all: a temporary path or folder beside the destination, moved over it with
``os.replace`` once complete (removed on an error or an interrupt), and the permissions of a new file."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".hamer-tmp-"  # temporary files: short ASCII names whatever the destination's (then os.replace)
_temp_counter = itertools.count()
_UMASK_LOCK = threading.Lock()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) that replaces ``path`` if the block completes.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` left as it was.
    """
    path = Path(path)
    suffix = path.suffix if path.suffix[1:].isascii() and path.suffix[1:].isalnum() else ""
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_counter)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def naming(path: Path | None) -> Iterator[None]:
    """Name ``path`` in an OSError of the block that names no file (a full disk while writing it: EFBIG, ENOSPC)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or path is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` that replaces ``path`` (an earlier one removed) if the block completes;
    removed with its files otherwise."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_counter)}")
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def give_default_permissions(path: Path) -> None:
    """Give ``path`` the permissions of any new file (``0o666`` less the umask): libraries that write weights
    (safetensors, onnx) create their files private (0600)."""
    with _UMASK_LOCK:  # reading the umask means setting it
        umask = os.umask(0)
        os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
