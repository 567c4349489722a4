"""Object storage by URL: inputs, ``--list`` files and ``--out`` of any fsspec file system (``s3://``, ``gs://``,
``az://``...), one way for all, as fsspec's own ``url_to_fs`` (``pip install "hamer[cloud]"``).

A *URL* here is ``PROTOCOL://...`` with a protocol other than ``file``; a ``file://`` URL is taken as the local
path it names (:func:`local_path`), so that it runs exactly as that path does. Credentials come the standard way
of each file system (for S3 the ``AWS_*`` variables and ``~/.aws`` files, for GCS Google's application default
credentials); none is logged or written: a URL that carries some (``s3://KEY:SECRET@bucket``, a signed query)
is written and logged as :func:`redact` makes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

CLOUD_EXTRA = 'pip install "hamer[cloud]"'
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]*@")


class StorageError(OSError):
    """A URL that cannot be used: fsspec or the file system's package is missing (naming the extra), or an
    unknown protocol."""


def is_url(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a URL of object storage (``PROTOCOL://``, not ``file://``)."""
    match = _URL.match(os.fspath(text)) if isinstance(text, str) else None
    return match is not None and match.group(1).lower() != "file"


def local_path(text: str) -> str:
    """``text`` with a ``file://`` URL turned into the local path it names; anything else as it is."""
    if text.lower().startswith("file://"):
        parts = urlsplit(text)
        return unquote(parts.path) if parts.netloc in ("", "localhost") else unquote(f"//{parts.netloc}{parts.path}")
    return text


def redact(text: str) -> str:
    """``text`` (a URL or a path) as messages and the manifest show it: a URL's user and password and its query
    (signed URLs carry their signature there) replaced by ``***``."""
    if not is_url(text):
        return text
    text = _USERINFO.sub(r"\1***@", text)
    return text.split("?", 1)[0] + "?***" if "?" in text else text


def key(text: str) -> str:
    """How an input is named in the manifest: a URL redacted, a path made absolute."""
    return redact(text) if is_url(text) else os.path.abspath(text)


def join(base: str | os.PathLike, name: str) -> str:
    """``name`` inside the folder or prefix ``base``."""
    if is_url(base):
        return f"{os.fspath(base).rstrip('/')}/{name}"
    return str(Path(base) / name)


def url_name(url: str) -> str:
    """The last part of a URL's path (its file or folder name; a bucket's own URL: the bucket's name)."""
    parts = urlsplit(url)
    return parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc.rsplit("@", 1)[-1]


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path in it) of ``url``; StorageError, naming the extra, when it cannot be opened.
    Credentials in an ``s3://KEY:SECRET@bucket/...`` URL are the file system's key and secret (other protocols
    take theirs the standard ways only)."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"{redact(url)}: URLs need fsspec: {CLOUD_EXTRA}") from None
    options: dict[str, str] = {}
    userinfo = _USERINFO.match(url)
    if userinfo is not None:
        if userinfo.group(1).lower() not in ("s3://", "s3a://"):
            raise StorageError(f"{redact(url)}: credentials in the URL are taken for s3:// only; give them the "
                               "standard way (environment variables, configuration files)")
        user, _, password = url[len(userinfo.group(1)):userinfo.end() - 1].partition(":")
        options = {"key": unquote(user), "secret": unquote(password)}
        url = userinfo.group(1) + url[userinfo.end():]
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:  # fsspec's message names the package ("Install s3fs to access S3")
        raise StorageError(f"{redact(url)}: {exc} ({CLOUD_EXTRA} installs fsspec, s3fs and gcsfs)") from None
    except ValueError as exc:  # an unknown protocol
        raise StorageError(f"{redact(url)}: {exc}") from None


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be used (fsspec or its file system missing, an unknown protocol); None when it can."""
    try:
        filesystem(url)
    except StorageError as exc:
        return str(exc)
    return None


def stat(url: str) -> list[int] | None:
    """``[size, mtime_ns]`` of the object ``url`` (as :func:`hamer.units.input_stat`: whether it changed since);
    None when it cannot be read. The mtime is the store's last-modified time (or 0 when it gives none)."""
    try:
        fs, path = filesystem(url)
        info = fs.info(path)
    except (OSError, ValueError):
        return None
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
    if hasattr(modified, "timestamp"):
        modified = modified.timestamp()
    elif isinstance(modified, str):
        try:
            modified = datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
        except ValueError:
            modified = 0
    return [int(info.get("size") or 0), int(float(modified or 0) * 1e9)]


@contextmanager
def open_input(path: str | os.PathLike) -> Iterator[tuple[IO[bytes], int]]:
    """(binary file, its size in bytes) of a local path or a URL, read as a stream."""
    if not is_url(path):
        with open(path, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    fs, where = filesystem(os.fspath(path))
    size = fs.size(where)
    with fs.open(where, "rb") as f:
        yield f, int(size or 0)


def read_text(path: str) -> str:
    """The text (UTF-8) of a local file or a URL."""
    if not is_url(path):
        return Path(path).read_text(encoding="utf-8")
    fs, where = filesystem(path)
    return fs.cat_file(where).decode("utf-8")
