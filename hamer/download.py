"""Installing HaMeR's weights: download the demo data, verify it, extract what inference needs.

:func:`download` fetches ``hamer_demo_data.tar.gz`` (HTTPS; resumed with an HTTP Range request after an interruption,
retried on a dropped connection), or takes a tarball already on disk, and installs into the data folder only what
inference reads (:data:`INSTALLED`; the ViTPose checkpoints are left out). Safety and integrity:

- a member with an absolute path, ``..``, a link, a device or FIFO refuses the whole archive (nothing is written
  outside the data folder, nothing is installed); files are written by this code, never by ``tarfile.extract``;
- the whole archive is read and its gzip CRC checked before anything is installed; files are staged inside the data
  folder and renamed into place only then, so a corrupt or truncated archive leaves the folder as it was;
- nothing downloaded is unpickled here (the checkpoint is later read by :mod:`hamer.checkpoint`'s safe loader);
- :data:`MANIFEST_FILE` in the data folder records each installed file's size and sha256 (:func:`verify_installed`).

Progress goes to an optional ``progress(phase, done_bytes, total_bytes)`` callback; this module only logs.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO
from urllib.parse import urlsplit

from . import configs
from .outputs import atomic_path
from .version import __version__

log = logging.getLogger(__name__)

DEFAULT_URL = "https://www.cs.utexas.edu/~pavlakos/hamer/data/hamer_demo_data.tar.gz"  # fetch_demo_data.sh's
ARCHIVE_NAME = "hamer_demo_data.tar.gz"
ARCHIVE_ROOT = "_DATA"  # the archive's top folder; its content goes into the data folder
INSTALLED = (configs.CHECKPOINT_FILE, configs.CONFIG_FILE, configs.MEAN_PARAMS_FILE, configs.MANO_FILE)
MANIFEST_FILE = "hamer_manifest.json"
WORK_DIR = ".download"  # inside the data folder: the partial download and the staging folder
INSTALL_BYTES_ESTIMATE = 2_900_000_000  # the installed files of the official archive (hamer.ckpt: 2.7 GB)
CHUNK = 1 << 20

Progress = Callable[[str, int, "int | None"], None]


class DownloadError(Exception):
    """The data could not be downloaded or installed (the message says why and what to do)."""


class BadArchiveError(DownloadError):
    """The archive is corrupt, truncated or not HaMeR's demo data."""


