"""The units of an input URL (:func:`classify_url`), as :func:`hamer.corpus.classify` finds those of a path, without
reading the objects: a video's frame rate and frame count are read when it is fetched to run
(:func:`hamer.frames.read_frames`), or earlier, from its container's header only, where a run splits long videos into
segments (:func:`probe_frames`)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import av

from .images import IMAGE_SUFFIXES
from .run_types import InputError
from .storage import filesystem, redact
from .units import VIDEO_SUFFIXES, Unit

log = logging.getLogger(__name__)

PROBE_THREADS = 16  # videos probed at once (each a few small ranged reads: the latency of the store, not bandwidth)


def classify_url(url: str) -> list[Unit]:
    """The units of an input URL: an object (an image by its suffix, else a video) or a prefix (a "folder": its
    images as one unit, then each of its videos; not its sub-prefixes); InputError."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        if fs.isdir(path):
            base = url.split("?", 1)[0].rstrip("/")
            names = sorted(PurePosixPath(p).name for p in fs.ls(path, detail=False) if fs.isfile(p))
            images = [f"{base}/{n}" for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES]
            units = [Unit(url, "folder", images=images, frames=len(images))] if images else []
            units += [Unit(f"{base}/{n}", "video") for n in names if PurePosixPath(n).suffix.lower() in VIDEO_SUFFIXES]
            if not units:
                raise InputError("the prefix holds no image or video objects")
            return units
        if not fs.isfile(path):
            raise InputError("no such object or prefix")
    except OSError as exc:  # no access, no such bucket...
        raise InputError(f"cannot be read ({redact(str(exc))})") from None
    if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES:
        return [Unit(url, "image", images=[url], frames=1)]
    return [Unit(url, "video")]


def probe_frames(units: list[Unit]) -> None:
    """Set the announced frame count and frame rate of video units at URLs (``frames`` 0) from their containers'
    headers (PyAV on the object, which reads the header and index, not the frames), :data:`PROBE_THREADS` at once;
    a video whose count cannot be read keeps 0 (logged: it is not split into segments)."""
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        for unit, (frames, fps) in zip(units, pool.map(_probe, units), strict=True):
            if frames > 0:
                unit.frames, unit.fps = frames, fps
            else:
                log.info("%s: its frame count is not in its header; it is run whole (not split into segments)",
                         unit.shown)


def _probe(unit: Unit) -> tuple[int, float]:
    """(frames, fps) a video object's container announces; (0, its fps) when it cannot be read."""
    try:
        fs, path = filesystem(unit.path)
        with fs.open(path, "rb") as f, av.open(f) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate
            return max(int(stream.frames), 0), float(rate) if rate else unit.fps
    except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
        log.debug("%s: cannot read its header (%s)", unit.shown, redact(str(exc)))
        return 0, unit.fps
