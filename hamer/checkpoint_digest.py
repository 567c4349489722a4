"""Checkpoints by content: the sha256 of a file, hashed once and remembered in a small JSON index by the file's
identity (device, inode, size, mtime, ctime), so that a 2.7 GB checkpoint is read whole only when it changes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

INDEX_FILE = "checkpoints.json"  # the index's usual name, in the folder of what the digests serve
_INDEX_MAX_BYTES = 2**20  # a larger index is ignored (and rewritten)
_INDEX_MAX_ENTRIES = 1000
_HASH_CHUNK = 16 * 2**20


def checkpoint_digest(checkpoint: Path, index_path: Path) -> str:
    """sha256 of the checkpoint file's content, remembered in the index ``index_path`` by (device, inode, size,
    mtime_ns, ctime_ns): a file rewritten in place changes its ctime, so it is hashed again."""
    stat = checkpoint.stat()
    identity = ":".join(map(str, (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)))
    index = _read_index(index_path)
    digest = index.get(identity)
    if digest is not None:
        return digest
    start = time.perf_counter()
    sha = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    log.info("hashed checkpoint %s in %.1f s (once per file)", checkpoint, time.perf_counter() - start)
    index = {k: v for k, v in _read_index(index_path).items() if k != identity}  # others' entries since
    index[identity] = digest
    _write_index(index_path, dict(list(index.items())[-_INDEX_MAX_ENTRIES:]))
    return digest


def _read_index(path: Path) -> dict[str, str]:
    """The index's {identity: sha256}; empty when missing, too large or malformed (entries then hashed again)."""
    try:
        if path.stat().st_size > _INDEX_MAX_BYTES:
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and len(v) == 64
            and all(c in "0123456789abcdef" for c in v)}


def _write_index(path: Path, index: dict[str, str]) -> None:
    """Replace the index in one rename (a concurrent writer's entries may be lost: they are hashed again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        with os.fdopen(fd, "w") as f:
            json.dump(index, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the checkpoint index %s (%s): the checkpoint is hashed again next time", path, exc)