class UnsafeArchiveError(BadArchiveError):
    """An archive member would write outside the data folder or is not a plain file or folder."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, server error)."""


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What :func:`download` installed, as written to :data:`MANIFEST_FILE`."""

    source: str
    archive_bytes: int
    archive_sha256: str
    installed_utc: str
    hamer_version: str
    files: dict[str, FileRecord]
    skipped: int = 0  # archive members left out (ViTPose, dataset config, ...)

    def write(self, root: Path) -> None:
        data = asdict(self)
        del data["skipped"]
        with atomic_path(root / MANIFEST_FILE) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, root: Path) -> Manifest | None:
        """The manifest of ``root``, None without one; ValueError naming the file when it is unreadable."""
        path = root / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            files = {str(k): FileRecord(int(v["bytes"]), str(v["sha256"])) for k, v in data.pop("files").items()}
            return cls(**data, files=files)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a valid manifest: {exc}") from None


# ------------------------------------------------------------------------------------------------- the whole job

def download(data: configs.PathLike | None = None, url: str | None = None, archive: configs.PathLike | None = None,
             *, progress: Progress | None = None, retries: int = 3, backoff_s: float = 2.0, timeout_s: float = 60.0,
             ) -> Manifest:
    """Download (``url``, default :data:`DEFAULT_URL`) or take (``archive``) HaMeR's demo data and install it.

    Args:
        data: the data folder (default :func:`hamer.configs.data_dir`), created if needed.
        url: an ``https://`` URL (``http://`` only when given so); an interrupted download resumes on the next call.
        archive: a ``.tar.gz`` on disk instead (as on machines without internet); it is left in place.
        progress: called as ``progress(phase, done, total)``, phase "download" or "extract", bytes.
        retries: automatic retries of a dropped connection per call, ``backoff_s`` doubling between them.
    Returns:
        the :class:`Manifest` written to the data folder.
    Raises:
        DownloadError (UnsafeArchiveError for a refused member): nothing is installed then.
    """
    if url is not None and archive is not None:
        raise ValueError("pass url or archive, not both")
    root = configs.data_dir(data)
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    with _exclusive(work):
        manifest = _download(root, work, url, archive, progress, retries, backoff_s, timeout_s)
    _remove_empty(work)
    return manifest


def _download(root: Path, work: Path, url: str | None, archive: configs.PathLike | None, progress: Progress | None,
              retries: int, backoff_s: float, timeout_s: float) -> Manifest:
    if archive is not None:
        source = Path(archive).expanduser().resolve()
        if not source.is_file():
            raise DownloadError(f"{source}: no such file")
        _check_space(root, min(source.stat().st_size, INSTALL_BYTES_ESTIMATE), "install the weights")
        manifest = install_archive(source, root, progress=progress, source=str(source))
    else:
        url = url or DEFAULT_URL
        path = fetch(url, work / ARCHIVE_NAME, progress=progress, retries=retries, backoff_s=backoff_s,
                     timeout_s=timeout_s)
        try:
            manifest = install_archive(path, root, progress=progress, source=_public(url))
        except BadArchiveError as exc:
            path.unlink(missing_ok=True)  # a complete but bad download: the next call starts afresh
            raise type(exc)(f"{exc} (the downloaded archive was deleted)") from None
        path.unlink()
    return manifest


@contextlib.contextmanager
def _exclusive(work: Path) -> Iterator[None]:
    """Hold an exclusive lock on the work folder (POSIX; elsewhere nothing): one download per data folder."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(work, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"another `hamer download` is installing into {work.parent}; wait for it") from None
        yield
    finally:
        os.close(fd)


def ensure_downloaded(data: configs.PathLike | None = None) -> Path:
    """The data folder, after :func:`download` into it if it holds no checkpoint (no network access otherwise)."""
    root = configs.data_dir(data)
    if not configs.data_paths(root).checkpoint.is_file():
        log.warning("no HaMeR checkpoint in %s: downloading %s (about 5.6 GB)", root, DEFAULT_URL)
        download(root, progress=_LogProgress())
    return root


class _LogProgress:
    """A progress callback that logs each phase at every tenth of the way (INFO)."""

    def __init__(self) -> None:
        self.logged: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        tenth = done * 10 // total if total else 0
        if self.logged.get(phase, -1) < tenth:
            self.logged[phase] = tenth
            log.info("%s: %s of %s bytes", phase, f"{done:,}", f"{total:,}" if total else "?")


def verify_installed(root: Path) -> dict[str, str] | None:
    """Each file of ``root``'s manifest -> "ok", "missing", or what is wrong (size, then sha256: reads every file);
    None without a manifest."""
    manifest = Manifest.read(root)
    if manifest is None:
        return None
    status = {}
    for rel, record in manifest.files.items():
        path = root / rel
        if not path.is_file():
            status[rel] = "missing"
        elif (size := path.stat().st_size) != record.bytes:
            status[rel] = f"{size} bytes, {record.bytes} expected (truncated or replaced)"
        elif sha256_file(path) != record.sha256:
            status[rel] = "its sha256 differs from the one recorded at installation (damaged or replaced)"
        else:
            status[rel] = "ok"
    return status


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- HTTP

