"""One download per data folder: a lock file naming its holder (pid and host), and the removal of what killed
downloads left (their staging folders).

The lock is ``DATA/.download/lock``, held with ``flock`` while a download runs; the kernel releases it when its
process dies, however it dies, so the lock of a dead process is taken over by the next download. Its content
(pid, host, start time) names the holder in the refusal a second download gets. Staging folders are named
``staging-PID-*`` after the process that unpacks into them. Where ``fcntl`` is missing (Windows) no lock is held.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from .common import WORK_DIR, DownloadError

log = logging.getLogger(__name__)

LOCK_FILE = "lock"
STAGING_PREFIX = "staging-"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


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
    try:
        import fcntl
    except ImportError:
        log.warning("no file locking on this system: run one `hamer download` per data folder at a time")
        yield []
        return
    path = work / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DownloadError(f"another `hamer download` ({holder}) is installing into {root}; wait for it to "
                                f"finish (its lock: {path})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        yield remove_dead_staging(work)
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _holder(fd: int) -> str:
    """"pid N on HOST since TIME" from a lock file's content, or what is known."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(record['pid'])} on {record['host']} since {record['started_utc']}"
    except (OSError, ValueError, KeyError, TypeError):
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
