"""Videos from URLs, read through a local cache of bounded size (OpenCV decodes files, not streams).

The cache is a folder (default ``<user cache dir>/inputs``, :func:`hamer.configs.user_cache_dir`) of whole copies,
one per object version (named by a hash of its URL, size and last-modified time, so a changed object is fetched
again). A copy is written beside its name and renamed when complete: a kill mid-download leaves no copy, only a
``.part`` file that the next fetch into the cache removes. One thread of one process on this machine fetches a
copy at a time (an exclusive ``flock`` on ``NAME.lock``): the others wanting it (the segments of one video, say)
wait for it, then read it, rather than fetching it again. Before a fetch, the least recently used copies go until
the new one fits in ``max_bytes``; a copy in use (held with a shared ``flock`` by any process on this machine: Ray
workers share it) is never removed. An object larger than the whole cache is refused (InputError naming it and
``--cache-size``); when the copies in use leave too little room, the cache is over its size until they are done
(logged).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .configs import user_cache_dir
from .pidlock import pid_alive
from .run_types import InputError
from .sizes import format_bytes
from .storage import filesystem, redact, stat

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 20 * 10**9  # --cache-size default: 20 GB
_PART = ".part"
_LOCK = ".lock"
_FETCHES = itertools.count()  # makes each fetch's .part name its own, in this process


def cache_dir() -> Path:
    """The default cache folder: ``<user cache dir>/inputs``."""
    return user_cache_dir() / "inputs"


class InputCache:
    """The local copies of URL inputs, at most ``max_bytes`` together (see the module)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, folder: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self.folder = Path(folder) if folder is not None else cache_dir()

    @contextmanager
    def local(self, url: str) -> Iterator[Path]:
        """A local copy of the object ``url`` for the block (fetched unless cached); InputError when it cannot
        be read or is larger than the cache."""
        version = stat(url)
        if version is None:
            raise InputError(f"{redact(url)}: cannot be read (no such object, or no access)")
        size = version[0]
        if size > self.max_bytes:
            raise InputError(f"{redact(url)}: {format_bytes(size)}, larger than the input cache (--cache-size "
                             f"{format_bytes(self.max_bytes)})")
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:32]
        suffix = "".join(c for c in Path(url.split("?", 1)[0]).suffix if c.isalnum() or c == ".")[:8]
        path = self.folder / f"{digest}{suffix}"
        while True:
            fd = self._open_shared(path)
            if fd is not None:
                break
            with _held(path.with_name(path.name + _LOCK)):  # another fetch of it is waited for
                if not path.exists():
                    self._fetch(url, path, size)
        try:
            os.utime(path)  # most recently used
            yield path
        finally:
            os.close(fd)

    @staticmethod
    def _open_shared(path: Path) -> int | None:
        """``path`` opened and held shared (in use), or None when there is no complete copy."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # removed by an eviction as it was opened
            os.close(fd)
            return None
        return fd

    def _fetch(self, url: str, path: Path, size: int) -> None:
        self._make_room(size)
        part = path.with_name(f"{path.name}.{os.getpid()}-{next(_FETCHES)}{_PART}")
        fs, where = filesystem(url)
        try:
            with fs.open(where, "rb") as source, open(part, "wb") as target:
                shutil.copyfileobj(source, target, 8 << 20)
            os.replace(part, path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{redact(url)}: cannot be fetched ({exc})") from None
        finally:
            part.unlink(missing_ok=True)
        log.info("fetched %s (%s) into the input cache", redact(url), format_bytes(size))

    def _make_room(self, size: int) -> None:
        """Remove the least recently used copies not in use (and dead fetches' parts) until ``size`` more fits."""
        entries = []
        for entry in self.folder.iterdir():
            with contextlib.suppress(OSError):
                if entry.name.endswith(_LOCK):
                    continue
                if entry.name.endswith(_PART):
                    if not _pid_alive_part(entry):
                        entry.unlink()
                    continue
                st = entry.stat(follow_symlinks=False)
                entries.append((st.st_mtime_ns, st.st_size, entry))
        total = sum(e[1] for e in entries)
        for _, bytes_, entry in sorted(entries):
            if total + size <= self.max_bytes:
                return
            if _remove_unused(entry):
                total -= bytes_
        if total + size > self.max_bytes:
            log.warning("the input cache %s is over its size (%s) while copies in use are kept", self.folder,
                        format_bytes(self.max_bytes))


@contextmanager
def _held(lock: Path) -> Iterator[None]:
    """The lock file ``lock`` held exclusively (``flock``: by one open file, so by one thread) for the block."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_unused(entry: Path) -> bool:
    """Remove ``entry`` (and its lock file) unless a process holds it (in use); whether it was removed."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    try:
        entry.unlink()
        entry.with_name(entry.name + _LOCK).unlink(missing_ok=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _pid_alive_part(entry: Path) -> bool:
    """Whether the fetch that writes the ``.part`` file ``entry`` (``NAME.<pid>-<n>.part``) may still be running."""
    pid = entry.name[: -len(_PART)].rsplit(".", 1)[-1].split("-")[0]
    return not pid.isdigit() or pid_alive(int(pid))
