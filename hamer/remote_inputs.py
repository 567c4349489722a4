"""The units of an input URL (:func:`classify_url`), as :func:`hamer.corpus.classify` finds those of a path, without
reading the objects: a video's frame rate and frame count are read when it is fetched to run
(:func:`hamer.frames.read_frames`)."""

from __future__ import annotations

from pathlib import PurePosixPath

from .images import IMAGE_SUFFIXES
from .run_types import InputError
from .storage import filesystem, redact
from .units import VIDEO_SUFFIXES, Unit


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
