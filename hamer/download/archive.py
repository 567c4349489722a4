"""Reading HaMeR's demo-data archive safely: every member checked, only the files inference needs written.

- a member with an absolute path (POSIX or Windows: ``/x``, ``C:\\x``, ``\\\\server\\share``), ``..`` (with either
  slash), a link, a device or FIFO refuses the whole archive; files are written by this code, never by
  ``tarfile.extract``;
- the whole archive is read and its gzip CRC checked before the caller installs anything.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from .. import configs
from .common import CHUNK, BadArchiveError, Progress, UnsafeArchiveError, check_space

ARCHIVE_ROOT = "_DATA"  # the archive's top folder; its content goes into the data folder
INSTALLED = (configs.CHECKPOINT_FILE, configs.CONFIG_FILE, configs.MEAN_PARAMS_FILE, configs.MANO_FILE)


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


def installed_name(name: str) -> str | None:
    """The data-folder path of archive member ``name`` if it is installed (one of :data:`INSTALLED`), else None."""
    parts = PurePosixPath(name).parts  # "./_DATA/x" -> ("_DATA", "x")
    if len(parts) < 2 or parts[0] != ARCHIVE_ROOT or any(p.startswith(".") for p in parts):
        return None  # outside _DATA, or macOS metadata (fetch_demo_data.sh excludes ".*" too)
    rel = "/".join(parts[1:])
    return rel if rel in INSTALLED else None


class HashingReader:
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


def extract(archive: Path, staging: Path, progress: Progress | None
            ) -> tuple[dict[str, tuple[int, str]], int, HashingReader]:
    """Read every member of ``archive`` (refusing unsafe ones), write the installed ones under ``staging``.

    Returns {data-folder path: (bytes, sha256)} of the files written, the count of members left out, and the reader
    (the archive's size and sha256). BadArchiveError (UnsafeArchiveError) when the archive is refused.
    """
    files: dict[str, tuple[int, str]] = {}
    skipped = 0
    with open(archive, "rb") as raw:
        reader = HashingReader(raw, archive.stat().st_size, progress)
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
                    rel = installed_name(member.name)
                    if rel is None:
                        skipped += member.isfile()
                    elif member.isfile():
                        check_space(staging, member.size, f"unpack {member.name}")
                        files[rel] = _copy_member(tar, member, staging / rel)
            if gzipped:
                while stream.read(CHUNK):  # to the end: the gzip CRC and length are checked there
                    pass
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BadArchiveError(f"{archive} is corrupt or truncated ({exc}); nothing was installed") from None
    return files, skipped, reader


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> tuple[int, str]:
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
    return size, digest.hexdigest()
