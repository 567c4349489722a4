"""Installing an archive into a data folder: staged, loaded as HaMeR, then renamed into place; the manifest.

The archive's files are unpacked into ``DATA/.download/staging-PID-*``; its ``model_config.yaml`` is checked
(:func:`hamer.configs.load_config`: bounded YAML, the config checks) and HaMeR is built from the staged files (with
the data folder's own files where the archive has none, as ``hamer check`` would after the install), through
:mod:`hamer.checkpoint`'s safe loader. Only then are the files renamed into the data folder: an archive that fails
leaves the working install as it was. :data:`MANIFEST_FILE` records each installed file's size and sha256.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import configs
from ..files import atomic_path
from ..version import __version__
from .archive import ARCHIVE_ROOT, extract
from .common import WORK_DIR, BadArchiveError, DownloadError, Progress, sha256_file
from .lock import staging_prefix

log = logging.getLogger(__name__)

MANIFEST_FILE = "hamer_manifest.json"


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """What was installed, as written to :data:`MANIFEST_FILE`."""

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


def install_archive(archive: Path, root: Path, *, progress: Progress | None = None, source: str | None = None,
                    ) -> Manifest:
    """Verify the whole of ``archive``, check that it loads as HaMeR, install its files into ``root`` and write the
    manifest. The caller holds :func:`hamer.download.lock.hold` for ``root``.

    BadArchiveError if it is corrupt, truncated, unsafe, not HaMeR's demo data or does not load: the data folder is
    then left as it was, and the message says so.
    """
    work = root / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=work))
    try:
        found, skipped, reader = extract(archive, staging, progress)
        if configs.CHECKPOINT_FILE not in found:
            raise BadArchiveError(f"{archive} holds no {ARCHIVE_ROOT}/{configs.CHECKPOINT_FILE}: not HaMeR's demo "
                                  "data; nothing was installed")
        _check_loads(archive, staging, root, set(found))
        for rel in found:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            log.info("installed %s (%s bytes)", target, f"{found[rel][0]:,}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = {rel: FileRecord(*record) for rel, record in found.items()}
    manifest = Manifest(source or str(archive), reader.count, reader.digest.hexdigest(),
                        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), __version__,
                        files, skipped)
    manifest.write(root)
    return manifest


def _check_loads(archive: Path, staging: Path, root: Path, staged: set[str]) -> None:
    """BadArchiveError unless the staged files (the data folder's where none is staged) build HaMeR; this reads
    the staged ``model_config.yaml`` (:func:`hamer.configs.load_config`; a refused one fails before torch is
    imported) and checkpoint (the safe loader)."""
    from ..checkpoint_config import config_without_torch

    def path(rel: str) -> Path:
        return (staging if rel in staged else root) / rel

    paths = configs.DataPaths(staging, staging / configs.CHECKPOINT_FILE, path(configs.CONFIG_FILE),
                              path(configs.MANO_FILE), path(configs.MEAN_PARAMS_FILE))
    kept = (f"the working install in {root} was left as it was" if configs.data_paths(root).checkpoint.is_file()
            else "nothing was installed")
    try:
        config_without_torch(paths)
        from ..checkpoint import build_model

        model, _ = build_model(paths)
        del model
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise BadArchiveError(f"{archive} does not load as HaMeR: {exc}; {kept}") from None


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


def to_safetensors(root: Path, half: bool = False) -> Manifest:
    """Replace the installed ``hamer.ckpt`` with ``hamer.safetensors`` (as ``hamer convert``); updates the manifest."""
    from ..checkpoint import build_model, save_safetensors

    paths = configs.data_paths(root)
    model, cfg = build_model(paths)
    target = root / configs.SAFETENSORS_FILE
    save_safetensors(model, cfg, target, half=half)
    del model
    manifest = Manifest.read(root)
    if manifest is None:
        raise DownloadError(f"{root / MANIFEST_FILE} is missing")
    manifest.files.pop(configs.CHECKPOINT_FILE, None)
    manifest.files[configs.SAFETENSORS_FILE] = FileRecord(target.stat().st_size, sha256_file(target))
    manifest.write(root)
    (root / configs.CHECKPOINT_FILE).unlink(missing_ok=True)
    return manifest
