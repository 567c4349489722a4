"""The bookkeeping of an output folder: its manifest, the lock a run holds on it, the temporary files of dead runs.

``OUT/manifest.jsonl`` has one JSON line per event, flushed and fsynced as it is written; for each input the latest
line decides. A unit gets a ``started`` line before it runs and a finished line (``done``, ``truncated``,
``failed``) when it ends; the fields are in :mod:`hamer.corpus`. ``OUT/.hamer-lock`` is held (``flock``) by the run
writing into the folder and names it (pid, host, start time); the kernel releases it when that process dies, however
it dies, so a lock left by a dead run is taken over. Nothing is written through a symbolic link: a manifest or lock
that is a link is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
from pathlib import Path
from typing import IO, Any

from .files import TEMP_PREFIX
from .pidlock import LockBusy, PidLock, describe

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
LOCK = ".hamer-lock"
# The temporary files and folders of hamer.files.atomic_path / atomic_folder: ".hamer-tmp-<pid>-<n><suffix>".
TEMP_FILE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)-\d+(\.[A-Za-z0-9]+)?$")
SEGMENT_PARTS = ".hamer-segments"  # OUT/.hamer-segments/NAME/: the part files of a video's segments
# The error of a unit whose process died while running it (a native crash, an out-of-memory kill).
DIED = "the process died while running it"


class RunError(Exception):
    """The output folder cannot be used for this run (nothing was written)."""


class OverwriteError(RunError):
    """The run would overwrite results it was not asked to replace."""


class FolderBusy(RunError):
    """Another run holds the output folder."""


class ManifestError(RunError):
    """The manifest cannot be written: the run stops (the units finished so far keep their records)."""


def this_run() -> dict[str, Any]:
    """The ``pid`` and ``host`` fields of the records this process writes."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def refuse_link(path: Path, what: str, error: type[Exception] = RunError) -> None:
    """``error`` when ``path`` is a symbolic link (writing through it could write outside the output folder)."""
    if path.is_symlink():
        raise error(f"{path} is a symbolic link (to {os.readlink(path)}): the {what} is not written through "
                    "links; remove it or choose another --out")


def take_record(line: str, records: dict[str, dict[str, Any]],
                segments: dict[tuple[str, int, int], dict[str, Any]]) -> bool:
    """Put a manifest line's record into ``records`` (by input) or, a video segment's, ``segments`` (by (input,
    start, end)), replacing an earlier one; False when the line is not a record."""
    try:
        record = json.loads(line)
        if record.get("segment") is None:
            records[record["input"]] = record
        else:
            start, end = record["segment"]
            segments[record["input"], int(start), int(end)] = record
    except (ValueError, KeyError, TypeError, AttributeError):  # (AttributeError: JSON, not an object)
        return False
    return True


class Manifest:
    """``OUT/manifest.jsonl``: one JSON line per record, each flushed and fsynced as it is written (thread-safe)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / MANIFEST
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self.segments: dict[tuple[str, int, int], dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of each input; a torn last line (a kill while writing) is ignored. The latest record
        of each video segment goes to :attr:`segments`, by (input, start, end)."""
        records: dict[str, dict[str, Any]] = {}
        self.segments = {}
        refuse_link(self.path, "manifest")
        if not self.path.is_file():
            return records
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise RunError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not take_record(line, records, self.segments):
                log.warning("%s line %d is not a record (a run killed while writing it?); ignored", self.path,
                            number)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line, on disk when this returns; ManifestError when it cannot be."""
        with self._lock:
            try:
                self._write(json.dumps(record) + "\n")
            except OSError as exc:
                raise ManifestError(f"cannot write {self.path}: {exc.strerror or exc}; the run stops (the units "
                                    "recorded so far are kept)") from None

    def _write(self, line: str) -> None:
        if self._file is None:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
            size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line of a killed run: end it
                line = "\n" + line
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:  # an unwritable manifest already stopped the run
                    pass
                self._file = None


class FolderLock:
    """The lock of a run on its output folder (``OUT/.hamer-lock``, a :class:`hamer.pidlock.PidLock`); a context
    manager. FolderBusy, naming the holder, when another live run has it; a lock a dead run left is taken over
    (logged)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK
        self._lock = PidLock(self.path)

    def __enter__(self) -> FolderLock:
        refuse_link(self.path, "lock")
        try:
            holder = self._lock.acquire()
        except LockBusy as busy:
            raise FolderBusy(f"{self.path.parent} is in use by another run ({describe(busy.holder)}); wait for it "
                             "to end or choose another --out") from None
        except OSError as exc:  # a link put there since (ELOOP), a folder not writable...
            raise RunError(f"cannot open {self.path}: {exc.strerror}") from None
        if holder:
            log.warning("%s: took over the lock of a run that ended without releasing it (%s)", self.path.parent,
                        describe(holder))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


def clean_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files and folders (``.hamer-tmp-*``) in ``out``, its overlay folders and its videos'
    segment part folders (``.hamer-segments/NAME``: the part files themselves stay until their video is joined);
    returns those removed (one that cannot be is logged and left).

    Call it holding the folder's lock: then no other run is writing, and every one of them is a dead run's (or
    this run's own, between its units)."""
    removed = []
    parts = out / SEGMENT_PARTS
    folders = [out, *(p for p in out.glob("*.overlay") if p.is_dir() and not p.is_symlink())]
    if parts.is_dir() and not parts.is_symlink():
        folders += [p for p in parts.iterdir() if p.is_dir() and not p.is_symlink()]
    for folder in folders:
        for path in folder.iterdir():
            if not TEMP_FILE.match(path.name):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:  # another user's, in a shared folder: left, and said
                log.warning("cannot remove %s, left by an interrupted run: %s", path, exc.strerror or exc)
                continue
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) and folder(s) of an interrupted run in %s", len(removed), out)
    return removed
