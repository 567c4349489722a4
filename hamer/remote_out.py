"""An output folder in object storage (``--out s3://bucket/prefix``): its manifest, its lock, and the upload of
each unit's files before its record. Object stores have no append and no ``flock``; this is their design.

*Files.* A unit's files are written whole into a local staging folder (as into a local ``--out``), then uploaded,
each object a single complete PUT (or a multipart upload, which the store shows only when complete); only then is
its record published. A record therefore implies its files. A run killed mid-upload leaves its unit's ``started``
record as the latest: the next run runs that unit again (first, alone: :mod:`hamer.plan`), replacing whatever
objects it had uploaded, which no record names and no run takes as results. Staging folders of dead runs on this
machine are removed by the next run's (``<user cache dir>/staging``).

*Manifest.* ``OUT/manifest.jsonl``, the lines of a local manifest, is one object rewritten whole only when a run
starts and ends (*compaction*); in between each record is an object of its own, ``OUT/manifest.d/<run>-<n>.json``
(one PUT of a few hundred bytes per record, two records per unit). Reading the manifest: one GET of
``manifest.jsonl``, one LIST and one GET per record object of runs that ended without compacting (killed); the
record objects are removed once ``manifest.jsonl`` holds them. Record keys sort in the order written (the run's
start in ns, then a counter), so the latest record of an input is the last, as on disk.

*Lock.* ``OUT/.hamer-lock`` names its holder (pid, host, start, lease end) and is created with a conditional PUT
(``If-None-Match``, fsspec's ``mode="create"``): of runs starting at once, exactly one creates it. The holder
renews its lease every :data:`RENEW_S`; a lock whose holder is a dead process on this host, or whose lease ended
:data:`LEASE_S` after its last renewal (a run killed elsewhere), is taken over (logged). On a store without
conditional writes the lock is only checked, then written (logged): two runs starting at the same moment are not
kept apart there. Clocks of the machines are assumed to agree within the lease.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .configs import user_cache_dir
from .manifest import LOCK, MANIFEST, FolderBusy, ManifestError, RunError, take_record
from .pidlock import describe, holder_alive, pid_alive
from .storage import StorageError, filesystem, is_url, redact

log = logging.getLogger(__name__)

RECORDS = "manifest.d"
LEASE_S = 300.0  # a lock not renewed for this long is a dead run's
RENEW_S = 60.0


def _store(url: str) -> tuple[Any, str]:
    try:
        fs, root = filesystem(url)
    except StorageError as exc:
        raise RunError(str(exc)) from None
    return fs, root.rstrip("/")


class ObjectManifest:
    """The manifest of an output URL (see the module): :meth:`load`, :meth:`append`, :meth:`close`, as
    :class:`hamer.manifest.Manifest`; thread-safe. Use it holding the :class:`ObjectLock`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = _store(url)
        self.path, self.records = f"{root}/{MANIFEST}", f"{root}/{RECORDS}"
        self._run = f"{time.time_ns():020d}-{os.getpid()}"
        self._count = 0
        self._text = ""
        self._mine: list[tuple[str, str]] = []  # (key, line) of this run's records
        self._lock = threading.Lock()
        self.segments: dict[tuple[str, int, int], dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of each input; the record objects of earlier runs are compacted into
        ``manifest.jsonl`` first. The latest record of each video segment goes to :attr:`segments`, by (input,
        start, end), as :meth:`hamer.manifest.Manifest.load` does."""
        self.fs.invalidate_cache()  # what this process listed before may have changed since
        try:
            text = self.fs.cat_file(self.path).decode("utf-8", "replace") if self.fs.exists(self.path) else ""
            keys = sorted(self.fs.find(self.records)) if self.fs.exists(self.records) else []
            lines = [self.fs.cat_file(k).decode("utf-8", "replace").strip() for k in keys]
        except OSError as exc:
            raise RunError(f"cannot read the manifest in {redact(self.url)}: {exc}") from None
        self._text = text if not text or text.endswith("\n") else text + "\n"
        if keys:
            self._compact([*zip(keys, lines, strict=True)])
        records: dict[str, dict[str, Any]] = {}
        self.segments = {}
        for number, line in enumerate(self._text.splitlines(), 1):
            if not take_record(line, records, self.segments):
                log.warning("%s line %d is not a record; ignored", redact(self.url) + "/" + MANIFEST, number)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Publish ``record`` as an object of its own; ManifestError when it cannot be."""
        line = json.dumps(record)
        with self._lock:
            self._count += 1
            key = f"{self.records}/{self._run}-{self._count:09d}.json"
            try:
                self.fs.pipe_file(key, line.encode())
            except OSError as exc:
                raise ManifestError(f"cannot write the manifest in {redact(self.url)}: {exc}; the run stops (the "
                                    "units finished so far keep their records)") from None
            self._mine.append((key, line))

    def close(self) -> None:
        """Compact this run's records into ``manifest.jsonl`` (left as objects, for the next run, if it fails)."""
        with self._lock:
            mine, self._mine = self._mine, []
            if mine:
                try:
                    self._compact(mine)
                except (OSError, RunError) as exc:
                    log.warning("%s: the manifest's records stay as objects under %s (%s)", redact(self.url),
                                RECORDS, exc)

    def _compact(self, entries: Sequence[tuple[str, str]]) -> None:
        """``manifest.jsonl`` rewritten with ``entries``' lines at its end, then their objects removed."""
        text = self._text + "".join(line + "\n" for _, line in entries if line)
        try:
            self.fs.pipe_file(self.path, text.encode())
            self._text = text
            self.fs.rm([k for k, _ in entries])
        except OSError as exc:
            raise RunError(f"cannot write the manifest in {redact(self.url)}: {exc}") from None


class ObjectLock:
    """The lock of a run on an output URL (``OUT/.hamer-lock``, see the module); a context manager. FolderBusy,
    naming the holder, when another live run has it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = _store(url)
        self.path = f"{root}/{LOCK}"
        self._body = {"pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lease(self) -> bytes:
        return json.dumps({**self._body, "expires": time.time() + LEASE_S}).encode()

    def __enter__(self) -> ObjectLock:
        for _ in range(2):  # once more after taking over a dead run's lock
            try:
                self.fs.pipe_file(self.path, self._lease(), mode="create")
                break
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not _dead(holder):
                    raise FolderBusy(f"{redact(self.url)} is in use by another run ({describe(holder)}); wait for it "
                                     "to end or choose another --out") from None
                log.warning("%s: took over the lock of a run that ended without releasing it (%s)",
                            redact(self.url), describe(holder or {}))
                self.fs.rm_file(self.path)
            except (TypeError, NotImplementedError, ValueError):  # no conditional writes on this store
                log.warning("%s: this store has no conditional writes; the lock is checked, then written",
                            redact(self.url))
                holder = self._holder() if self.fs.exists(self.path) else None
                if holder is not None and not _dead(holder):
                    raise FolderBusy(f"{redact(self.url)} is in use by another run ({describe(holder)}); wait for "
                                     "it to end or choose another --out") from None
                self.fs.pipe_file(self.path, self._lease())
                break
            except OSError as exc:
                raise RunError(f"cannot write the lock {redact(self.url)}/{LOCK}: {exc}") from None
        else:
            raise FolderBusy(f"{redact(self.url)} is in use by another run (it took the lock as this one did)")
        self._thread = threading.Thread(target=self._renew, name="hamer-lease", daemon=True)
        self._thread.start()
        return self

    def _holder(self) -> dict[str, Any] | None:
        """What the lock object says (``{}`` when unreadable); None when it is gone."""
        try:
            holder = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if (self._holder() or {}).get("pid") != self._body["pid"]:
                    log.error("%s: the lock was taken by another run", redact(self.url))
                    return
                self.fs.pipe_file(self.path, self._lease())
            except OSError as exc:
                log.warning("%s: cannot renew the lock (%s)", redact(self.url), exc)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.fs.rm_file(self.path)
        except OSError as error:
            log.warning("%s: cannot remove the lock (%s); it lapses %g s after its last renewal",
                        redact(self.url), error, LEASE_S)


def _dead(holder: dict[str, Any]) -> bool:
    """Whether the run a lock names has ended: a dead process on this host, or a lease ended."""
    if holder.get("host") == socket.gethostname() and not holder_alive(holder):
        return True
    try:
        return float(holder.get("expires", 0)) < time.time()
    except (TypeError, ValueError):
        return True


def existing(url: str) -> Callable[[str], bool]:
    """Whether a name (a file, or a folder of files, relative to the URL) is in the output URL: one listing, then
    lookups."""
    fs, root = _store(url)
    fs.invalidate_cache()
    try:
        found = fs.find(root, withdirs=False) if fs.exists(root) else []
    except OSError as exc:
        raise RunError(f"cannot list {redact(url)}: {exc}") from None
    names = set()
    for path in found:
        parts = path[len(root) + 1:].split("/")
        names.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return names.__contains__


class Upload:
    """A local staging folder (:attr:`folder`) whose unit files :meth:`publish` uploads into an output URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = _store(url)
        staging = user_cache_dir() / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        for old in staging.iterdir():  # a killed run's (the name starts with its pid)
            pid = old.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.folder = staging / f"{os.getpid()}-{time.time_ns()}"
        self.folder.mkdir()

    def publish(self, files: Sequence[str]) -> None:
        """Upload the staged ``files`` (a folder: its files), then remove them here; OSError naming the object."""
        for name in files:
            local = self.folder / name
            parts = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
            for part in parts:
                remote = f"{self.root}/{part.relative_to(self.folder).as_posix()}"
                try:
                    self.fs.put_file(str(part), remote)
                except OSError as exc:
                    raise OSError(f"cannot upload {redact(self.url)}/{part.relative_to(self.folder).as_posix()}: "
                                  f"{exc}") from None
        self.discard(files)

    def discard(self, files: Sequence[str]) -> None:
        """Remove the staged ``files`` (uploaded, or of a failed unit)."""
        for name in files:
            local = self.folder / name
            if local.is_dir() and not local.is_symlink():
                shutil.rmtree(local, ignore_errors=True)
            else:
                local.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def staged(out: str | os.PathLike) -> tuple[Path, Upload | None]:
    """(the folder a unit's files are written into, the Upload that sends them on) for an output folder or URL."""
    if is_url(out):
        upload = Upload(os.fspath(out))
        return upload.folder, upload
    return Path(out), None
