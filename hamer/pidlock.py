"""A lock file that names its holder: one process at a time in an output folder (a run) or a data folder (a download).

The file is held with ``flock`` and holds its holder's pid, host and start time (JSON). The kernel releases the
lock when the process dies, however it dies, so a lock a dead process left is taken over; its content names the
holder in a second process's refusal. The file is never opened through a symbolic link (``O_NOFOLLOW``). On a file
system without ``flock`` the pid it names decides (logged); on a system without ``fcntl`` no lock is held (logged).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

log = logging.getLogger(__name__)

MAX_HOLDER = 4096  # bytes of a lock file read: a holder's JSON is under 200


class LockBusy(Exception):
    """Another live process holds the lock; ``holder``: what its file says (``{}`` when it has written nothing)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(str(holder))
        self.holder = holder


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):  # another user's; a pid that is no number
        return True
    return True


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process a lock names may be alive: on this host, its process exists; on another, it cannot be
    told."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        return pid_alive(int(holder.get("pid")))  # no pid (None): cannot tell
    except (ValueError, TypeError, OverflowError):
        return True


class PidLock:
    """The lock on file ``path`` (see the module): :meth:`acquire`, then :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        """Hold the lock and write this process into its file; returns what the file named before (a dead holder,
        ``{}`` if none). LockBusy when a live process holds it; OSError when the file cannot be opened (a link,
        a folder not writable)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            if fcntl is None:
                log.warning("no file locking on this system: run one process on %s at a time", self.path.parent)
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = read_holder(fd)
                unsupported = exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
                if unsupported and not (holder and holder_alive(holder)):  # no flock here: the pid decides
                    log.warning("%s: no flock on this file system (%s); the lock relies on the pid it names",
                                self.path, exc.strerror)
                    break
                os.close(fd)
                raise LockBusy(holder) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder before removed the file as we opened it: lock the new one
        holder = read_holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        self._fd = fd
        return holder

    def release(self) -> None:
        """Remove the file and let the lock go (nothing when not held)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def describe(holder: dict[str, Any]) -> str:
    """A holder as messages name it: "pid N on HOST, since TIME"."""
    if not holder:
        return "pid and host unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def read_holder(fd: int) -> dict[str, Any]:
    """What the lock file open at ``fd`` says of its holder; ``{}`` when it says nothing readable."""
    try:
        holder = json.loads(os.pread(fd, MAX_HOLDER, 0))  # empty: a ValueError too
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
