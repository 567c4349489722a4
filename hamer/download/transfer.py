"""One archive over HTTP(S): resumed after an interruption, capped in size, with deadlines, bound to its source.

- The body is capped at the size the server announces (``Content-Length``, or a ``Content-Range`` total), else at
  :attr:`Limits.max_bytes`; a larger announced size, or more bytes than allowed, is an error that removes the
  partial file.
- Each socket operation times out after :attr:`Limits.read_timeout_s`, and a transfer slower than
  :attr:`Limits.stall_bytes` per :attr:`Limits.stall_s` is stalled: both are retried (resuming), then given up.
- ``NAME.source.json`` beside the partial (``NAME.part``) or complete download records its URL (as a sha256, the
  URL may hold credentials), the server's ETag / Last-Modified and size. A partial or complete download of another
  URL, or of a file the server has changed since (other ETag, Last-Modified or size), is discarded, never resumed
  or installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from ..files import atomic_path
from ..version import __version__
from .common import CHUNK, DownloadError, Progress, check_space

log = logging.getLogger(__name__)

INSTALL_BYTES_ESTIMATE = 2_900_000_000  # the installed files of the official archive (hamer.ckpt: 2.7 GB)


@dataclass(frozen=True)
class Limits:
    """Bounds of one transfer (the defaults fit the official archive, about 5.6 GB)."""

    max_bytes: int = 8_000_000_000  # the largest archive accepted, and the cap when no size is announced
    read_timeout_s: float = 60.0  # connecting, and each read of the socket
    stall_s: float = 60.0  # at least stall_bytes must arrive in every stall_s seconds ...
    stall_bytes: int = 64_000  # ... (about 1 kB/s by default), else the transfer has stalled


DEFAULT_LIMITS = Limits()


class Transient(Exception):
    """A failure worth retrying (dropped connection, server error, stalled transfer)."""


@dataclass(frozen=True)
class SourceRecord:
    """Where a (partial) download came from: ``NAME.source.json``."""

    url_sha256: str
    url: str  # without credentials (:func:`public_url`), for people reading the file
    etag: str | None
    last_modified: str | None
    total: int | None
    complete: bool = False

    @classmethod
    def read(cls, path: Path) -> SourceRecord | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment (which may hold credentials), as records keep it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host, query="", fragment="").geturl()


def check_url(url: str) -> None:
    """ValueError unless ``url`` is https:// or (given explicitly, with a warning) http://."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{url!r} is not an https:// URL")
    if parts.scheme == "http":
        log.warning("%s is plain HTTP: not encrypted; only the archive's own checksums protect it", url)


class NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from HTTPS to anything else."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        scheme = urlsplit(newurl).scheme
        if scheme not in ("https", "http") or (urlsplit(req.full_url).scheme == "https" and scheme != "https"):
            raise DownloadError(f"{req.full_url} redirects to {newurl}: refused (not HTTPS)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HeaderDeadline:
    """Shuts a connection down when its response headers have not all come within ``seconds`` (a server that
    trickles them would otherwise hold the request forever: each byte resets the socket timeout)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sock: socket.socket | None = None
        self.expired = False
        self.timer: threading.Timer | None = None

    def __enter__(self) -> HeaderDeadline:
        self.timer = threading.Timer(self.seconds, self.expire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()

    def expire(self) -> None:
        self.expired = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose connections hand their socket to this deadline."""
        deadline = self

        class HTTPConnection(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                deadline.sock = self.sock

        class HTTPSConnection(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                deadline.sock = self.sock

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(HTTPConnection, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(HTTPSConnection, req, context=self._context)

        return urllib.request.build_opener(NoDowngrade, HTTPHandler, HTTPSHandler)


def fetch(url: str, dest: Path, *, progress: Progress | None = None, retries: int = 3, backoff_s: float = 2.0,
          limits: Limits = DEFAULT_LIMITS) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` an earlier call left for this URL.

    A dropped connection or a stalled transfer is retried ``retries`` times (Range from where it stopped,
    ``backoff_s`` doubling between tries); the file is renamed to ``dest`` when complete. A ``dest`` already there
    is used only if it is a complete download of ``url``. DownloadError when it cannot finish (the ``.part`` stays
    for the next call, except when the server sent more than allowed).
    """
    check_url(url)
    part = dest.with_name(dest.name + ".part")
    sidecar = dest.with_name(dest.name + ".source.json")
    record = SourceRecord.read(sidecar)
    mine = record is not None and record.url_sha256 == url_key(url)
    if dest.exists():
        if mine and record.complete and (record.total is None or dest.stat().st_size == record.total):
            log.info("using %s, downloaded earlier from %s", dest, record.url)
            return dest
        log.warning("discarding %s: not a complete download of %s", dest, public_url(url))
        dest.unlink()
    if part.exists() and not (mine and not record.complete):
        log.warning("discarding the partial download %s: it came from %s, not %s", part,
                    record.url if record else "an unrecorded source", public_url(url))
        part.unlink()
    if not part.exists():
        sidecar.unlink(missing_ok=True)
    failures = 0
    while True:
        try:
            _fetch_once(url, part, sidecar, progress, limits)
            break
        except Transient as exc:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                again = "resume" if have else "try again"
                raise DownloadError(f"download of {public_url(url)} failed at {have:,} bytes after {failures} "
                                    f"tries: {exc}; run `hamer download` again to {again}") from None
            delay = backoff_s * 2 ** (failures - 1)
            log.warning("download failed at %s bytes (%s); retry %d of %d in %.0f s", f"{have:,}", exc,
                        failures, retries, delay)
            time.sleep(delay)
    os.replace(part, dest)
    record = SourceRecord.read(sidecar)
    if record is not None:
        replace(record, complete=True, total=dest.stat().st_size).write(sidecar)
    return dest


def discard(dest: Path) -> None:
    """Remove a download ``dest``, its partial file and its source record."""
    for path in (dest, dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".source.json")):
        path.unlink(missing_ok=True)


def _fetch_once(url: str, part: Path, sidecar: Path, progress: Progress | None, limits: Limits) -> None:
    have = part.stat().st_size if part.exists() else 0
    record = SourceRecord.read(sidecar) if have else None
    headers = {"User-Agent": f"hamer/{__version__}", "Accept-Encoding": "identity"}
    if have and record is not None:
        headers["Range"] = f"bytes={have}-"
        if record.etag or record.last_modified:
            headers["If-Range"] = record.etag or record.last_modified  # the whole file comes if it changed
    deadline = HeaderDeadline(limits.stall_s)
    try:
        with deadline:
            response = deadline.opener().open(urllib.request.Request(url, headers=headers),
                                              timeout=limits.read_timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            total = content_range(exc.headers.get("Content-Range", ""))[1]
            if total == have and record is not None and record.total == have:
                return  # the previous call had it all
            part.unlink()
            raise Transient("the server refused to resume; starting again") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{public_url(url)}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        if deadline.expired:
            raise Transient(f"no complete response headers within {limits.stall_s:g} s") from None
        if not isinstance(exc, urllib.error.URLError):
            raise Transient(str(exc) or type(exc).__name__) from None
        raise Transient(f"cannot reach {urlsplit(url).hostname}: {exc.reason}") from None
    if deadline.expired:  # cut while the headers came: what http.client made of the rest is not a response
        response.close()
        raise Transient(f"no complete response headers within {limits.stall_s:g} s")
    with response:
        etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if response.status == 206 and record is not None:
            start, total = content_range(response.headers.get("Content-Range", ""))
            changed = (record.total is not None and total != record.total) or (
                (etag or record.etag) and etag != record.etag) or (
                (modified or record.last_modified) and modified != record.last_modified)
            if start != have or changed:
                part.unlink()
                why = "the file on the server changed since" if changed else f"the server resumed at byte {start}"
                raise Transient(f"{why}, not at {have:,}: starting again")
        else:
            if have:
                log.info("the server does not resume this download: starting from the beginning")
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            SourceRecord(url_key(url), public_url(url), etag, modified, total).write(sidecar)
        if total is not None and total > limits.max_bytes:
            part.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise DownloadError(f"{public_url(url)} announces {total:,} bytes ({total / 1e9:.1f} GB), more than the "
                                f"{limits.max_bytes:,} HaMeR's demo data may be: refused")
        if total is not None:
            check_space(part.parent, total - have + min(total, INSTALL_BYTES_ESTIMATE), f"download {url}")
        try:
            have = _receive(response, part, have, total, progress, limits)
        except DownloadError:  # more than allowed: nothing of it is kept
            part.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            raise
    if total is not None and have != total:
        raise Transient(f"the connection closed at {have:,} of {total:,} bytes")


def _receive(response: http.client.HTTPResponse, part: Path, have: int, total: int | None,
             progress: Progress | None, limits: Limits) -> int:
    """Append the body to ``part`` within ``limits``; returns the bytes ``part`` then holds. DownloadError when the
    server sends more than allowed, Transient when it stops or stalls."""
    cap = total if total is not None else limits.max_bytes
    if progress:
        progress("download", have, total)
    window_start, window_have = time.monotonic(), have
    try:
        with open(part, "ab" if have else "wb") as f:
            while chunk := response.read1(CHUNK):  # one socket read at most: each is bounded by the timeout
                if have + len(chunk) > cap:
                    break
                f.write(chunk)
                have += len(chunk)
                if progress:
                    progress("download", have, total)
                now = time.monotonic()
                if now - window_start >= limits.stall_s:
                    if have - window_have < limits.stall_bytes:
                        raise Transient(f"stalled: {have - window_have:,} bytes in the last {now - window_start:.1f}"
                                        f" s (at least {limits.stall_bytes:,} expected)")
                    window_start, window_have = now, have
            else:
                return have
    except TimeoutError:
        raise Transient(f"no data for {limits.read_timeout_s:g} s") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise Transient(str(exc) or type(exc).__name__) from None
    bound = "its announced size" if total is not None else "the most HaMeR's demo data may be"
    raise DownloadError(f"the server sent more than {cap:,} bytes ({bound}): refused, the partial download deleted")


def content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` or ``bytes */TOTAL`` -> (START, TOTAL); None where absent."""
    try:
        unit, _, spec = value.strip().partition(" ")
        span, _, total = spec.partition("/")
        start = None if span == "*" else int(span.split("-")[0])
        return start, (None if total in ("", "*") else int(total))
    except ValueError:
        return None, None