def check_url(url: str) -> None:
    """ValueError unless ``url`` is https:// or (given explicitly, with a warning) http://."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{url!r} is not an https:// URL")
    if parts.scheme == "http":
        log.warning("%s is plain HTTP: not encrypted; only the archive's own checksums protect it", url)


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from HTTPS to anything else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        scheme = urlsplit(newurl).scheme
        if scheme not in ("https", "http") or (urlsplit(req.full_url).scheme == "https" and scheme != "https"):
            raise DownloadError(f"{req.full_url} redirects to {newurl}: refused (not HTTPS)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(url: str, dest: Path, *, progress: Progress | None = None, retries: int = 3, backoff_s: float = 2.0,
          timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` an earlier call left.

    A dropped connection is retried ``retries`` times (Range from where it stopped); the file is renamed to ``dest``
    when complete. DownloadError when it cannot finish (the ``.part`` stays for the next call).
    """
    check_url(url)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    state_path = dest.with_name(dest.name + ".part.json")
    state = _read_state(state_path)
    if state.get("url") != url:
        part.unlink(missing_ok=True)  # a partial download of something else
    opener = urllib.request.build_opener(_NoDowngrade)
    failures = 0
    while True:
        try:
            _fetch_once(opener, url, part, state_path, progress, timeout_s)
            break
        except _Transient as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                again = "resume" if have else "try again"
                raise DownloadError(f"download of {url} failed at {have:,} bytes: {exc}; run `hamer download` "
                                    f"again to {again}") from None
            delay = backoff_s * 2 ** (failures - 1)
            log.warning("download failed at %s bytes (%s); retry %d of %d in %.0f s", f"{have:,}", exc,
                        failures, retries, delay)
            time.sleep(delay)
    os.replace(part, dest)
    state_path.unlink(missing_ok=True)
    return dest


