"""Installing HaMeR's weights: download the demo data, verify it, extract what inference needs.

:func:`download` fetches ``hamer_demo_data.tar.gz`` (:mod:`.transfer`: HTTPS, resumed with an HTTP Range request
after an interruption, retried, capped in size, with deadlines, bound to its URL), or takes a tarball already on
disk, and installs into the data folder only what inference reads (:data:`INSTALLED`; the ViTPose checkpoints are
left out). Safety and integrity:

- one download per data folder (:mod:`.lock`: a lock naming its pid and host); what a killed download left
  (staging folders) is removed by the next one, a killed download's ``.part`` is resumed by it;
- a member with an absolute path, ``..``, a link, a device or FIFO refuses the whole archive, and the whole archive
  is read and its gzip CRC checked before anything is installed (:mod:`.archive`);
- the files are staged, the config checked and HaMeR built from them before they replace the data folder's
  (:mod:`.install`): a bad archive leaves a working install in place; nothing downloaded is unpickled but by
  :mod:`hamer.checkpoint`'s safe loader;
- :data:`MANIFEST_FILE` in the data folder records each installed file's size and sha256 (:func:`verify_installed`).

HaMeR's checkpoint carries MANO's arrays: :data:`MANO_LICENSE_NOTICE` says what that means for its users.
Progress goes to an optional ``progress(phase, done_bytes, total_bytes)`` callback; this package only logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import configs
from .archive import ARCHIVE_ROOT, INSTALLED, member_problem
from .common import WORK_DIR, BadArchiveError, DownloadError, Progress, UnsafeArchiveError, check_space
from .install import MANIFEST_FILE, FileRecord, Manifest, install_archive, to_safetensors, verify_installed
from .lock import LOCK_FILE, hold, remove_leftovers
from .transfer import DEFAULT_LIMITS, INSTALL_BYTES_ESTIMATE, Limits, NoDowngrade, check_url, discard, fetch, public_url

__all__ = [
    "ARCHIVE_NAME", "ARCHIVE_ROOT", "DEFAULT_URL", "INSTALLED", "LOCK_FILE", "MANIFEST_FILE", "MANO_LICENSE_NOTICE",
    "MANO_LICENSE_URL", "WORK_DIR", "BadArchiveError", "DownloadError", "FileRecord", "Limits", "Manifest",
    "NoDowngrade", "UnsafeArchiveError", "check_url", "download", "ensure_downloaded", "install_archive",
    "member_problem", "remove_leftovers", "to_safetensors", "verify_installed",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "https://www.cs.utexas.edu/~pavlakos/hamer/data/hamer_demo_data.tar.gz"  # fetch_demo_data.sh's
ARCHIVE_NAME = "hamer_demo_data.tar.gz"
MANO_LICENSE_URL = "https://mano.is.tue.mpg.de/license.html"
MANO_LICENSE_NOTICE = (
    "HaMeR's checkpoint carries the arrays of the MANO hand model, so MANO's licence applies to it and to what you "
    "make with it: non-commercial scientific research only (commercial use needs a licence from the Max Planck "
    f"Society). Read it and register at https://mano.is.tue.mpg.de first: {MANO_LICENSE_URL}"
)


def download(data: configs.PathLike | None = None, url: str | None = None, archive: configs.PathLike | None = None,
             *, progress: Progress | None = None, retries: int = 3, backoff_s: float = 2.0,
             limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Download (``url``, default :data:`DEFAULT_URL`) or take (``archive``) HaMeR's demo data and install it.

    Args:
        data: the data folder (default :func:`hamer.configs.data_dir`), created if needed.
        url: an ``https://`` URL (``http://`` only when given so); an interrupted download of the same URL resumes
            on the next call (one of another URL, or of a file changed on the server, is discarded).
        archive: a ``.tar.gz`` on disk instead (as on machines without internet); it is left in place.
        progress: called as ``progress(phase, done, total)``, phase "download" or "extract", bytes.
        retries: automatic retries of a dropped or stalled connection per call, ``backoff_s`` doubling between them.
        limits: the transfer's size cap, timeout and stall deadline (:class:`~hamer.download.transfer.Limits`).
    Returns:
        the :class:`Manifest` written to the data folder.
    Raises:
        DownloadError (BadArchiveError, UnsafeArchiveError): the data folder is then as it was; the message says so.
    """
    if url is not None and archive is not None:
        raise ValueError("pass url or archive, not both")
    root = configs.data_dir(data)
    with hold(root):
        manifest = _download(root, url, archive, progress, retries, backoff_s, limits)
    try:
        (root / WORK_DIR).rmdir()
    except OSError:
        pass  # not empty: a partial download kept for the next call
    return manifest


def _download(root: Path, url: str | None, archive: configs.PathLike | None, progress: Progress | None,
              retries: int, backoff_s: float, limits: Limits) -> Manifest:
    if archive is not None:
        source = Path(archive).expanduser().resolve()
        if not source.is_file():
            raise DownloadError(f"{source}: no such file")
        check_space(root, min(source.stat().st_size, INSTALL_BYTES_ESTIMATE), "install the weights")
        return install_archive(source, root, progress=progress, source=str(source))
    url = url or DEFAULT_URL
    path = fetch(url, root / WORK_DIR / ARCHIVE_NAME, progress=progress, retries=retries, backoff_s=backoff_s,
                 limits=limits)
    try:
        manifest = install_archive(path, root, progress=progress, source=public_url(url))
    except BadArchiveError as exc:
        discard(path)  # a complete but bad download: the next call starts afresh
        raise type(exc)(f"{exc} (the downloaded archive was deleted)") from None
    discard(path)
    return manifest


def ensure_downloaded(data: configs.PathLike | None = None) -> Path:
    """The data folder, after :func:`download` into it if it holds no checkpoint (no network access otherwise)."""
    root = configs.data_dir(data)
    if not configs.data_paths(root).checkpoint.is_file():
        log.warning("no HaMeR checkpoint in %s: downloading %s (about 5.6 GB). %s", root, DEFAULT_URL,
                    MANO_LICENSE_NOTICE)
        download(root, progress=LogProgress())
    return root


class LogProgress:
    """A progress callback that logs each phase at every tenth of the way (INFO)."""

    def __init__(self) -> None:
        self.logged: dict[str, int] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        tenth = done * 10 // total if total else 0
        if self.logged.get(phase, -1) < tenth:
            self.logged[phase] = tenth
            log.info("%s: %s of %s bytes", phase, f"{done:,}", f"{total:,}" if total else "?")
