"""What every part of the downloader shares: its errors, the progress callback's type, disk-space and hash helpers."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 20
WORK_DIR = ".download"  # inside the data folder: the lock, the (partial) download and the staging folders

Progress = Callable[[str, int, "int | None"], None]
"""``progress(phase, done_bytes, total_bytes or None)``, phase "download" or "extract"."""


class DownloadError(Exception):
    """The data could not be downloaded or installed (the message says why and what to do)."""


class BadArchiveError(DownloadError):
    """The archive is corrupt, truncated or not HaMeR's demo data (or does not load as HaMeR)."""


class UnsafeArchiveError(BadArchiveError):
    """An archive member would write outside the data folder or is not a plain file or folder."""


def check_space(folder: Path, needed: int, what: str) -> None:
    """DownloadError unless ``folder``'s file system has ``needed`` bytes free (sizes told in GB = 1e9 bytes)."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(f"not enough free disk space in {folder} to {what}: {needed / 1e9:.1f} GB needed, "
                            f"{free / 1e9:.1f} GB free")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