def _public(url: str) -> str:
    """``url`` without user, password, query or fragment (which may hold credentials), as the manifest records it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host, query="", fragment="").geturl()


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _fetch_once(opener: urllib.request.OpenerDirector, url: str, part: Path, state_path: Path,
                progress: Progress | None, timeout_s: float) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"hamer/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _read_state(state_path).get("validator")
        if validator:
            headers["If-Range"] = validator  # the server sends the whole file if it changed since
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            total = _content_range(exc.headers.get("Content-Range", ""))[1]
            if total == have:
                return  # the previous call had it all
            part.unlink()
            raise _Transient("the server refused to resume; starting again") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Transient(f"cannot reach {urlsplit(url).netloc}: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(str(exc) or type(exc).__name__) from None
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _Transient(f"the server resumed at byte {start}, not {have}; starting again")
        else:
            if have:
                log.info("the server does not resume this download: starting from the beginning")
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            with atomic_path(state_path) as tmp:
                tmp.write_text(json.dumps({"url": url, "validator": validator, "total": total}), encoding="utf-8")
        if total is not None:
            _check_space(part.parent, total - have + min(total, INSTALL_BYTES_ESTIMATE), f"download {url}")
        if progress:
            progress("download", have, total)
        try:
            with open(part, "ab" if have else "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    have += len(chunk)
                    if progress:
                        progress("download", have, total)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None
    if total is not None and have != total:
        raise _Transient(f"the connection closed at {have:,} of {total:,} bytes")


def _content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL); None where absent."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        start = None if span == "*" else int(span.split("-")[0])
        return start, (None if total in ("", "*") else int(total))
    except ValueError:
        return None, None


# ------------------------------------------------------------------------------------------------- the archive

def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why an archive member is refused (absolute path, ``..``, link, device, other special file), or None."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in its path"
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r})"
    if member.isdev():
        return "a device or FIFO"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    return None


def _installed_name(name: str) -> str | None:
    """The data-folder path of archive member ``name`` if it is installed (one of :data:`INSTALLED`), else None."""
    parts = PurePosixPath(name).parts  # "./_DATA/x" -> ("_DATA", "x")
    if len(parts) < 2 or parts[0] != ARCHIVE_ROOT or any(p.startswith(".") for p in parts):
        return None  # outside _DATA, or macOS metadata (fetch_demo_data.sh excludes ".*" too)
    rel = "/".join(parts[1:])
    return rel if rel in INSTALLED else None


class _HashingReader:
    """A read-only file wrapper that hashes and counts what is read through it."""

    def __init__(self, raw: BinaryIO, total: int, progress: Progress | None) -> None:
        self.raw, self.total, self.progress = raw, total, progress
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.count += len(data)
        if self.progress:
            self.progress("extract", self.count, self.total)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def install_archive(archive: Path, root: Path, *, progress: Progress | None = None, source: str | None = None,
                    ) -> Manifest:
    """Verify the whole of ``archive`` and install its :data:`INSTALLED` files into ``root``; writes the manifest.

    DownloadError (nothing installed) if it is corrupt, truncated, unsafe or not HaMeR's demo data.
    """
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=work))
    try:
        files, skipped, reader = _extract(archive, staging, progress)
        if configs.CHECKPOINT_FILE not in files:
            raise BadArchiveError(f"{archive} holds no {ARCHIVE_ROOT}/{configs.CHECKPOINT_FILE}: not HaMeR's demo "
                                "data; nothing was installed")
        for rel in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            log.info("installed %s (%s bytes)", target, f"{files[rel].bytes:,}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = Manifest(source or str(archive), reader.count, reader.digest.hexdigest(),
                        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), __version__,
                        files, skipped)
    manifest.write(root)
    return manifest


def _extract(archive: Path, staging: Path, progress: Progress | None
             ) -> tuple[dict[str, FileRecord], int, _HashingReader]:
    """Read every member of ``archive`` (refusing unsafe ones), write the installed ones under ``staging``."""
    files: dict[str, FileRecord] = {}
    skipped = 0
    with open(archive, "rb") as raw:
        reader = _HashingReader(raw, archive.stat().st_size, progress)
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            stream = gzip.GzipFile(fileobj=reader, mode="rb") if gzipped else reader
            with tarfile.open(fileobj=stream, mode="r|" if gzipped else "r|*", bufsize=CHUNK) as tar:
                for member in tar:
                    problem = member_problem(member)
                    if problem:
                        raise UnsafeArchiveError(f"{archive}: member {member.name!r} refused, {problem}; nothing "
                                                 "was installed")
                    rel = _installed_name(member.name)
                    if rel is None:
                        skipped += member.isfile()
                    elif member.isfile():
                        _check_space(staging, member.size, f"unpack {member.name}")
                        files[rel] = _copy_member(tar, member, staging / rel)
            if gzipped:
                while stream.read(CHUNK):  # to the end: the gzip CRC and length are checked there
                    pass
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BadArchiveError(f"{archive} is corrupt or truncated ({exc}); nothing was installed") from None
    return files, skipped, reader


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> FileRecord:
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    digest = hashlib.sha256()
    size = 0
    with source, open(target, "wb") as f:
        while chunk := source.read(CHUNK):
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    if size != member.size:
        raise EOFError(f"{member.name}: {size} of {member.size} bytes")
    return FileRecord(size, digest.hexdigest())


def to_safetensors(root: Path, half: bool = False) -> Manifest:
    """Replace the installed ``hamer.ckpt`` with ``hamer.safetensors`` (as ``hamer convert``); updates the manifest."""
    from .checkpoint import build_model, save_safetensors

    paths = configs.data_paths(root)
    model, cfg = build_model(paths)
    target = root / configs.SAFETENSORS_FILE
    with atomic_path(target) as tmp:
        save_safetensors(model, cfg, tmp, half=half)
        del model
    manifest = Manifest.read(root)
    if manifest is None:
        raise DownloadError(f"{root / MANIFEST_FILE} is missing")
    manifest.files.pop(configs.CHECKPOINT_FILE, None)
    manifest.files[configs.SAFETENSORS_FILE] = FileRecord(target.stat().st_size, sha256_file(target))
    manifest.write(root)
    (root / configs.CHECKPOINT_FILE).unlink(missing_ok=True)
    return manifest


# ------------------------------------------------------------------------------------------------- files

def _check_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(f"not enough free disk space in {folder} to {what}: {needed / 1e9:.1f} GB needed, "
                            f"{free / 1e9:.1f} GB free")


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
