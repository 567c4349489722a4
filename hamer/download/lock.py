"""One download per data folder: a lock file naming its holder (pid and host), and the removal of what killed
downloads left (their staging folders).

The lock is ``DATA/.download/lock``, a :class:`hamer.pidlock.PidLock` (the same lock as a run's on its output
folder), held while a download runs: a dead process's lock is taken over by the next download, and a live one's
content (pid, host, start time) names the holder in the refusal a second download gets. Staging folders are named
``staging-PID-*`` after the process that unpacks into them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..pidlock import LockBusy, PidLock, pid_alive
from .common import WORK_DIR, DownloadError

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
STAGING_PREFIX = "staging-"


def staging_prefix() -> str:
    """The name prefix of this process's staging folders."""
    return f"{STAGING_PREFIX}{os.getpid()}-"


@contextlib.contextmanager
def hold(root: Path) -> Iterator[list[Path]]:
    """Hold the download lock of data folder ``root`` (its work folder is created), then remove what downloads
    killed earlier left (:func:`remove_dead_staging`; yields the folders removed); DownloadError naming the holder
    when another process holds it."""
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    path = work / LOCK_FILE
    lock = PidLock(path)
    try:
        lock.acquire()
    except LockBusy as busy:
        raise DownloadError(f"another `hamer download` ({_describe(busy.holder)}) is installing into {root}; wait "
                            f"for it to finish (its lock: {path})") from None
    try:
        yield remove_dead_staging(work)
    finally:
        lock.release()


def _describe(holder: dict[str, Any]) -> str:
    """"pid N on HOST since TIME" from a lock file's content, or what is known."""
    try:
        return f"pid {int(holder['pid'])} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def remove_dead_staging(work: Path) -> list[Path]:
    """Remove the staging folders in ``work`` whose process is gone (the caller holds the lock); returns them.

    A folder named after a live process other than this one is left alone (a pid reused, or a process on another
    host sharing the folder): it is logged.
    """
    removed = []
    for folder in sorted(work.glob(STAGING_PREFIX + "*")):
        pid_text = folder.name.removeprefix(STAGING_PREFIX).split("-")[0]
        pid = int(pid_text) if pid_text.isdigit() else None  # None: an older version's unnamed staging folder
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            log.warning("left %s alone: its process %d is alive", folder, pid)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, left by a download that was killed", folder)
        removed.append(folder)
    return removed


def remove_leftovers(root: Path) -> list[Path]:
    """What :func:`remove_dead_staging` removes in data folder ``root``, when no download holds it (else nothing)."""
    if not (root / WORK_DIR).is_dir():
        return []
    try:
        with hold(root) as removed:
            pass
    except DownloadError:
        return []
    with contextlib.suppress(OSError):
        (root / WORK_DIR).rmdir()
    return removed
